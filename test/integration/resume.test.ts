// In both paths (--via volume and stream), Ctrl-C mid-run puts the target's settings back, stops the local workers and their tools, and exits 130; the
// same command again resumes and does not redo the databases finished before the interruption.
import assert from "node:assert/strict";
import { test } from "node:test";
import { RUN_STEPS } from "../../shared/contracts/phases.js";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import {
  assertStepsTimed,
  BIN,
  cliEnv,
  databasesOf,
  readReport,
  runCli,
  serverArgs,
  settingsOf,
  tableCounts,
} from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertNoLeftovers } from "../helpers/procs.js";

for (const via of ["volume", "stream"] as const)
  test(
    `SIGINT reverts the target; running the same command again resumes (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(
        async ({ source, target, home }) => {
          await psqlExec(source, "postgres", demoSql());
          const before = await settingsOf(target);
          const args = [
            ...serverArgs(source, target),
            "-m",
            "1",
            "--workers",
            "1",
            "--fast-restore",
            "full",
            "--via",
            via,
          ];
          const env = cliEnv(home, source, target);

          const first = execa(process.execPath, [BIN, ...args], { env, reject: false });
          let stderr = "";
          const firstDone = new Promise<string>((resolve) => {
            first.stderr!.on("data", (b: Buffer) => {
              stderr += b.toString();
              const m = /verify "([^"]+)" done/.exec(stderr);
              if (m) resolve(m[1]!);
            });
          });
          const doneBeforeKill = await firstDone;
          first.kill("SIGINT");
          const r1 = await first;
          assert.equal(r1.exitCode, 130, String(r1.stderr));
          assert.match(String(r1.stderr), /run the same command again to resume/);
          assert.deepEqual(await settingsOf(target), before, "settings reverted on SIGINT");
          await assertNoLeftovers(home, [source.port, target.port]);
          const finished = [...String(r1.stderr).matchAll(/verify "([^"]+)" done/g)].map((m) => m[1]!);
          assert.ok(finished.includes(doneBeforeKill));

          const r2 = await runCli(args, env);
          assert.equal(r2.exitCode, 0, r2.stderr);
          assert.match(r2.stderr, /resuming run /);
          // Streamed, a database's first job is its schema, or the whole of it in one job.
          for (const db of finished)
            for (const kind of ["dump", "schema", "whole"])
              assert.ok(!r2.stderr.includes(`${kind} "${db}" started`), `${db} was not copied again`);
          assert.deepEqual(await databasesOf(target), [...demoDatabases].sort());
          for (const db of demoDatabases)
            assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), db);
          assert.deepEqual(await settingsOf(target), before);
          await assertNoLeftovers(home, [source.port, target.port]);
          // Both sessions' steps are in the report: the first stopped in its jobs and still finished (settings back).
          const report = await readReport(home, r2.stderr);
          assertStepsTimed(report, 0, RUN_STEPS);
          assertStepsTimed(report, 1, RUN_STEPS);
          for (const d of report.databases) assert.equal(d.via, via, `${d.name} went the way asked`);
        },
        { nats: false },
      );
    },
  );
