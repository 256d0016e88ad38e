// Causes, early and exact: what a source database asks of the source server is checked by plan and by the run
// before anything changes — room in the source's lock table for its dump, read access to every table for a source
// user that is not a superuser — each refusal naming the database, the numbers or tables, and the fix. What still
// goes wrong later for a reason no retry can mend (a privilege revoked mid-run) fails at once with its real cause,
// and leaves no empty database behind.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { cliEnv, databasesOf, errorLines, query, readReport, runCli, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertMigrated } from "../helpers/faults.js";
import { startCli } from "../helpers/live.js";
import { assertNoLeftovers, toolsOn, waitFor } from "../helpers/procs.js";

const autoConf = (c: LocalCluster) => readFile(join(c.dataDir, "postgresql.auto.conf"), "utf8");

/** n tables without indexes, each in its own statement (one transaction could not lock them all here). */
const tables = (n: number) =>
  Array.from({ length: n }, (_, i) => `CREATE TABLE t${i + 1} (id int); INSERT INTO t${i + 1} VALUES (${i});`).join(
    "\n",
  );

/** The server processes PostgreSQL sizes its lock table for, read as the check reads them. */
async function lockSlots(c: LocalCluster): Promise<number> {
  const [r] = await query<{ n: number }>(
    c,
    "postgres",
    `SELECT current_setting('max_connections')::int + coalesce(current_setting('autovacuum_worker_slots', true), current_setting('autovacuum_max_workers'))::int + 1
            + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int + current_setting('max_prepared_transactions')::int AS n`,
  );
  return r!.n;
}

test(
  "a database too big for the source's lock table is refused by plan and the run, named with the numbers and the fix; one that may not fit is a warning, not a refusal",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        // 10 locks per slot × (20 connections + the server's other processes): a lock table sized for about 420.
        for (const [db, n] of [
          ["wide", 700],
          ["medium", 150],
          ["small", 3],
        ] as const) {
          await psqlExec(source, "postgres", `CREATE DATABASE ${db}`);
          await psqlExec(source, db, tables(n));
        }
        const slots = await lockSlots(source);
        const room = 10 * slots;
        // -j 2: pg_dump's workers lock again what they dump. wide: 700 × 2 + 700 counted = 2100; medium: 450.
        assert.ok(
          2100 > 3 * room && 450 > room && 450 <= 3 * room,
          `a lock table of ${room} puts wide past 3 times it and medium past it`,
        );
        const before = await settingsOf(target);
        const fileBefore = await autoConf(target);
        const databasesBefore = await databasesOf(target);
        const args = [...serverArgs(source, target), "--workers", "1", "-j", "2"];
        const refusal = new RegExp(
          `"wide" holds about 2100 locks at once while it is dumped \\(700 tables locked by pg_dump and again by its parallel workers; 700 tables and 0 indexes by the count in the same snapshot\\), more than 3 times what the source's lock table is sized for ${room} \\(max_locks_per_transaction 10 × ${slots} server processes and prepared transactions\\): its dump would fail with "out of shared memory"; set max_locks_per_transaction to at least ${Math.ceil(2100 / slots)} on the source \\(it takes a restart\\), or leave the database out with --exclude-db`,
        );
        const warning = new RegExp(
          `warning: "medium" holds about 450 locks at once while it is dumped .*more than the source's lock table is sized for ${room} .*the dump may fail with "out of shared memory": to be sure, set max_locks_per_transaction to at least ${Math.ceil(450 / slots)} on the source`,
        );

        const planned = await runCli(["plan", ...args], cliEnv(home, source, target));
        assert.equal(planned.exitCode, 3, planned.stderr);
        assert.match(planned.stdout, /a run would be refused: /);
        assert.match(planned.stdout, refusal);
        assert.match(planned.stderr, warning);

        const refused = await runCli(args, cliEnv(home, source, target));
        assert.equal(refused.exitCode, 3, refused.stderr);
        const errors = errorLines(refused.stderr);
        assert.equal(errors.length, 1, refused.stderr);
        assert.match(errors[0]!, refusal);
        assert.match(errors[0]!, /; nothing was changed$/);
        assert.match(refused.stderr, warning);
        assert.deepEqual(await databasesOf(target), databasesBefore, "no database created");
        assert.deepEqual(await settingsOf(target), before);
        assert.equal(await autoConf(target), fileBefore);
        await assertNoLeftovers(home, [source.port, target.port]);

        // Without wide, the warning alone refuses nothing. (Whether medium's dump then fits depends on the spare room
        // the server has at that moment, which is why it is a warning: the run below leaves it out too.)
        const fine = await runCli(["plan", ...args, "--exclude-db", "wide"], cliEnv(home, source, target));
        assert.equal(fine.exitCode, 0, fine.stdout);
        assert.match(fine.stderr, warning);
        assert.match(fine.stdout, /nothing was changed; a run with these flags would start/);
        const r = await runCli(
          [...args, "--exclude-db", "wide", "--exclude-db", "medium"],
          cliEnv(home, source, target),
        );
        assert.equal(r.exitCode, 0, r.stderr);
        await assertMigrated(source, target, ["small"]);
        assert.deepEqual(await settingsOf(target), before);
        assert.equal(await autoConf(target), fileBefore);
        await assertNoLeftovers(home, [source.port, target.port]);
      },
      { nats: false, sourceSettings: { max_connections: "20", max_locks_per_transaction: "10" } },
    );
  },
);

const READER_PW = "Reader-Pw-77";
const readerArgs = (source: LocalCluster, target: LocalCluster) => [
  ...serverArgs(source, target),
  "--from-user",
  "reader",
  "--to-user",
  target.user,
  "--no-role-passwords",
];
const readerEnv = (home: string, target: LocalCluster) => ({
  HOME: home,
  PGMIGRATE_FROM_PASS: READER_PW,
  PGMIGRATE_TO_PASS: target.password,
});

test(
  "tables a source user that is not a superuser cannot read are named by plan and the run before anything changes",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(
          source,
          "postgres",
          `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}'; CREATE DATABASE vault; CREATE DATABASE fine;`,
        );
        await psqlExec(source, "fine", "CREATE TABLE open AS SELECT 1 AS id; GRANT SELECT ON open TO reader;");
        await psqlExec(
          source,
          "vault",
          `CREATE TABLE open AS SELECT 1 AS id; GRANT SELECT ON open TO reader;
         CREATE TABLE secret AS SELECT 2 AS id;
         CREATE TABLE guarded AS SELECT 3 AS id; GRANT SELECT ON guarded TO reader;
         ALTER TABLE guarded ENABLE ROW LEVEL SECURITY; CREATE POLICY mine ON guarded USING (id > 100);`,
        );
        const before = await settingsOf(target);
        const databasesBefore = await databasesOf(target);
        const named =
          /the source user "reader" cannot read 2 relations of "vault" that pg_dump reads: public\.guarded \(row-level security applies to it\), public\.secret \(no SELECT\); grant it SELECT \(and BYPASSRLS for row-level security\), migrate as a superuser, or leave the database out with --exclude-db/;

        const planned = await runCli(["plan", ...readerArgs(source, target)], readerEnv(home, target));
        assert.equal(planned.exitCode, 3, planned.stderr);
        assert.match(planned.stdout, named);

        const refused = await runCli(readerArgs(source, target), readerEnv(home, target));
        assert.equal(refused.exitCode, 3, refused.stderr);
        const errors = errorLines(refused.stderr);
        assert.equal(errors.length, 1, refused.stderr);
        assert.match(errors[0]!, named);
        assert.deepEqual(await databasesOf(target), databasesBefore, "no database created");
        assert.deepEqual(await settingsOf(target), before);
        await assertNoLeftovers(home, [source.port, target.port]);
      },
      { nats: false },
    );
  },
);

/** A reader role, a larger database "first" and a tiny "second", each table readable by the reader. */
async function seedFirstAndSecond(source: LocalCluster): Promise<void> {
  await psqlExec(
    source,
    "postgres",
    `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}'; CREATE DATABASE first; CREATE DATABASE second;`,
  );
  await psqlExec(
    source,
    "first",
    "CREATE TABLE facts AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g; GRANT SELECT ON facts TO reader;",
  );
  await psqlExec(
    source,
    "second",
    "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g; GRANT SELECT ON t TO reader;",
  );
}

/** Runs sql in db on the source while the pg_dump of "first" is held (SIGSTOP), so "second" is not begun yet. */
async function whileFirstIsDumped(source: LocalCluster, db: string, sql: string): Promise<void> {
  const dump = await waitFor(
    "the dump of first",
    () => toolsOn(source.port, "pg_dump").find((p) => p.argv.includes("--dbname=dbname='first'")),
    120_000,
    20,
  );
  process.kill(dump.pid, "SIGSTOP");
  try {
    await psqlExec(source, db, sql);
  } finally {
    process.kill(dump.pid, "SIGCONT");
  }
}

test(
  "a privilege revoked mid-run fails that database at once with its cause, not pg_dump's snapshot error, and leaves no empty database",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await seedFirstAndSecond(source);
        const before = await settingsOf(target);
        const run = startCli(
          [...readerArgs(source, target), "--workers", "1", "-m", "1", "--max-deliver", "3"],
          readerEnv(home, target),
        );
        // The larger database is dumped first: while its pg_dump is held, the other loses its privilege.
        await whileFirstIsDumped(source, "second", "REVOKE SELECT ON t FROM reader");
        const r = await run.result;

        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(
          r.stderr,
          /"second" failed: dump failed after 1 attempt, not retried \(no retry can mend it\): counting the rows of "second" in pg_dump's snapshot failed: permission denied for table t \(the source user must be able to read every table, as pg_dump must: grant it SELECT, or migrate as a role that can read everything\); no restore had begun, so the empty database this run created was dropped from the target/,
        );
        assert.doesNotMatch(r.stderr, /could not import the requested snapshot|will retry/);
        assert.ok(!(await databasesOf(target)).includes("second"), "no empty database left");
        await assertMigrated(source, target, ["first"]);
        const report = await readReport(home, r.stderr);
        const second = report.databases.find((d) => d.name === "second")!;
        assert.equal(second.phase, "failed");
        assert.equal(second.attempts.dump, 1);
        assert.match(second.error!, /permission denied for table t/);
        assert.deepEqual(await settingsOf(target), before);
        await assertNoLeftovers(home, [source.port, target.port]);
      },
      { nats: false },
    );
  },
);

test(
  "--via stream: a database whose snapshot cannot be taken fails at once with its cause, and leaves no empty database",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await seedFirstAndSecond(source);
        const before = await settingsOf(target);
        const run = startCli(
          [...readerArgs(source, target), "--workers", "1", "-m", "1", "--max-deliver", "3", "--via", "stream"],
          readerEnv(home, target),
        );
        // The larger database goes first: while its schema's pg_dump is held, the other loses the right to connect,
        // so its snapshot holder cannot open (the target database is created as it is admitted).
        await whileFirstIsDumped(source, "postgres", "REVOKE CONNECT ON DATABASE second FROM PUBLIC");
        const r = await run.result;

        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(
          r.stderr,
          /"second" failed: its snapshot could not be taken on the source: .*permission denied for database "?second"?.*; no restore had begun, so the empty database this run created was dropped from the target/,
        );
        assert.ok(!(await databasesOf(target)).includes("second"), "no empty database left");
        await assertMigrated(source, target, ["first"]);
        // Nothing was dumped for a streamed database: the last line names no dumps to keep.
        assert.doesNotMatch(r.stderr, /the dumps are kept/);
        const report = await readReport(home, r.stderr);
        assert.equal(report.databases.find((d) => d.name === "second")!.phase, "failed");
        assert.equal(report.dumps.kept, false);
        assert.deepEqual(await settingsOf(target), before);
        await assertNoLeftovers(home, [source.port, target.port]);
      },
      { nats: false },
    );
  },
);
