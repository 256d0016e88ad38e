// Verification compares content, not layout. An inheritance child that got its parent's new column after one of
// its own is recreated by pg_dump with the parent's columns first, and a materialized view that was stale on the
// source is refreshed by pg_restore: both are named warnings, and the run exits 0. One changed value in that same
// child is still a checksum mismatch (exit 1, the table named), and the database's own settings are applied all
// the same. In both paths (--via volume and stream).
import assert from "node:assert/strict";
import { test } from "node:test";
import pg from "pg";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { cliEnv, query, readReport, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";
import { waitFor } from "../helpers/procs.js";

const DB = "inherit";

async function loadInheritance(source: LocalCluster): Promise<void> {
  await psqlExec(source, "postgres", `CREATE DATABASE ${DB}; ALTER DATABASE ${DB} SET work_mem = '5MB';`);
  await psqlExec(
    source,
    DB,
    `CREATE TABLE parent (id int PRIMARY KEY, label text);
     CREATE TABLE child (own text) INHERITS (parent);
     -- After the child exists: the source's child now has (id, label, own, added), pg_dump's (id, label, added, own).
     ALTER TABLE parent ADD COLUMN added int;
     INSERT INTO parent SELECT g, 'p' || g, g FROM generate_series(1, 50) g;
     INSERT INTO child (id, label, own, added) SELECT g, 'c' || g, 'own ' || g, g * 2 FROM generate_series(1, 40) g;
     CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(added) AS s FROM parent;
     -- Stale from here on: the view still counts 90 rows.
     INSERT INTO child (id, label, own, added) SELECT g, 'late' || g, 'late', g FROM generate_series(41, 45) g;
     -- Big enough that the restore is still at work on it when the test changes the child.
     CREATE TABLE bulk (id int PRIMARY KEY, v text);
     INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
     CREATE INDEX ON bulk (v);`,
  );
}

for (const via of ["volume", "stream"] as const)
  test(
    `--verify checksum: an inheritance child's column order and a refreshed materialized view are warnings, exit 0 (--via ${via})`,
    { timeout: 300_000 },
    async () => {
      await withTestEnv(
        async ({ source, target, home }) => {
          await loadInheritance(source);
          const r = await runCli(
            [...serverArgs(source, target), "--workers", "1", "--verify", "checksum", "--include-db", DB, "--via", via],
            cliEnv(home, source, target),
          );
          assert.equal(r.exitCode, 0, r.stderr);
          // The target's child really has another order: the warning is about something true.
          const order = await query<{ a: string }>(
            target,
            DB,
            "SELECT attname AS a FROM pg_attribute WHERE attrelid = 'child'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
          );
          assert.deepEqual(
            order.map((x) => x.a),
            ["id", "label", "added", "own"],
          );
          assert.match(
            r.stderr,
            /warning: "inherit": column-order public\.child \(source id, label, own, added, target id, label, added, own\): .*SELECT \* and INSERT without a column list/,
          );
          assert.match(
            r.stderr,
            /warning: "inherit": matview-refreshed public\.totals \(source checksum -?\d+, target checksum -?\d+\): pg_restore refreshed/,
          );
          assert.match(r.stderr, /verify "inherit" done: .* match, 2 warnings \(not failures\)/);
          assert.match(r.stdout, /2 warnings \(what pg_dump cannot preserve; not failures\)/);
          const report = await readReport(home, r.stderr);
          assert.equal(report.status, "finished");
          assert.equal((report.totals as { warnings?: number }).warnings, 2);
          const db = report.databases.find((d) => d.name === DB) as unknown as {
            verified: boolean;
            warnings: { what: string; object: string }[];
            properties: { applied: boolean };
          };
          assert.equal(db.verified, true);
          assert.deepEqual(db.warnings.map((w) => `${w.what} ${w.object}`).sort(), [
            "column-order public.child",
            "matview-refreshed public.totals",
          ]);
          assert.deepEqual(db.properties, { applied: true });
          const settings = await query<{ c: string[] }>(
            target,
            "postgres",
            `SELECT setconfig AS c FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '${DB}'`,
          );
          assert.deepEqual(
            settings.map((s) => s.c),
            [["work_mem=5MB"]],
          );
        },
        { nats: false },
      );
    },
  );

for (const via of ["volume", "stream"] as const)
  test(
    `--verify checksum: one changed value in that child fails the database naming the table, and its settings are still applied (--via ${via})`,
    { timeout: 300_000 },
    async () => {
      await withTestEnv(
        async ({ source, target, home }) => {
          await loadInheritance(source);
          const run = startCli(
            [...serverArgs(source, target), "--workers", "1", "--verify", "checksum", "--include-db", DB, "--via", via],
            cliEnv(home, source, target),
          );
          await run.waitFor(via === "volume" ? /restore "inherit" started/ : /schema "inherit" started/);
          const c = new pg.Client({
            host: target.host,
            port: target.port,
            user: target.user,
            password: target.password,
            database: DB,
          });
          await c.connect();
          try {
            await waitFor(
              "the restore to create the child",
              async () => (await c.query("SELECT to_regclass('public.child') AS t")).rows[0].t !== null,
              60_000,
              5,
            );
            await waitFor(
              "the COPY into it to commit",
              async () => (await c.query("SELECT EXISTS (SELECT FROM ONLY child) AS e")).rows[0].e === true,
              60_000,
              5,
            );
            await c.query("BEGIN; LOCK TABLE ONLY child IN ACCESS EXCLUSIVE MODE");
            assert.equal((await c.query("UPDATE ONLY child SET own = 'changed' WHERE id = 7")).rowCount, 1);
            await c.query("COMMIT");
          } finally {
            await c.end();
          }
          const r = await run.result;
          assert.equal(r.exitCode, 1, r.stderr);
          assert.match(
            r.stderr,
            /"inherit" failed: verification found 1 difference: checksum public\.child \(source -?\d+, target -?\d+\)/,
          );
          // The warnings are still named beside the real difference.
          assert.match(r.stderr, /column-order public\.child/);
          const report = await readReport(home, r.stderr);
          const db = report.databases.find((d) => d.name === DB) as unknown as {
            verified: boolean;
            error: string;
            mismatches: { what: string; object: string }[];
            properties: { applied: boolean };
          };
          assert.equal(db.verified, false);
          assert.match(db.error, /checksum public\.child/);
          assert.deepEqual(
            db.mismatches.map((m) => `${m.what} ${m.object}`),
            ["checksum public.child"],
          );
          assert.deepEqual(db.properties, { applied: true });
          const settings = await query<{ c: string[] }>(
            target,
            "postgres",
            `SELECT setconfig AS c FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '${DB}'`,
          );
          assert.deepEqual(
            settings.map((s) => s.c),
            [["work_mem=5MB"]],
            "the database's setting, applied after the failed verification",
          );
        },
        { nats: false },
      );
    },
  );
