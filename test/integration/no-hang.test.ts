// Every error path exits: a query that fails after the connection was made — in the preflight, in the discovery, or once the
// embedded broker and the workers are running — ends the run with one error line, a non-zero code, nothing it
// started left running, and the process gone within seconds of that line (runCli measures it).
import assert from "node:assert/strict";
import { test } from "node:test";
import { psqlExec } from "../../demo/cluster.js";
import { errorLines, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertNoLeftovers } from "../helpers/procs.js";

const READER_PW = "Reader-Pw-5150";

for (const c of [
  {
    name: "a preflight query refused after connecting (pg_roles revoked)",
    revoke: "REVOKE SELECT ON pg_catalog.pg_roles FROM PUBLIC",
    error: /permission denied for view pg_roles/,
    plan: true,
  },
  {
    name: "a function revoked, in the discovery (pg_database_size)",
    revoke: "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_database_size(oid) FROM PUBLIC",
    error: /permission denied for function pg_database_size/,
    plan: true,
  },
  {
    name: "a query refused once the broker and the workers run (pg_subscription revoked)",
    revoke: "REVOKE SELECT ON pg_catalog.pg_subscription FROM PUBLIC",
    error: /permission denied for (table|relation) pg_subscription/,
  },
]) {
  test(`${c.name}: one error line, non-zero exit within 5 s, nothing left running`, { timeout: 180_000 }, async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(
          source,
          "postgres",
          `CREATE ROLE reader LOGIN PASSWORD '${READER_PW}'; CREATE DATABASE small; ${c.revoke};`,
        );
        // Readable by the source user: the preflight checks that of every table pg_dump reads.
        await psqlExec(
          source,
          "small",
          "CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO reader;",
        );
        const started = Date.now();
        const r = await runCli(
          [...serverArgs(source, target), "--from-user", "reader", "--no-role-passwords", "--workers", "1"],
          { HOME: home, PGMIGRATE_FROM_PASS: READER_PW, PGMIGRATE_TO_PASS: target.password },
          60_000,
        );
        assert.notEqual(r.exitCode, 0, r.stderr);
        const errors = errorLines(r.stderr);
        assert.equal(errors.length, 1, r.stderr);
        assert.match(errors[0]!, c.error);
        assert.ok(Date.now() - started < 30_000, `the run took ${Date.now() - started} ms`);
        await assertNoLeftovers(home, [source.port, target.port], 5_000);
        if (c.plan) {
          // plan reads the same catalogs: the same one line, and it exits too (runCli measures it).
          const p = await runCli(
            ["plan", ...serverArgs(source, target), "--from-user", "reader", "--no-role-passwords"],
            { HOME: home, PGMIGRATE_FROM_PASS: READER_PW, PGMIGRATE_TO_PASS: target.password },
            60_000,
          );
          assert.notEqual(p.exitCode, 0, p.stdout + p.stderr);
          assert.deepEqual(errorLines(p.stderr).length, 1, p.stderr);
          assert.match(errorLines(p.stderr)[0]!, c.error);
        }
        // Nothing changed on the target.
        assert.doesNotMatch(r.stderr, /fast-restore mode \(/);
      },
      { nats: false },
    );
  });
}
