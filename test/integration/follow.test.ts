// Online migration (--follow, then pg-migrate cutover): a write load runs on every database the whole time — each
// transaction moves money, writes history, takes a standalone sequence's next value, updates a table without a
// primary key and inserts the next gapless id into a ledger — and after the cutover the target holds exactly what
// the source committed. Plus the preflight's refusals, abort, and a cutover that stopped half-way and was run again.
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import pg from "pg";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { cliEnv, databasesOf, query, runCli, sequencesOf, serverArgs, tableCounts } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";

const LOAD_SCHEMA = `
  CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
  INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 50) g;
  CREATE TABLE history (id bigserial PRIMARY KEY, account int NOT NULL, delta int NOT NULL, at timestamptz DEFAULT now());
  CREATE TABLE ledger (id bigint PRIMARY KEY);
  CREATE TABLE counter (n bigint NOT NULL);
  INSERT INTO counter VALUES (0);
  CREATE TABLE notes (k int, v text);
  INSERT INTO notes SELECT g, 'n' FROM generate_series(0, 9) g;
  CREATE SEQUENCE standalone;`;

/** One client per database committing pgbench-like transactions until the source stops taking them. */
class Load {
  readonly committed: number[] = [];
  private stopped = false;
  private readonly done: Promise<void>;
  error: string | undefined;

  constructor(c: LocalCluster, db: string) {
    this.done = this.run(c, db);
  }

  private async run(c: LocalCluster, db: string): Promise<void> {
    const client = new pg.Client({ host: c.host, port: c.port, user: c.user, password: c.password, database: db });
    client.on("error", () => undefined);
    await client.connect();
    try {
      while (!this.stopped) {
        await client.query("BEGIN");
        const n = Number((await client.query<{ n: string }>("UPDATE counter SET n = n + 1 RETURNING n")).rows[0]!.n);
        const account = 1 + (n % 50);
        const delta = (n % 13) - 6;
        await client.query("INSERT INTO ledger VALUES ($1)", [n]);
        await client.query("UPDATE accounts SET balance = balance + $2 WHERE id = $1", [account, delta]);
        await client.query("INSERT INTO history (account, delta) VALUES ($1, $2)", [account, delta]);
        await client.query("UPDATE notes SET v = $2 WHERE k = $1", [n % 10, `n${n}`]);
        if (n % 7 === 0) await client.query("DELETE FROM history WHERE id = (SELECT min(id) FROM history)");
        await client.query("SELECT nextval('standalone')");
        await client.query("COMMIT");
        this.committed.push(n);
        await new Promise((r) => setTimeout(r, 5));
      }
    } catch (err) {
      // The cutover made the database read-only and ended this session: the load is over.
      this.error = err instanceof Error ? err.message : String(err);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Nothing of the run left: no slot, publication, subscription or replication role on either server. */
async function assertNothingLeft(source: LocalCluster, target: LocalCluster, dbs: string[]): Promise<void> {
  assert.deepEqual(await query(source, "postgres", "SELECT slot_name FROM pg_replication_slots"), [], "slots left");
  for (const db of dbs) {
    assert.deepEqual(await query(source, db, "SELECT pubname FROM pg_publication"), [], `publication left in ${db}`);
  }
  assert.deepEqual(await query(target, "postgres", "SELECT subname FROM pg_subscription"), [], "subscriptions left");
  for (const c of [source, target])
    assert.deepEqual(
      await query(c, "postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgm\\_follow%'"),
      [],
      "replication role left",
    );
}

test(
  "--follow under a write load on 3 databases, the target restarted while following, then cutover: every committed ledger id, equal counts, sequences at or beyond, nothing left, writes blocked under 5 s",
  { timeout: 240_000 },
  async (t) => {
    await withTestEnv(
      async ({ source, target, home }) => {
        const dbs = ["shop", "bank", "games"];
        for (const db of dbs) {
          await psqlExec(source, "postgres", `CREATE DATABASE ${db}`);
          await psqlExec(source, db, LOAD_SCHEMA);
        }
        const loads = dbs.map((db) => new Load(source, db));
        try {
          await until("the load to commit", () => loads.every((l) => l.committed.length >= 20));
          const env = cliEnv(home, source, target);
          const run = await runCli([...serverArgs(source, target), "--follow", "--replica-identity-full"], env);
          assert.equal(run.exitCode, 0, run.stderr);
          assert.match(run.stderr, /following 3 databases/);
          assert.ok(
            loads.every((l) => !l.error),
            `the load failed during the copy: ${loads.map((l) => l.error).join("; ")}`,
          );

          // Following: the target's catalog holds only the run's own replication role's password, never ours.
          const subs = await query<{ conninfo: string }>(
            target,
            "postgres",
            "SELECT subconninfo AS conninfo FROM pg_subscription",
          );
          assert.equal(subs.length, 3);
          for (const s of subs) {
            assert.doesNotMatch(s.conninfo, new RegExp(source.password));
            assert.match(s.conninfo, /user='pgm_follow_/);
          }
          // The target restarts while following; its subscriptions pick up where they were.
          const before = loads.map((l) => l.committed.length);
          await target.outage(1000);
          await until("the load to commit while following", () =>
            loads.every((l, i) => l.committed.length >= before[i]! + 30),
          );
          const lag = await runCli(["cutover", "--lag", ...serverArgs(source, target)], env);
          assert.equal(lag.exitCode, 0, lag.stderr);
          assert.match(lag.stderr, /lag: "bank" [\d.]+ (B|KiB|MiB)/);
          const status = await runCli(["status"], env);
          assert.equal(status.exitCode, 0, status.stderr);
          assert.match(status.stdout, /: following,/);
          assert.match(status.stdout, /done, following \(lag [\d.]+ (B|KiB|MiB)/);

          const cut = await runCli(["cutover", ...serverArgs(source, target)], env);
          assert.equal(cut.exitCode, 0, cut.stderr);
          const window = /writes blocked for .* \((\d+) ms\)/.exec(cut.stderr);
          assert.ok(window, cut.stderr);
          assert.ok(Number(window[1]) < 5000, `writes were blocked for ${window[1]} ms`);
          t.diagnostic(`writes blocked for ${window[1]} ms`);
          await until("the load to stop on the read-only source", () => loads.every((l) => l.error !== undefined));
        } finally {
          await Promise.all(loads.map((l) => l.stop()));
        }
        for (const [i, db] of dbs.entries()) {
          const load = loads[i]!;
          assert.match(
            load.error ?? "",
            /read-only|terminat|connection error/,
            `the load on ${db} ended by: ${load.error}`,
          );
          const ids = async (c: LocalCluster) =>
            (await query<{ id: string }>(c, db, "SELECT id FROM ledger ORDER BY id")).map((r) => Number(r.id));
          const [onSource, onTarget] = [await ids(source), await ids(target)];
          assert.deepEqual(onTarget, onSource, `${db}: the ledgers differ`);
          // Gapless: 1..n, and every id the load saw committed is there.
          assert.deepEqual(
            onTarget,
            onTarget.map((_, j) => j + 1),
          );
          const have = new Set(onTarget);
          assert.deepEqual(
            load.committed.filter((n) => !have.has(n)),
            [],
          );
          assert.ok(load.committed.length >= 50);
          assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db));
          const sums = async (c: LocalCluster) =>
            query(
              c,
              db,
              "SELECT sum(balance)::text AS b, (SELECT string_agg(v, ',' ORDER BY k) FROM notes) AS n FROM accounts",
            );
          assert.deepEqual(await sums(target), await sums(source));
          const [ss, ts] = [await sequencesOf(source, db), await sequencesOf(target, db)];
          for (const [name, v] of Object.entries(ss))
            assert.ok(BigInt(ts[name] ?? -1) >= BigInt(v ?? 0), `${db} ${name}: target ${ts[name]}, source ${v}`);
        }
        await assertNothingLeft(source, target, dbs);
        // No password of ours in the logs of the run, nor in the target server's log.
        const logs = join(home, ".pg-migrate", "logs");
        for (const e of await readdir(logs, { recursive: true, withFileTypes: true })) {
          if (!e.isFile()) continue;
          const f = join(e.parentPath, e.name);
          const text = await readFile(f, "utf8");
          assert.ok(!text.includes(source.password) && !text.includes(target.password), `a password in ${f}`);
        }
        assert.ok(!(await readFile(target.logFile, "utf8")).includes(source.password));
      },
      { nats: false, sourceSettings: { wal_level: "logical" } },
    );
  },
);

test(
  "--follow is refused before anything changes: wal_level=replica with its fix, a table without a replica identity by name, a source the target cannot reach",
  { timeout: 120_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", "CREATE DATABASE app");
        await psqlExec(source, "app", "CREATE TABLE keyless (a int, b text); CREATE TABLE keyed (id int PRIMARY KEY)");
        // The target's way to the source is tested from the target: here an address where nothing listens.
        const r = await runCli(
          [...serverArgs(source, target), "--follow", "--follow-source", "127.0.0.1:1"],
          cliEnv(home, source, target),
        );
        assert.equal(r.exitCode, 3, r.stderr);
        assert.match(
          r.stderr,
          /wal_level=logical on the source, which has replica: run ALTER SYSTEM SET wal_level = logical there, then restart the source/,
        );
        assert.match(
          r.stderr,
          /"app" has 1 table with neither a primary key nor a replica identity[^;]*: public\.keyless;/,
        );
        assert.match(r.stderr, /--replica-identity-full/);
        assert.match(
          r.stderr,
          /the target server cannot reach the source at 127\.0\.0\.1:1, which its subscriptions must \([^)]*refused/,
        );
        assert.doesNotMatch(r.stderr, /keyed/);
        assert.match(r.stderr, /nothing was changed/);
        assert.deepEqual(await databasesOf(target), []);
        assert.deepEqual(await query(source, "app", "SELECT pubname FROM pg_publication"), []);
      },
      { nats: false },
    );
  },
);

test(
  "the coordinator SIGKILLed mid-copy of a --follow run: the same command replaces its slot and follows; abort drops what --follow made; a cutover that stopped half-way (a subscription that cannot catch up) leaves the writes blocked and, run again, finishes",
  { timeout: 240_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", "CREATE DATABASE app");
        await psqlExec(source, "app", LOAD_SCHEMA);
        const env = cliEnv(home, source, target);
        const args = [...serverArgs(source, target), "--include-db", "app", "--replica-identity-full"];
        // The coordinator SIGKILLed once the database's slot is made, before its subscription: the slot stays (nobody
        // could drop it), and the same command replaces it, copies again and follows.
        const killed = startCli([...args, "--follow"], env);
        await until("the run's slot on the source", async () => (await slotsOf(source)).length === 1, 60_000);
        killed.child.kill("SIGKILL");
        await killed.result;
        const leftSlot = await slotsOf(source);
        assert.equal(leftSlot.length, 1, killed.stderr());
        // Resumed without --follow, it would copy without following: refused, saying how.
        const plain = await runCli([...serverArgs(source, target), "--include-db", "app"], env);
        assert.equal(plain.exitCode, 3, plain.stderr);
        assert.match(plain.stderr, /is an online migration \(--follow\): resume it with --follow/);
        const first = await runCli([...args, "--follow"], env);
        assert.equal(first.exitCode, 0, first.stderr);
        assert.match(first.stderr, /resuming run/);
        assert.equal((await slotsOf(source)).length, 1);
        assert.equal((await subscriptionsOf(target)).length, 1);
        const aborted = await runCli(["abort", ...serverArgs(source, target)], env);
        assert.equal(aborted.exitCode, 0, aborted.stderr);
        assert.match(aborted.stderr, /dropped 1 subscription on the target, 1 replication slot/);
        await assertNothingLeft(source, target, ["app"]);

        await psqlExec(target, "postgres", "DROP DATABASE app");
        const second = await runCli([...args, "--follow"], env);
        assert.equal(second.exitCode, 0, second.stderr);
        await psqlExec(source, "app", "INSERT INTO ledger VALUES (1), (2), (3)");
        await psqlExec(target, "app", "ALTER SUBSCRIPTION " + (await subscriptionOf(target)) + " DISABLE");
        await psqlExec(source, "app", "INSERT INTO ledger VALUES (4)");
        const stuck = await runCli(["cutover", "--timeout", "2", ...serverArgs(source, target)], env);
        assert.equal(stuck.exitCode, 1, stuck.stderr);
        assert.match(
          stuck.stderr,
          /"app" \(\d+ bytes behind, its subscription is not connected\) did not catch up .*the writes stay blocked/,
        );
        // Blocked: the source takes no write.
        await assert.rejects(psqlExec(source, "app", "INSERT INTO ledger VALUES (5)"), /read-only/);

        await psqlExec(target, "app", "ALTER SUBSCRIPTION " + (await subscriptionOf(target)) + " ENABLE");
        const again = await runCli(["cutover", ...serverArgs(source, target)], env);
        assert.equal(again.exitCode, 0, again.stderr);
        assert.deepEqual(
          await query(target, "app", "SELECT id::int FROM ledger ORDER BY id"),
          [1, 2, 3, 4].map((id) => ({ id })),
        );
        assert.deepEqual(await tableCounts(target, "app"), await tableCounts(source, "app"));
        await assertNothingLeft(source, target, ["app"]);
      },
      { nats: false, sourceSettings: { wal_level: "logical" } },
    );
  },
);

const slotsOf = (source: LocalCluster) => query(source, "postgres", "SELECT slot_name FROM pg_replication_slots");
const subscriptionsOf = (target: LocalCluster) => query(target, "postgres", "SELECT subname FROM pg_subscription");

async function subscriptionOf(target: LocalCluster): Promise<string> {
  const rows = await query<{ subname: string }>(target, "postgres", "SELECT subname FROM pg_subscription");
  assert.equal(rows.length, 1);
  return rows[0]!.subname;
}
