// A database that uses an extension the target has not installed fails before anything is created for it, by
// name, and the other databases migrate (the extension exists only on the source: test/helpers/extension.ts).
import assert from "node:assert/strict";
import { test } from "node:test";
import { psqlExec } from "../../demo/cluster.js";
import { extensionOnlyOnSource } from "../helpers/extension.js";
import { demoSql } from "../../demo/generate.js";
import { cliEnv, databasesOf, readReport, runCli, serverArgs, tableCounts } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";

test(
  "a database using an extension the target lacks fails first, by name; one that refuses connections is named as left out; the others migrate",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", demoSql());
        const ext = await extensionOnlyOnSource(source, "inventory");

        await psqlExec(source, "postgres", "CREATE DATABASE closed_db ALLOW_CONNECTIONS false");

        const r = await runCli(serverArgs(source, target), cliEnv(home, source, target));
        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(
          r.stderr,
          new RegExp(
            `"inventory" uses extension\\(s\\) "${ext}" that the target has not installed; that database fails before anything is created for it, the others go on`,
          ),
        );
        assert.ok(!(await databasesOf(target)).includes("inventory"), "nothing created for it");
        for (const db of ["shop", "analytics"])
          assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), db);
        const report = await readReport(home, r.stderr);
        const inv = report.databases.find((d) => d.name === "inventory")!;
        assert.equal(inv.phase, "failed");
        assert.match(
          inv.error ?? "",
          new RegExp(`"${ext}" that the target has not installed: install it on the target host`),
        );
        // Never silently skipped: a database pg_dump cannot connect to is named, on the terminal and in the report.
        assert.match(
          r.stderr,
          /source database "closed_db" does not allow connections \(ALLOW_CONNECTIONS false\), so pg_dump cannot read it/,
        );
        assert.ok(!(await databasesOf(target)).includes("closed_db"));
        assert.match(report.skipped.find((x) => x.name === "closed_db")?.reason ?? "", /ALLOW_CONNECTIONS false/);
      },
      { nats: false },
    );
  },
);
