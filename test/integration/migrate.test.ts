// End to end: the CLI run as a child process, embedded mode with 2 workers, on Pagila, Chinook, an awkwardly
// named database and a database of the objects plain copies miss. Then the same migration in distributed mode.
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { test } from "node:test";
import { RUN_STEPS } from "../../shared/contracts/phases.js";
import { execa } from "execa";
import pg from "pg";
import { giveToServerAccount, psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import {
  BIN,
  cliEnv,
  databasesOf,
  query,
  readReport,
  assertStepsTimed,
  runCli,
  sequencesOf,
  serverArgs,
  settingsOf,
  tableCounts,
} from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { loadChinook, loadNorthwind, sampleData } from "../helpers/corpus.js";
import { schemaDump, rolesDump } from "../helpers/fidelity.js";
import { APP_LOGIN_PASSWORD, databaseProperties, loadCoreFixture } from "../helpers/fixtures.js";

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

for (const via of ["volume", "stream"] as const)
  test(
    `embedded mode migrates every database, role and row, and puts the target's settings back (--via ${via})`,
    { timeout: 600_000 },
    async (t) => {
      t.diagnostic(`sample databases: ${sampleData}`);
      await withTestEnv(async ({ source, target, home }) => {
        await loadCoreFixture(source);
        await loadChinook(source, "autoincrement");
        await loadNorthwind(source);
        // A non-default tablespace with a table in it; on one host the target's must live elsewhere.
        const spaces = await mkdtemp(join(tmpdir(), "pgm-ts-"));
        const [srcSpace, tgtSpace] = [join(spaces, "source"), join(spaces, "target")];
        for (const dir of [srcSpace, tgtSpace]) await mkdir(dir);
        for (const dir of [spaces, srcSpace, tgtSpace]) await giveToServerAccount(dir);
        t.after(() => rm(spaces, { recursive: true, force: true }));
        await psqlExec(source, "postgres", `CREATE TABLESPACE archive_ts LOCATION '${srcSpace}'`);
        // User objects in the maintenance database: they go into the target's, which holds none.
        await psqlExec(
          source,
          "postgres",
          "CREATE TABLE ops_notes (id int PRIMARY KEY, note text); INSERT INTO ops_notes SELECT g, 'n' || g FROM generate_series(1, 9) g; CREATE FUNCTION ops_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';",
        );
        await psqlExec(
          source,
          "features",
          "CREATE TABLE archive (id int PRIMARY KEY, note text) TABLESPACE archive_ts; INSERT INTO archive SELECT g, 'a' || g FROM generate_series(1, 77) g;",
        );
        const settingsBefore = await settingsOf(target);
        const sourceDbs = await databasesOf(source);
        assert.ok(sourceDbs.length >= 4, `fixture databases: ${sourceDbs.join(", ")}`);

        const r = await runCli(
          [
            ...serverArgs(source, target),
            "--workers",
            "2",
            "--fast-restore",
            "full",
            "--verify",
            "checksum",
            "--tablespace-location",
            `archive_ts=${tgtSpace}`,
            "--via",
            via,
          ],
          cliEnv(home, source, target),
        );
        assert.equal(r.exitCode, 0, `exit ${r.exitCode}\n${r.stderr}`);
        for (const db of sourceDbs)
          assert.match(
            r.stderr,
            via === "volume"
              ? // --compress auto on a local dump volume: no compression.
                new RegExp(`dump ${escape(JSON.stringify(db))} done in .* uncompressed`)
              : // Streamed: no dump at all, the data went in slices.
                // (a database that is one slice goes in one job).
                new RegExp(`copy ${escape(JSON.stringify(db))} done in .*: (\\d+ slices?, |schema, .* in one job)`),
            db,
          );
        if (via === "stream") assert.doesNotMatch(r.stderr, /\bdump "/);
        // ANALYZE reached every user table with rows (the dump has no statistics).
        for (const db of sourceDbs) {
          const bare = await query<{ rel: string }>(
            target,
            db,
            `SELECT c.oid::regclass::text AS rel FROM pg_class c
        WHERE c.relkind = 'r' AND c.reltuples > 0 AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
          AND NOT EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid)`,
          );
          assert.deepEqual(bare, [], `tables of ${db} without statistics`);
        }

        assert.deepEqual(await databasesOf(target), sourceDbs);
        for (const db of sourceDbs) {
          const expected = await tableCounts(source, db);
          assert.ok(Object.keys(expected).length > 0, `${db} has tables`);
          assert.deepEqual(await tableCounts(target, db), expected, `row counts of ${db}`);
          assert.deepEqual(await sequencesOf(target, db), await sequencesOf(source, db), `sequences of ${db}`);
        }
        // Spot checks of what the fixture put there on purpose.
        assert.equal((await sequencesOf(target, "features"))["public.ticket_seq"], "1016");
        assert.equal((await sequencesOf(target, "features"))["public.tickets_id_seq"], "31");
        const lo = await query<{ n: string }>(target, "features", "SELECT count(*) AS n FROM pg_largeobject_metadata");
        assert.equal(lo[0]!.n, "2");
        const ext = await query<{ extname: string }>(
          target,
          "features",
          "SELECT extname FROM pg_extension WHERE extname = 'citext'",
        );
        assert.equal(ext.length, 1);

        // Roles: attributes, membership, grants, and the copied password verifier.
        const roles = await query<{ rolname: string; rolcanlogin: boolean; rolconnlimit: number }>(
          target,
          "postgres",
          "SELECT rolname, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname IN ('app_group', 'app_login') ORDER BY 1",
        );
        assert.deepEqual(roles, [
          { rolname: "app_group", rolcanlogin: false, rolconnlimit: -1 },
          { rolname: "app_login", rolcanlogin: true, rolconnlimit: 7 },
        ]);
        const member = await query<{ m: boolean }>(
          target,
          "postgres",
          "SELECT pg_has_role('app_login', 'app_group', 'MEMBER') AS m",
        );
        assert.equal(member[0]!.m, true);
        const grants = await query<{ people: boolean; lines: boolean }>(
          target,
          "features",
          `SELECT has_table_privilege('app_group', 'public.people', 'SELECT') AS people, has_table_privilege('app_group', '"Sales"."OrderLines"', 'INSERT') AS lines`,
        );
        assert.deepEqual(grants[0], { people: true, lines: true });
        const owner = await query<{ o: string }>(
          target,
          "postgres",
          "SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = 'features'",
        );
        assert.equal(owner[0]!.o, "app_login");
        const appLogin = new pg.Client({
          host: target.host,
          port: target.port,
          user: "app_login",
          password: APP_LOGIN_PASSWORD,
          database: "features",
        });
        await appLogin.connect();
        await appLogin.end();

        // The migration user keeps its own password on the target.
        const self = new pg.Client({
          host: target.host,
          port: target.port,
          user: target.user,
          password: target.password,
          database: "postgres",
        });
        await self.connect();
        await self.end();

        assert.deepEqual(await settingsOf(target), settingsBefore);
        // pg_upgrade's bar: what pg_dump writes of every database, and pg_dumpall of the roles, is the same on both
        // sides (the migration user's own lines aside: it keeps its password and attributes on the target).
        for (const db of [...sourceDbs, "postgres"])
          assert.equal(
            await schemaDump(target, db),
            await schemaDump(source, db),
            `pg_dump --schema-only --create of ${db}`,
          );
        assert.deepEqual(
          await tableCounts(target, "postgres"),
          { "public.ops_notes": 9 },
          "the maintenance database's objects",
        );
        assert.equal(
          await rolesDump(target, target.user),
          await rolesDump(source, target.user),
          "pg_dumpall --roles-only",
        );
        // The tablespace, created where --tablespace-location said, holding the table it held on the source.
        assert.match(
          r.stderr,
          new RegExp(`tablespace "archive_ts" \\(${srcSpace} on the source\\): created at ${tgtSpace} on the target`),
        );
        const ts = await query<{ l: string; t: string }>(
          target,
          "features",
          "SELECT pg_tablespace_location(t.oid) AS l, c.relname AS t FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE t.spcname = 'archive_ts' AND c.relkind = 'r'",
        );
        assert.deepEqual(ts, [{ l: tgtSpace, t: "archive" }]);
        // What a schema-only dump leaves out: the large object's owner and grant, and that the subscription is off.
        const blob = await query<{ o: string; acl: string }>(
          target,
          "features",
          "SELECT pg_get_userbyid(lomowner) AS o, lomacl::text AS acl FROM pg_largeobject_metadata WHERE oid = 424242",
        );
        assert.equal(blob[0]?.o, "app_login");
        assert.match(blob[0]?.acl ?? "", /lo_reader=r\//);
        const sub = await query<{ e: boolean }>(
          target,
          "features",
          "SELECT subenabled AS e FROM pg_subscription WHERE subname = 'people_sub'",
        );
        assert.deepEqual(sub, [{ e: false }]);
        assert.match(r.stderr, /subscription "people_sub" in "features" is disabled on the target/);
        // The databases' own properties: settings (also per role), connection limit, comment and grants.
        for (const db of sourceDbs)
          assert.deepEqual(
            await databaseProperties(target, db),
            await databaseProperties(source, db),
            `properties of ${db}`,
          );
        assert.match(
          JSON.stringify(await databaseProperties(target, "features")),
          /"datconnlimit":40.*features: grants.*app_group:CONNECT.*app_group:statement_timeout=45s/,
        );

        const report = await readReport(home, r.stderr);
        assert.equal(report.status, "finished");
        assertStepsTimed(report, 0, RUN_STEPS);
        // Every database, and the maintenance database, whose user objects were restored into the target's.
        assert.equal(report.totals.databases, sourceDbs.length + 1);
        assert.deepEqual(report.databases.map((d) => d.name).sort(), [...sourceDbs, "postgres"].sort());
        for (const d of report.databases) {
          assert.equal(d.verified, true, `${d.name} verified`);
          assert.ok(
            d.tableCounts.length > 0 && d.tableCounts.every((t) => t.source === t.target),
            `${d.name} per-table counts`,
          );
          // --verify checksum: every table's content hash, the same on both sides.
          assert.ok(
            d.tableCounts.every((t) => typeof t.sourceChecksum === "string" && t.sourceChecksum === t.targetChecksum),
            `${d.name} per-table checksums`,
          );
        }
      });
    },
  );

for (const via of ["volume", "stream"] as const)
  test(
    via === "volume"
      ? "distributed mode: two separately started workers share the jobs"
      : "distributed mode, --via stream: two workers with dump roots of their own, nothing shared but NATS, share the slices",
    { timeout: 600_000 },
    async () => {
      await withTestEnv(async ({ source, target, nats, home }) => {
        await psqlExec(source, "postgres", demoSql());
        const secret = "test-shared-secret-for-workers";
        // Streamed, every worker has a dump root of its own (scratch for the schema archive); none is the coordinator's.
        const rootOf = (id: string) => join(home, via === "volume" ? "shared-dumps" : `dumps-of-${id}`);
        const workers = ["w-one", "w-two"].map((id) =>
          execa(process.execPath, [BIN, "worker", "--nats-url", nats.url, "--dump-root", rootOf(id), "--id", id], {
            env: { HOME: home, PGMIGRATE_SECRET: secret },
            reject: false,
          }),
        );
        try {
          const r = await runCli(
            [
              ...serverArgs(source, target),
              "--nats-url",
              nats.url,
              "--dump-root",
              join(home, via === "volume" ? "shared-dumps" : "coordinator-dumps"),
              "-m",
              "4",
              "-j",
              "2",
              "--via",
              via,
            ],
            cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
          );
          assert.equal(r.exitCode, 0, r.stderr);
          assert.deepEqual(await databasesOf(target), [...demoDatabases].sort());
          for (const db of demoDatabases)
            assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), db);
          const report = await readReport(home, r.stderr);
          const bare = (w: string) => w.replace(/-[^-]+$/, "");
          const used = new Set(
            report.databases.flatMap((d) => [
              ...Object.values(d.workers).map(bare),
              ...(d.stream?.slices ?? []).flatMap((s) => (s.worker ? [bare(s.worker)] : [])),
            ]),
          );
          assert.deepEqual([...used].sort(), ["w-one", "w-two"], `workers that did jobs: ${[...used].join(", ")}`);
          if (via === "stream") {
            for (const d of report.databases) {
              assert.ok(d.stream && d.stream.slices.every((s) => s.phase === "done" && s.worker), d.name);
              assert.ok(
                d.tableCounts.every((t) => t.source === t.target),
                `${d.name} per-table counts`,
              );
            }
          }
        } finally {
          for (const w of workers) w.kill("SIGTERM");
          const ended = await Promise.all(workers);
          for (const e of ended)
            assert.equal(e.exitCode, 0, `worker exit ${e.exitCode} ${e.signal ?? ""}\n${e.stderr}`);
        }
      });
    },
  );
