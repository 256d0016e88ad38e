// Names are just names: databases, schemas, tables, columns and roles named with quotes, backslashes, spaces,
// dots, NATS wildcards, percent signs, newlines, unicode and SQL migrate exactly, and a canary table that a
// name interpolated anywhere into SQL, a subject, a path or a shell line would drop stays on both servers.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import pg from "pg";
import { readReport, query, runCli, cliEnv, serverArgs, databasesOf, tableCounts } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import type { LocalCluster } from "../../demo/cluster.js";

const HOSTILE = [
  `q"uote`,
  `'single'`,
  `back\\slash`,
  `sp ace`,
  `do.t`,
  `st*ar`,
  `gt>`,
  `per%cent`,
  `new\nline`,
  `ünï 数据 ✓`,
  `x"; DROP TABLE canary; --`,
  `$(touch /tmp/pgm-pwned)`,
];

const ident = (name: string) => pg.escapeIdentifier(name);
const literal = (value: string) => pg.escapeLiteral(value);

async function exec(c: LocalCluster, db: string, sql: string): Promise<void> {
  const client = new pg.Client({ host: c.host, port: c.port, user: c.user, password: c.password, database: db });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

async function canaryOf(c: LocalCluster): Promise<string[]> {
  return (await query<{ note: string }>(c, "postgres", "SELECT note FROM canary ORDER BY note")).map((r) => r.note);
}

for (const via of ["volume", "stream"] as const)
  test(
    `hostile database, schema, table, column and role names migrate exactly; a canary on both servers survives (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(async ({ source, target, home }) => {
        for (const c of [source, target])
          await exec(c, "postgres", "CREATE TABLE canary (note text); INSERT INTO canary VALUES ('alive')");
        // Every name as a role (one owns its database, all get a grant), as a database, and in every database as
        // a schema, a table in it and a column of it.
        for (const name of HOSTILE) await exec(source, "postgres", `CREATE ROLE ${ident(name)} LOGIN`);
        for (const [i, name] of HOSTILE.entries()) {
          await exec(source, "postgres", `CREATE DATABASE ${ident(name)} OWNER ${ident(name)}`);
          const schema = ident(HOSTILE[(i + 1) % HOSTILE.length]!);
          const table = `${schema}.${ident(HOSTILE[(i + 2) % HOSTILE.length]!)}`;
          const columns = HOSTILE.map((c) => `${ident(c)} text`).join(", ");
          await exec(
            source,
            name,
            `CREATE TABLE canary (note text); INSERT INTO canary VALUES ('alive in ' || ${literal(name)});
         CREATE SCHEMA ${schema} AUTHORIZATION ${ident(name)};
         CREATE TABLE ${table} (id int PRIMARY KEY, ${columns});
         INSERT INTO ${table} SELECT g, ${HOSTILE.map((c) => `${literal(c)} || g`).join(", ")} FROM generate_series(1, ${10 + i}) g;
         CREATE INDEX ON ${table} (${ident(HOSTILE[(i + 3) % HOSTILE.length]!)});
         GRANT SELECT ON ${table} TO ${HOSTILE.map(ident).join(", ")};
         COMMENT ON TABLE ${table} IS ${literal(name)};`,
          );
        }
        // One more database, left out by a pattern; a hostile pattern that matches nothing excludes nothing.
        await exec(source, "postgres", "CREATE DATABASE left_out_1");
        const sourceDbs = await databasesOf(source);
        assert.deepEqual([...sourceDbs].sort(), [...HOSTILE, "left_out_1"].sort());

        const r = await runCli(
          // The canaries make both "postgres" databases hold a user object: the source's stays out of this run.
          [
            ...serverArgs(source, target),
            "--workers",
            "2",
            "--exclude-db",
            "left_out_?",
            "--exclude-db",
            `x"; DROP TABLE canary; --*zz`,
            "--exclude-db",
            "postgres",
            "--via",
            via,
          ],
          cliEnv(home, source, target),
        );
        assert.equal(r.exitCode, 0, r.stderr);
        assert.match(
          r.stderr,
          /found 12 databases to migrate on the source \(2 left out: ("postgres", "left_out_1"|"left_out_1", "postgres")\)/,
        );

        assert.deepEqual(await canaryOf(source), ["alive"], "source canary");
        assert.deepEqual(await canaryOf(target), ["alive"], "target canary");
        assert.deepEqual([...(await databasesOf(target))].sort(), [...HOSTILE].sort());
        for (const db of HOSTILE) {
          const counts = await tableCounts(source, db);
          assert.equal(Object.keys(counts).length, 2, `${JSON.stringify(db)}: canary and one hostile table`);
          assert.deepEqual(await tableCounts(target, db), counts, `row counts of ${JSON.stringify(db)}`);
          const owner = await query<{ o: string }>(
            target,
            "postgres",
            "SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = $1",
            [db],
          );
          assert.equal(owner[0]?.o, db, `owner of ${JSON.stringify(db)}`);
          const cols = await query<{ n: string }>(
            target,
            db,
            "SELECT count(*) AS n FROM information_schema.columns WHERE column_name = ANY($1)",
            [HOSTILE],
          );
          assert.equal(Number(cols[0]!.n), HOSTILE.length, `hostile columns in ${JSON.stringify(db)}`);
        }
        const roles = await query<{ rolname: string }>(
          target,
          "postgres",
          "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)",
          [HOSTILE],
        );
        assert.equal(roles.length, HOSTILE.length, "every hostile role on the target");
        const report = await readReport(home, r.stderr);
        assert.deepEqual(
          report.skipped.find((x) => x.name === "left_out_1"),
          { name: "left_out_1", reason: 'excluded by --exclude-db "left_out_?"' },
        );
        assert.deepEqual(report.skipped.map((x) => x.name).sort(), ["left_out_1", "postgres"]);
        assert.deepEqual(
          report.databases.map((d) => d.name).sort(),
          [...HOSTILE].sort(),
          "the report names each database as it is",
        );
        for (const d of report.databases) assert.equal(d.verified, true, `${JSON.stringify(d.name)} verified`);
        assert.equal(existsSync("/tmp/pgm-pwned"), false, "no name reached a shell");
      });
    },
  );
