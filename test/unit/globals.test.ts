import assert from "node:assert/strict";
import { test } from "node:test";
import { filterGlobals } from "../../coordinator/globals.js";
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
  assert.deepEqual(parts.filter((p) => p.meta).map((p) => p.text), ["\\restrict abc123", "\\unrestrict abc123"]);
  const comment = parts.find((p) => p.text.startsWith("COMMENT"));
  assert.equal(comment?.text, `COMMENT ON ROLE "Mig ""User""" IS 'multi\nline; comment';`);
  assert.ok(parts.some((p) => p.text.includes("PASSWORD 'SCRAM-SHA-256$4096:x;y'")), "a ; inside a string does not split");
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
  assert.ok(parts.some((p) => p.text === "GRANT app TO postgres GRANTED BY postgres;"), "memberships stay");
  const quoted = filterGlobals(DUMPALL, 'Mig "User"');
  assert.equal(quoted.removed.length, 3);
});
