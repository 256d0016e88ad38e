// Without superusers: a source user that only reads (pg_read_all_data, or plain grants and --no-role-passwords
// where pg_authid is out of reach, as on managed services) and a target user with CREATEDB and CREATEROLE.
// The run skips fast-restore and says so, joins the migrated roles for the run so objects keep their owners,
// gives a superuser's database to the target user with a warning, and leaves the roles again at the end.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pg from "pg";
import { giveToServerAccount, psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { databasesOf, query, readReport, runCli, serverArgs, settingsOf, tableCounts } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";

const READER_PW = "Reader-Pw-51";
const MIGRATOR_PW = "Migrator-Pw-88";
const WRITER_PW = "Writer-Pw-17";

/**
 * Two databases: one owned by a role with objects of two owners, one owned by the source's superuser. With
 * `publicWriter`, app_writer also owns a table in the public schema, which it may create in only through a grant
 * that pg_restore applies after giving the table away: a target user that is not a superuser needs --no-owner then.
 */
async function seed(source: LocalCluster, publicWriter: boolean): Promise<void> {
  await psqlExec(
    source,
    "postgres",
    `CREATE ROLE app_owner NOLOGIN;
     CREATE ROLE app_writer LOGIN PASSWORD '${WRITER_PW}';
     CREATE DATABASE app OWNER app_owner;
     CREATE DATABASE legacy;`,
  );
  await psqlExec(
    source,
    "app",
    `SET ROLE app_owner;
     CREATE TABLE accounts (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
     INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 120) g;
     CREATE VIEW account_names AS SELECT name FROM accounts;
     GRANT SELECT, INSERT ON accounts TO app_writer;
     GRANT CREATE ON SCHEMA public TO app_writer;
     RESET ROLE;
     CREATE SCHEMA books AUTHORIZATION app_writer;
     SET ROLE app_writer;
     CREATE TABLE books.ledger (id bigserial PRIMARY KEY, account int, amount numeric);
     INSERT INTO books.ledger (account, amount) SELECT g % 120 + 1, g * 0.5 FROM generate_series(1, 900) g;
     ${publicWriter ? "CREATE TABLE public.audit AS SELECT g AS id FROM generate_series(1, 7) g;" : ""}`,
  );
  await psqlExec(
    source,
    "legacy",
    `CREATE SCHEMA notes AUTHORIZATION app_writer; SET ROLE app_writer;
     CREATE TABLE notes.notes (id int PRIMARY KEY, body text); INSERT INTO notes.notes SELECT g, 'n' || g FROM generate_series(1, 33) g;`,
  );
}

const ownersOf = async (c: LocalCluster, db: string) =>
  query<{ t: string; o: string }>(
    c,
    db,
    `SELECT c.oid::regclass::text AS t, pg_get_userbyid(c.relowner) AS o FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind IN ('r', 'v', 'S') ORDER BY 1`,
  );

function env(home: string, extra: Record<string, string> = {}) {
  return { HOME: home, PGMIGRATE_FROM_PASS: READER_PW, PGMIGRATE_TO_PASS: MIGRATOR_PW, ...extra };
}

const args = (source: LocalCluster, target: LocalCluster) => [
  ...serverArgs(source, target),
  "--from-user",
  "reader",
  "--to-user",
  "migrator",
  "--workers",
  "2",
];

for (const via of ["volume", "stream"] as const)
  test(
    `a pg_read_all_data source user and a CREATEDB CREATEROLE target user migrate with owners kept (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(async ({ source, target, home }) => {
        await seed(source, false);
        await psqlExec(source, "postgres", `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}' IN ROLE pg_read_all_data`);
        await psqlExec(target, "postgres", `CREATE ROLE migrator LOGIN PASSWORD '${MIGRATOR_PW}' CREATEDB CREATEROLE`);
        const settingsBefore = await settingsOf(target);

        const r = await runCli([...args(source, target), "--via", via], env(home));
        assert.equal(r.exitCode, 0, r.stderr);
        assert.match(r.stderr, /warning: fast-restore mode skipped: the target user is not a superuser/);
        assert.match(r.stderr, /joined \d+ migrated roles? for the run/);
        assert.match(r.stderr, /owner "postgres" of "legacy" is a superuser on the target, .* "migrator" will own it/);
        assert.match(r.stderr, /left the \d+ roles? joined for run/);

        for (const db of ["app", "legacy"])
          assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), `row counts of ${db}`);
        assert.deepEqual(await ownersOf(target, "app"), await ownersOf(source, "app"), "every object keeps its owner");
        assert.deepEqual(await ownersOf(target, "legacy"), await ownersOf(source, "legacy"));
        const dbOwners = await query<{ d: string; o: string }>(
          target,
          "postgres",
          "SELECT datname AS d, pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname IN ('app', 'legacy') ORDER BY 1",
        );
        assert.deepEqual(dbOwners, [
          { d: "app", o: "app_owner" },
          { d: "legacy", o: "migrator" },
        ]);
        // The memberships were for the run only.
        const member = await query<{ r: string }>(
          target,
          "postgres",
          "SELECT b.rolname AS r FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member JOIN pg_roles b ON b.oid = m.roleid WHERE a.rolname = 'migrator'",
        );
        assert.deepEqual(member, [], "the migration user is a member of no role after the run");
        // The writer's password verifier came across (pg_read_all_data can read pg_authid).
        const writer = new pg.Client({
          host: target.host,
          port: target.port,
          user: "app_writer",
          password: WRITER_PW,
          database: "app",
        });
        await writer.connect();
        await writer.end();
        assert.deepEqual(await settingsOf(target), settingsBefore, "no setting changed");
        assert.deepEqual(await databasesOf(target), ["app", "legacy"]);
      });
    },
  );

test(
  "a source user that cannot read pg_authid: refused with the flag to use, then --no-role-passwords (with --no-owner and --no-tablespaces) lists the roles left without one",
  { timeout: 600_000 },
  async (t) => {
    await withTestEnv(async ({ source, target, home }) => {
      await seed(source, true);
      // A tablespace on the source, which a target user that is not a superuser can never create: --no-tablespaces.
      const space = await mkdtemp(join(tmpdir(), "pgm-ts-"));
      t.after(() => rm(space, { recursive: true, force: true }));
      await giveToServerAccount(space);
      await psqlExec(source, "postgres", `CREATE TABLESPACE cold_ts LOCATION '${space}'`);
      await psqlExec(
        source,
        "app",
        "CREATE TABLE public.cold (id int PRIMARY KEY) TABLESPACE cold_ts; INSERT INTO public.cold SELECT generate_series(1, 12); ALTER TABLE public.cold OWNER TO app_writer;",
      );
      // Plain grants, no pg_read_all_data: pg_authid stays out of reach, as on a managed service.
      await psqlExec(source, "postgres", `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}'`);
      for (const db of ["app", "legacy"]) {
        const schemas = db === "app" ? ["public", "books"] : ["notes"];
        for (const schema of schemas) {
          await psqlExec(
            source,
            db,
            `GRANT USAGE ON SCHEMA ${schema} TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA ${schema} TO reader; GRANT SELECT ON ALL SEQUENCES IN SCHEMA ${schema} TO reader;`,
          );
        }
      }
      await psqlExec(target, "postgres", `CREATE ROLE migrator LOGIN PASSWORD '${MIGRATOR_PW}' CREATEDB CREATEROLE`);

      const refused = await runCli(args(source, target), env(home));
      assert.equal(refused.exitCode, 3, refused.stderr);
      assert.match(refused.stderr, /cannot read pg_authid, .*: add --no-role-passwords/);
      assert.deepEqual(await databasesOf(target), [], "nothing created by the refused run");

      const r = await runCli(
        [...args(source, target), "--no-role-passwords", "--no-owner", "--no-tablespaces"],
        env(home),
      );
      assert.equal(r.exitCode, 0, r.stderr);
      assert.match(
        r.stderr,
        /--no-role-passwords: 2 login roles created without a password .*: "app_writer", "reader"/,
      );
      const report = await readReport(home, r.stderr);
      assert.deepEqual((report as unknown as { globals: { withoutPassword: string[] } }).globals.withoutPassword, [
        "app_writer",
        "reader",
      ]);
      for (const db of ["app", "legacy"])
        assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), `row counts of ${db}`);
      assert.match(r.stderr, /tablespace "cold_ts" \(.* on the source\): not created \(--no-tablespaces\)/);
      const cold = await query<{ ts: string | null }>(
        target,
        "app",
        "SELECT (SELECT spcname FROM pg_tablespace WHERE oid = reltablespace) AS ts FROM pg_class WHERE relname = 'cold'",
      );
      assert.deepEqual(cold, [{ ts: null }], "the table is in the default tablespace");
      // --no-owner: everything restored belongs to the target user.
      assert.ok(
        (await ownersOf(target, "app")).every((x) => x.o === "migrator"),
        "every object owned by the target user",
      );
      const noPassword = await query<{ r: string }>(
        target,
        "postgres",
        "SELECT rolname AS r FROM pg_authid WHERE rolname IN ('app_writer', 'reader') AND rolpassword IS NULL ORDER BY 1",
      );
      assert.deepEqual(
        noPassword.map((x) => x.r),
        ["app_writer", "reader"],
      );
    });
  },
);

test(
  "roles joined by a coordinator that was killed are left by revert-settings, and the resumed run finishes",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async ({ source, target, home }) => {
      await seed(source, false);
      await psqlExec(source, "postgres", `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}' IN ROLE pg_read_all_data`);
      await psqlExec(target, "postgres", `CREATE ROLE migrator LOGIN PASSWORD '${MIGRATOR_PW}' CREATEDB CREATEROLE`);
      const memberships = async () =>
        (
          await query<{ r: string }>(
            target,
            "postgres",
            "SELECT b.rolname AS r FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member JOIN pg_roles b ON b.oid = m.roleid WHERE a.rolname = 'migrator' ORDER BY 1",
          )
        ).map((x) => x.r);

      const live = startCli(args(source, target), env(home));
      await live.waitFor(/joined \d+ migrated roles? for the run/);
      live.child.kill("SIGKILL");
      await live.result;
      assert.deepEqual(
        await memberships(),
        ["app_owner", "app_writer", "reader"],
        "the dead run's memberships are still there",
      );

      const revert = await runCli(
        ["revert-settings", "--to-host", target.host, "--to-port", String(target.port), "--to-user", "migrator"],
        env(home),
      );
      assert.equal(revert.exitCode, 0, revert.stderr);
      assert.match(revert.stderr, /left the 3 roles joined for run/);
      assert.deepEqual(await memberships(), []);

      const r = await runCli(args(source, target), env(home));
      assert.equal(r.exitCode, 0, r.stderr);
      assert.match(r.stderr, /resuming run/);
      for (const db of ["app", "legacy"])
        assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), `row counts of ${db}`);
      assert.deepEqual(await memberships(), [], "left again at the end of the resumed run");
    });
  },
);
