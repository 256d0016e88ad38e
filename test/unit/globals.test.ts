import assert from "node:assert/strict";
import { test } from "node:test";
import {
  adaptForNonSuperuser,
  filterGlobals,
  loginRolesCreated,
  orderRoleGrants,
  redactPasswords,
} from "../../coordinator/globals.js";
import { roleStatementTarget, splitScript } from "../../coordinator/sql-split.js";

const DUMPALL = `--
-- PostgreSQL database cluster dump
--

\\restrict abc123

SET default_transaction_read_only = off;

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:x;y';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:secret';
CREATE ROLE "Mig ""User""";
ALTER ROLE "Mig ""User""" WITH LOGIN;
COMMENT ON ROLE "Mig ""User""" IS 'multi
line; comment';
GRANT app TO postgres GRANTED BY postgres;

\\unrestrict abc123
`;

test("splitScript keeps meta-commands apart and respects quotes across lines", () => {
  const parts = splitScript(DUMPALL);
  assert.deepEqual(
    parts.filter((p) => p.meta).map((p) => p.text),
    ["\\restrict abc123", "\\unrestrict abc123"],
  );
  const comment = parts.find((p) => p.text.startsWith("COMMENT"));
  assert.equal(comment?.text, `COMMENT ON ROLE "Mig ""User""" IS 'multi\nline; comment';`);
  assert.ok(
    parts.some((p) => p.text.includes("PASSWORD 'SCRAM-SHA-256$4096:x;y'")),
    "a ; inside a string does not split",
  );
  const create = parts.find((p) => p.text === "CREATE ROLE app;");
  assert.equal(create?.line, 9);
});

test("roleStatementTarget reads quoted and bare role names", () => {
  assert.equal(roleStatementTarget(`ALTER ROLE "Mig ""User""" WITH LOGIN;`), 'Mig "User"');
  assert.equal(roleStatementTarget("CREATE ROLE Postgres;"), "postgres");
  assert.equal(roleStatementTarget("GRANT app TO postgres;"), undefined);
});

test("filterGlobals removes every statement that creates or alters the migration user, and only those", () => {
  const { parts, removed } = filterGlobals(DUMPALL, "postgres");
  assert.deepEqual(removed, [
    "CREATE ROLE postgres;",
    "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:secret';",
  ]);
  assert.ok(
    parts.some((p) => p.text === "GRANT app TO postgres GRANTED BY postgres;"),
    "memberships stay",
  );
  const quoted = filterGlobals(DUMPALL, 'Mig "User"');
  assert.equal(quoted.removed.length, 3);
});

test("loginRolesCreated lists the login roles a script created, not the existing ones nor NOLOGIN ones", () => {
  const script = `CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "Weird LOGIN name";
ALTER ROLE "Weird LOGIN name" WITH NOSUPERUSER INHERIT NOLOGIN;
CREATE ROLE existing;
ALTER ROLE existing WITH LOGIN;
CREATE ROLE "Q""uoted";
ALTER ROLE "Q""uoted" WITH LOGIN CONNECTION LIMIT 3;
`;
  const parts = splitScript(script);
  assert.deepEqual(loginRolesCreated(parts, new Set(["CREATE ROLE existing;"])), ['Q"uoted', "app"]);
});

test("adaptForNonSuperuser keeps what a CREATEROLE user may set and lists what it leaves out", () => {
  const script = `CREATE ROLE replication;
ALTER ROLE replication WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:a SUPERUSER b' VALID UNTIL '2030-01-01 00:00:00+00';
CREATE ROLE "Repl ""SUPERUSER""";
ALTER ROLE "Repl ""SUPERUSER""" WITH SUPERUSER REPLICATION BYPASSRLS;
GRANT app TO "x y" GRANTED BY postgres;
GRANT app TO other;
`;
  const { parts, notApplied } = adaptForNonSuperuser(splitScript(script));
  assert.deepEqual(
    parts.map((p) => p.text),
    [
      "CREATE ROLE replication;",
      "ALTER ROLE replication WITH INHERIT NOCREATEROLE NOCREATEDB LOGIN PASSWORD 'SCRAM-SHA-256$4096:a SUPERUSER b' VALID UNTIL '2030-01-01 00:00:00+00';",
      'CREATE ROLE "Repl ""SUPERUSER""";',
      'GRANT app TO "x y";',
      "GRANT app TO other;",
    ],
  );
  assert.deepEqual(notApplied, [
    'role "Repl \\"SUPERUSER\\"": SUPERUSER',
    'role "Repl \\"SUPERUSER\\"": REPLICATION',
    'role "Repl \\"SUPERUSER\\"": BYPASSRLS',
    'grantor postgres of GRANT app TO "x y";',
  ]);
});

test("GRANTED BY is cut only where it ends the statement, never inside a quoted role name", () => {
  const { parts, notApplied } = adaptForNonSuperuser(
    splitScript(`GRANT "admin GRANTED BY migrator" TO eve GRANTED BY migrator;\nGRANT app TO "b GRANTED BY c";\n`),
  );
  assert.deepEqual(
    parts.map((p) => p.text),
    ['GRANT "admin GRANTED BY migrator" TO eve;', 'GRANT app TO "b GRANTED BY c";'],
  );
  assert.deepEqual(notApplied, ['grantor migrator of GRANT "admin GRANTED BY migrator" TO eve;']);
});

test("redactPasswords blanks every verifier, and only verifiers", () => {
  assert.equal(
    redactPasswords(`ALTER ROLE "PASSWORD 'x'" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:a''b' VALID UNTIL 'infinity';`),
    `ALTER ROLE "PASSWORD 'x'" WITH LOGIN PASSWORD '(redacted)' VALID UNTIL 'infinity';`,
  );
  assert.equal(redactPasswords("ALTER ROLE app WITH PASSWORD 'md5abc';"), "ALTER ROLE app WITH PASSWORD '(redacted)';");
});

test("loginRolesCreated ignores LOGIN inside a quoted value", () => {
  const parts = splitScript(
    `CREATE ROLE x;\nALTER ROLE x WITH NOLOGIN;\nALTER ROLE x SET search_path TO 'LOGIN here';\n`,
  );
  assert.deepEqual(loginRolesCreated(parts, new Set()), []);
});

test("relocateTablespaces moves only the named tablespaces, quoted names included", async () => {
  const { relocateTablespaces } = await import("../../coordinator/globals.js");
  const parts = splitScript(
    `CREATE TABLESPACE archive_ts OWNER postgres LOCATION '/src/a';\nCREATE TABLESPACE "Cold ""ts""" OWNER app LOCATION '/src/it''s';\nCREATE TABLESPACE other OWNER postgres LOCATION '/src/o';\n`,
  );
  const moved = relocateTablespaces(
    parts,
    new Map([
      ["archive_ts", "/tgt/a"],
      ['Cold "ts"', "/tgt/o'k"],
    ]),
  );
  assert.deepEqual(
    moved.map((p) => p.text),
    [
      "CREATE TABLESPACE archive_ts OWNER postgres LOCATION '/tgt/a';",
      `CREATE TABLESPACE "Cold ""ts""" OWNER app LOCATION '/tgt/o''k';`,
      "CREATE TABLESPACE other OWNER postgres LOCATION '/src/o';",
    ],
  );
});

test("planTablespaces says what becomes of each tablespace, and refuses a location for one the source lacks", async () => {
  const { planTablespaces } = await import("../../coordinator/discovery.js");
  const src = [
    { name: "a", owner: "postgres", location: "/s/a" },
    { name: "b", owner: "postgres", location: "/s/b" },
    { name: "c", owner: "postgres", location: "/s/c" },
  ];
  const p = planTablespaces(src, new Set(["c"]), { none: false, locations: new Map([["a", "/t/a"]]) });
  assert.deepEqual([...p.relocate], [["a", "/t/a"]]);
  assert.match(p.lines[0]!, /"a" \(\/s\/a on the source\): created at \/t\/a on the target/);
  assert.match(p.lines[1]!, /"b" .*created at the same path on the target/);
  assert.match(p.lines[2]!, /"c" .*already on the target/);
  assert.match(
    planTablespaces(src, new Set(), { none: true, locations: new Map() }).lines[0]!,
    /not created \(--no-tablespaces\)/,
  );
  assert.throws(
    () => planTablespaces(src, new Set(), { none: false, locations: new Map([["zz", "/t"]]) }),
    /--tablespace-location "zz": the source has no such tablespace/,
  );
});

test("orderRoleGrants: a grant GRANTED BY a role follows that role's own ADMIN grant (a 16+ target checks it), the rest stays", () => {
  const parts = [
    "CREATE ROLE team_lead;",
    'GRANT app_group TO auditor WITH ADMIN OPTION GRANTED BY "team lead";',
    "GRANT other TO x GRANTED BY postgres;",
    'GRANT app_group TO "team lead" WITH ADMIN OPTION GRANTED BY postgres;',
    "GRANT SELECT ON TABLE t TO auditor;",
  ].map((text, i) => ({ text, meta: false, line: i + 1 }));
  assert.deepEqual(
    orderRoleGrants(parts).map((p) => p.text),
    [
      "CREATE ROLE team_lead;",
      "GRANT other TO x GRANTED BY postgres;",
      'GRANT app_group TO "team lead" WITH ADMIN OPTION GRANTED BY postgres;',
      'GRANT app_group TO auditor WITH ADMIN OPTION GRANTED BY "team lead";',
      "GRANT SELECT ON TABLE t TO auditor;",
    ],
  );
});
