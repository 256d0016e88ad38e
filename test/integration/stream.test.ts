// The streamed path (--via stream) on what a row copy tends to miss, on a table split into parts across two
// workers, beside the volume path in one run (--via auto, killed and resumed), and under faults: a worker SIGKILLed mid-slice of a split table, the coordinator SIGKILLed mid-database.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { connect as natsConnect } from "@nats-io/transport-node";
import { execa, type ResultPromise } from "execa";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import {
  BIN,
  cliEnv,
  query,
  readReport,
  runCli,
  sequencesOf,
  serverArgs,
  settingsOf,
  tableCounts,
  type Report,
} from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertEndState } from "../helpers/faults.js";
import { schemaDump } from "../helpers/fidelity.js";
import { startCli } from "../helpers/live.js";
import { waitFor } from "../helpers/procs.js";
import { heldSlice, lockOnTarget } from "../helpers/slices.js";

/** A table of about 45 MB: -j 4 reads it in parts (PostgreSQL 14 and later split by heap pages). */
const BIG = `CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
  INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 400000) g;`;

const ODDITIES = `
  CREATE EXTENSION seg;
  CREATE TYPE pair AS (a int, b text);
  CREATE TABLE orders (id int PRIMARY KEY, qty int, price numeric, total numeric GENERATED ALWAYS AS (qty * price) STORED);
  INSERT INTO orders (id, qty, price) SELECT g, g % 7, g * 1.5 FROM generate_series(1, 500) g;
  CREATE TABLE dropped (id int PRIMARY KEY, gone text, kept text);
  INSERT INTO dropped SELECT g, 'x', 'k' || g FROM generate_series(1, 300) g;
  ALTER TABLE dropped DROP COLUMN gone;
  INSERT INTO dropped SELECT g, 'after ' || g FROM generate_series(301, 320) g;
  CREATE TABLE secrets (id int PRIMARY KEY, note text);
  INSERT INTO secrets SELECT g, 'secret ' || g FROM generate_series(1, 50) g;
  ALTER TABLE secrets ENABLE ROW LEVEL SECURITY; ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
  CREATE POLICY nobody ON secrets USING (false);
  CREATE TABLE animals (id int, name text);
  CREATE TABLE dogs (breed text) INHERITS (animals);
  INSERT INTO animals VALUES (1, 'generic');
  INSERT INTO dogs VALUES (2, 'rex', 'collie'), (3, 'fido', 'pug');
  CREATE TABLE measurements (id int, at date NOT NULL, v float8) PARTITION BY RANGE (at);
  CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
  CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
  CREATE TABLE measurements_other PARTITION OF measurements DEFAULT;
  INSERT INTO measurements SELECT g, DATE '2024-12-01' + g, g / 3.0 FROM generate_series(1, 900) g;
  CREATE UNLOGGED TABLE scratch (id int, s text);
  INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 77) g;
  CREATE TABLE ranges (id int PRIMARY KEY, r seg, p pair, tags text[]);
  INSERT INTO ranges SELECT g, (g || ' .. ' || g + 1)::seg, ROW(g, 'p' || g)::pair, ARRAY['a' || g, NULL] FROM generate_series(1, 40) g;
  CREATE TABLE payloads (id int PRIMARY KEY, data bytea);
  ALTER TABLE payloads ALTER data SET STORAGE EXTERNAL;
  INSERT INTO payloads SELECT 1, convert_to(string_agg(md5(g::text), ''), 'SQL_ASCII') FROM generate_series(1, 3276800) g;
  INSERT INTO payloads VALUES (2, '\\x00ff'), (3, NULL);
  CREATE SEQUENCE invoice_seq START 100; SELECT setval('invoice_seq', 4711);
  CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, t text);
  INSERT INTO tickets (t) SELECT 't' || g FROM generate_series(1, 33) g;
  CREATE MATERIALIZED VIEW order_totals AS SELECT qty, sum(total) AS s FROM orders GROUP BY qty;
  SELECT lo_from_bytea(0, convert_to('first large object', 'UTF8'));
  SELECT lo_from_bytea(0, decode(repeat('ab', 100000), 'hex'));
`;

test(
  "--via stream: generated and dropped columns, forced RLS, inheritance, partitions, an unlogged table, types without binary I/O, a 100 MB value, large objects, sequences and a matview arrive exact; a big table is split over both workers",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async (env) => {
      const { source, target, home } = env;
      await psqlExec(source, "postgres", "CREATE DATABASE oddities");
      await psqlExec(source, "oddities", ODDITIES + BIG);
      const before = await settingsOf(target);
      const r = await runCli(
        [
          ...serverArgs(source, target),
          "--via",
          "stream",
          "--workers",
          "2",
          "-m",
          "1",
          "-j",
          "4",
          "--verify",
          "checksum",
        ],
        cliEnv(home, source, target),
      );
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(await tableCounts(target, "oddities"), await tableCounts(source, "oddities"));
      assert.deepEqual(await sequencesOf(target, "oddities"), await sequencesOf(source, "oddities"));
      assert.equal(await schemaDump(target, "oddities"), await schemaDump(source, "oddities"), "schema");
      // Content, not only counts: the parts of what verification hashes that a user would look at first.
      const contents = async (c: LocalCluster) =>
        query(
          c,
          "oddities",
          `SELECT (SELECT md5(data) FROM payloads WHERE id = 1) AS payload,
                  (SELECT length(data) FROM payloads WHERE id = 1) AS payload_bytes,
                  (SELECT string_agg(md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata) AS large_objects,
                  (SELECT string_agg(r::text || p::text || tags::text, ';' ORDER BY id) FROM ranges) AS no_binary,
                  (SELECT sum(total) FROM orders) AS generated,
                  (SELECT count(*) FROM ONLY animals) AS parent_only,
                  (SELECT relpersistence FROM pg_class WHERE relname = 'scratch') AS unlogged,
                  (SELECT relforcerowsecurity FROM pg_class WHERE relname = 'secrets') AS forced`,
        );
      const [want] = await contents(source);
      assert.deepEqual((await contents(target))[0], want);
      assert.equal((want as { payload_bytes: number }).payload_bytes, 104_857_600);
      assert.equal((await query<{ n: string }>(target, "oddities", "SELECT count(*) AS n FROM secrets"))[0]!.n, "50");

      const report = await readReport(home, r.stderr);
      const odd = report.databases.find((d) => d.name === "oddities")!;
      assert.ok(odd.verified, odd.error);
      assert.ok(odd.tableCounts.every((t) => t.source === t.target && t.sourceChecksum === t.targetChecksum));
      const slices = odd.stream!.slices;
      const counted = slices.flatMap((s) => s.counts ?? []);
      const format = (name: string) => [...new Set(counted.filter((c) => c.name === name).map((c) => c.format))];
      assert.deepEqual(format("ranges"), ["text"], "seg and a composite have no binary COPY: text");
      assert.deepEqual(format("big"), ["binary"]);
      // The big table in parts, done by both workers, counted exactly.
      const parts = slices.filter((s) => s.tables[0]!.name === "big" && s.part);
      assert.ok(parts.length >= 4, `big in ${parts.length} parts`);
      const by = new Set(parts.map((s) => s.worker!.replace(/-[^-]+$/, "")));
      assert.deepEqual([...by].sort(), ["local-1", "local-2"], `parts of big done by ${[...by].join(", ")}`);
      assert.equal(
        counted.filter((c) => c.name === "big").reduce((n, c) => n + c.copied, 0),
        400_000,
      );
      assert.doesNotMatch(r.stderr, /\bdump "/);
      await assertEndState(env, before, ["oddities"]);
    });
  },
);

test(
  "--via auto, the default: the database whose weight is one big table streams in parts, the small ones go through the dump volume, in one run; SIGKILLed mid-run, the same command finishes it",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async (env) => {
      const { source, target, home } = env;
      await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
      // About 300 MB: over --via auto's 256 MiB floor and more than half the cluster (-m 2).
      await psqlExec(source, "postgres", "CREATE DATABASE weighty");
      await psqlExec(
        source,
        "weighty",
        `CREATE TABLE wide (id bigint PRIMARY KEY, pad text NOT NULL);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 1250000) g;`,
      );
      const before = await settingsOf(target);
      const args = [...serverArgs(source, target), "--workers", "2", "-m", "2", "-j", "2"];
      // The first session is killed once a database has gone through the volume: the streamed one is then
      // still copying (it is admitted first, as the largest), or done; either way both paths were in flight.
      const first = startCli(args, cliEnv(home, source, target));
      await first.waitFor(/dump "\w+" done/);
      first.child.kill("SIGKILL");
      await first.result;
      const r = await runCli(args, cliEnv(home, source, target));
      assert.equal(r.exitCode, 0, r.stderr);
      const both = `${first.stderr()}\n${r.stderr}`;
      for (const text of [first.stderr(), r.stderr])
        assert.match(
          text,
          /--via auto: database "weighty" streamed in table slices .*; 4 others through the dump volume/,
        );
      assert.match(both, /copy "weighty" done in .*: \d+ slices/);
      assert.doesNotMatch(both, /dump "weighty"/);
      for (const db of demoDatabases) assert.ok(both.includes(`dump ${JSON.stringify(db)} done`), `${db}: ${both}`);
      const report = await readReport(home, r.stderr);
      assert.ok(
        report.databases.every((d) => d.verified),
        r.stderr,
      );
      const weighty = report.databases.find((d) => d.name === "weighty")!;
      assert.equal(weighty.via, "stream");
      const parts = weighty.stream!.slices.filter((s) => s.part);
      assert.ok(parts.length >= 2, `wide in ${parts.length} parts`);
      assert.equal(
        weighty.stream!.slices.flatMap((s) => s.counts ?? []).reduce((n, c) => n + c.copied, 0),
        1_250_000,
      );
      for (const d of report.databases.filter((x) => x.name !== "weighty")) assert.notEqual(d.via, "stream", d.name);
      await assertEndState(env, before, [...demoDatabases, "weighty"]);
    });
  },
);

/** Starts a pg-migrate worker of the test's own: its id, its process. */
function startWorker(nats: string, home: string, id: string, secret: string): ResultPromise {
  return execa(
    process.execPath,
    [BIN, "worker", "--nats-url", nats, "--dump-root", join(home, `dumps-${id}`), "--id", id, "--slices", "1"],
    { env: { HOME: home, PGMIGRATE_SECRET: secret }, reject: false },
  );
}

test(
  "--via stream: SIGKILL a worker mid-slice of a split table: only that slice is done again, no row missing or twice",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async ({ source, target, nats, home }) => {
      await psqlExec(source, "postgres", "CREATE DATABASE split");
      await psqlExec(source, "split", BIG);
      const secret = "stream-fault-secret";
      const workers = new Map([
        ["w-one", startWorker(nats.url, home, "w-one", secret)],
        ["w-two", startWorker(nats.url, home, "w-two", secret)],
      ]);
      try {
        const run = startCli(
          [
            ...serverArgs(source, target),
            "--nats-url",
            nats.url,
            "--via",
            "stream",
            "-m",
            "1",
            "-j",
            "2",
            "--ack-wait",
            "4",
            "--retry-delay",
            "1",
            "--verify",
            "checksum",
          ],
          cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
        );
        // The next part's COPY waits on the test's lock, in the middle of its slice.
        const held = await lockOnTarget(target, "split", "big");
        const { port, pid: victim } = await heldSlice(target, "split");
        const victimId = [...workers.entries()].find(([, w]) => w.pid === victim)?.[0];
        assert.ok(victimId, `the slice's connection (port ${port}) belongs to one of the test's workers`);
        process.kill(victim, "SIGKILL");
        await held.release();

        const r = await run.result;
        assert.equal(r.exitCode, 0, r.stderr);
        assert.deepEqual(await tableCounts(target, "split"), await tableCounts(source, "split"));
        const report = await readReport(home, r.stderr);
        const split = report.databases.find((d) => d.name === "split")!;
        assert.ok(split.verified, split.error);
        assert.ok(split.tableCounts.every((t) => t.source === t.target && t.sourceChecksum === t.targetChecksum));
        const slices = split.stream!.slices;
        assert.ok(slices.length >= 4, `${slices.length} slices`);
        const again = slices.filter((s) => s.attempts > 1);
        assert.equal(again.length, 1, `slices done more than once: ${JSON.stringify(again)}`);
        assert.notEqual(again[0]!.worker!.replace(/-[^-]+$/, ""), victimId, "the other worker redid it");
        assert.ok(
          slices.every((s) => s.phase === "done"),
          JSON.stringify(slices.map((s) => [s.id, s.phase])),
        );
      } finally {
        for (const w of workers.values()) w.kill("SIGTERM");
        await Promise.all(workers.values());
      }
    });
  },
);

test(
  "--via stream: SIGTERM on a worker mid-slice: its COPY ended, the slice handed back at once without using an attempt, the worker gone within seconds",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async ({ source, target, nats, home }) => {
      await psqlExec(source, "postgres", "CREATE DATABASE split");
      await psqlExec(source, "split", BIG);
      const secret = "stream-sigterm-secret";
      const workers = new Map([
        ["w-one", startWorker(nats.url, home, "w-one", secret)],
        ["w-two", startWorker(nats.url, home, "w-two", secret)],
      ]);
      try {
        // The default ack wait (60 s): only the hand-back gets the slice to the other worker in time.
        const run = startCli(
          [...serverArgs(source, target), "--nats-url", nats.url, "--via", "stream", "-m", "1", "-j", "2"],
          cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
        );
        const held = await lockOnTarget(target, "split", "big");
        const { port, pid: victim } = await heldSlice(target, "split");
        const victimId = [...workers.entries()].find(([, w]) => w.pid === victim)?.[0];
        assert.ok(victimId, `the slice's connection (port ${port}) belongs to one of the test's workers`);
        const stopped = Date.now();
        process.kill(victim, "SIGTERM");
        const ended = await workers.get(victimId)!;
        assert.equal(ended.exitCode, 0, String(ended.stderr));
        assert.ok(Date.now() - stopped < 8_000, `the worker exited ${Date.now() - stopped} ms after SIGTERM`);
        // Its session on the target ends with it (cancelled, not left waiting on the lock until it goes).
        await waitFor(
          "the stopped worker's session on the target to end",
          async () =>
            (await query(target, "split", "SELECT pid FROM pg_stat_activity WHERE client_port = $1", [port])).length ===
            0,
          3_000,
          50,
        );
        await run.waitFor(
          /slice s\d+ of "split" \([^)]*\): \S+ handed it back; offered again at once \(attempt 1 was not used up\)/,
          1,
          20_000,
        );
        await held.release();
        const r = await run.result;
        assert.equal(r.exitCode, 0, r.stderr);
        assert.ok(Date.now() - stopped < 50_000, "finished before the 60 s ack wait could have redelivered it");
        assert.doesNotMatch(r.stderr, /attempt [2-9] of/);
        assert.deepEqual(await tableCounts(target, "split"), await tableCounts(source, "split"));
        const report = await readReport(home, r.stderr);
        const split = report.databases.find((d) => d.name === "split")!;
        assert.ok(split.verified, split.error);
        assert.ok(
          split.stream!.slices.every((s) => s.phase === "done" && s.attempts === 1),
          JSON.stringify(split.stream!.slices),
        );
      } finally {
        for (const w of workers.values()) w.kill("SIGTERM");
        await Promise.all(workers.values());
      }
    });
  },
);

/** Counts the run's finished slices as their events arrive. */
async function countSlicesDone(url: string): Promise<{ done: () => number; close: () => Promise<void> }> {
  const nc = await natsConnect({ servers: url });
  let n = 0;
  const sub = nc.subscribe("pgmigrate.events.*.slice.done");
  void (async () => {
    for await (const _ of sub) n++;
  })();
  return { done: () => n, close: () => nc.close() };
}

test(
  "--via stream: SIGKILL the coordinator mid-database; the same command resumes, keeping the finished slices of an unchanged source and copying a changed one again",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async (env) => {
      const { source, target, nats, home } = env;
      const before = await settingsOf(target);
      const secret = "stream-resume-secret";
      const workers = [startWorker(nats.url, home, "w-one", secret), startWorker(nats.url, home, "w-two", secret)];
      const env2 = cliEnv(home, source, target, { PGMIGRATE_SECRET: secret });
      const events = await countSlicesDone(nats.url);
      let lastErr = "";
      const stillErr = () => lastErr;
      /** A run of one database killed once a few of its slices are done; then `between`, then the same command. */
      const killedAndResumed = async (db: string, between: () => Promise<void>) => {
        await psqlExec(source, "postgres", `CREATE DATABASE ${db}`);
        // VACUUM ANALYZE now: an autovacuum ANALYZE later would take a transaction id, which changes the source.
        await psqlExec(source, db, `${BIG} VACUUM ANALYZE big;`);
        const args = [
          ...serverArgs(source, target),
          "--nats-url",
          nats.url,
          "--via",
          "stream",
          "--include-db",
          db,
          "-j",
          "1",
          "--ack-wait",
          "4",
        ];
        const seen = events.done();
        const first = startCli(args, env2);
        // Once a slice is done, the test locks the table on the target: the next slice's COPY waits there, so the
        // coordinator is killed with finished and unfinished slices both recorded. The lock goes after the kill.
        await waitFor("a slice done", () => events.done() > seen, 120_000, 5);
        const held = await lockOnTarget(target, db, "big");
        await new Promise((r) => setTimeout(r, 500)); // the coordinator records what finished
        first.child.kill("SIGKILL");
        await first.result.catch(() => undefined);
        await held.release();
        await between();
        const r = await runCli(args, env2);
        assert.equal(r.exitCode, 0, r.stderr);
        const report: Report = await readReport(home, r.stderr);
        const d = report.databases.find((x) => x.name === db)!;
        assert.ok(d.verified, r.stderr);
        lastErr = `first session:\n${first.stderr()}\nresumed:\n${r.stderr}`;
        return d;
      };
      try {
        // Nothing written anywhere on the source meanwhile: the finished slices stay, each copied once.
        const still = await killedAndResumed("still", async () => undefined);
        assert.match(still.stream!.restartedBecause ?? "", /the source had not changed since/, stillErr());
        assert.equal(still.stream!.restarts, 0);
        assert.ok((still.stream!.keptSlices ?? 0) >= 1, JSON.stringify(still.stream));
        assert.ok(
          still.stream!.slices.filter((s) => s.attempts === 1).length >= still.stream!.keptSlices!,
          JSON.stringify(still.stream!.slices),
        );
        // A write on the source between the sessions: its snapshot changed, and the database is copied again whole.
        const moving = await killedAndResumed("moving", async () => {
          await psqlExec(source, "moving", "INSERT INTO big VALUES (400001, 'late')");
        });
        assert.match(moving.stream!.restartedBecause ?? "", /the source had changed since/);
        assert.equal(moving.stream!.restarts, 1);
        assert.equal(moving.stream!.keptSlices, undefined);
        assert.equal((await query<{ n: string }>(target, "moving", "SELECT count(*) AS n FROM big"))[0]!.n, "400001");
        await events.close();
        for (const w of workers) w.kill("SIGTERM");
        await Promise.all(workers);
        await assertEndState(env, before, ["still", "moving"]);
      } finally {
        await events.close().catch(() => undefined);
        for (const w of workers) w.kill("SIGTERM");
        await Promise.all(workers);
      }
    });
  },
);
