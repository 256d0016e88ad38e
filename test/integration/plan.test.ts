// `pg-migrate plan` / `--dry-run`: reads both servers, prints what a run would do, and changes nothing.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import type { LocalCluster } from "../../demo/cluster.js";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { cliEnv, query, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";

/** What a run would change: the databases (with their ACLs), the roles (with their attributes), every setting. */
async function catalog(c: LocalCluster): Promise<unknown> {
  return {
    databases: await query(
      c,
      "postgres",
      "SELECT datname, datdba, datacl::text, datconnlimit FROM pg_database ORDER BY datname",
    ),
    roles: await query(
      c,
      "postgres",
      "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolconnlimit, rolpassword FROM pg_authid ORDER BY rolname",
    ),
    settings: await query(c, "postgres", "SELECT name, setting, source FROM pg_settings ORDER BY name"),
    autoConf: await query(
      c,
      "postgres",
      "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' ORDER BY seqno",
    ),
  };
}

test(
  "plan changes nothing, prints the databases, the settings it would change and the connection estimate",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", demoSql());
        const before = { source: await catalog(source), target: await catalog(target) };
        const args = [...serverArgs(source, target), "-m", "3", "-j", "2", "--fast-restore", "full"];

        for (const invocation of [
          ["plan", ...args],
          [...args, "--dry-run"],
        ]) {
          const r = await runCli(invocation, cliEnv(home, source, target));
          assert.equal(r.exitCode, 0, r.stderr + r.stdout);
          for (const db of demoDatabases) assert.ok(r.stdout.includes(db), `${db} listed`);
          assert.match(r.stdout, /fsync\s+│ on\s+│ off/);
          assert.match(r.stdout, /-j 2 -m 3, max-parallel × \(jobs \+ 2\) = 3 × \(2 \+ 2\) on each server/);
          const [conn] = await query<{ max: string; reserved: string }>(
            source,
            "postgres",
            "SELECT current_setting('max_connections') AS max, current_setting('superuser_reserved_connections') AS reserved",
          );
          const row = /│ source\s+│ (\d+)\s+│ (\d+)\s+│ (-?\d+)/.exec(r.stdout);
          assert.ok(row, r.stdout);
          assert.equal(Number(row[1]), 3 * (2 + 2), "what a run needs follows the formula");
          const free = Number(row[2]);
          // Free now: max_connections less the reserved slots and the sessions open (plan's own among them).
          assert.ok(free > 0 && free < Number(conn!.max) - Number(conn!.reserved), `free ${free}`);
          assert.equal(Number(row[3]), free - 12);
          assert.match(r.stdout, /nothing was changed/);
        }

        assert.deepEqual(
          { source: await catalog(source), target: await catalog(target) },
          before,
          "both catalogs as they were",
        );
        assert.equal(existsSync(join(home, "pg_dumps")), false, "no dump directory created");
        assert.deepEqual(await readdir(home), [], "nothing written under HOME");

        // A refusal the run would meet is named, with the preflight's exit code.
        await psqlExec(target, "postgres", "CREATE DATABASE analytics");
        const refused = await runCli(["plan", ...args], cliEnv(home, source, target));
        assert.equal(refused.exitCode, 3, refused.stdout);
        assert.match(refused.stdout, /a run would be refused: the target already has database\(s\) "analytics"/);
      },
      { nats: false },
    );
  },
);
