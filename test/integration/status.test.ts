// `pg-migrate status --json` during a run shows the live workers and the databases in flight; `watch --json`
// follows the run to its end; afterwards every database shows verified, and the summary table on stdout says
// what the JSON report says.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { Ajv2020 } from "ajv/dist/2020.js";
import pg from "pg";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { cliEnv, readReport, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";

interface Snapshot {
  run: { runId: string; status: string };
  coordinator: string;
  databases: { name: string; phase: string; verifiedRows: number | null }[];
  workers: { id: string }[] | null;
}

for (const via of ["volume", "stream"] as const)
  test(
    `status and watch show a run as it goes and as it ended; the summary table agrees with the report (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(
        async ({ source, target, home }) => {
          await psqlExec(source, "postgres", demoSql());
          const env = cliEnv(home, source, target);
          // A lock on one of shop's tables holds the run while we look at it.
          const blocker = new pg.Client({
            host: source.host,
            port: source.port,
            user: source.user,
            password: source.password,
            database: "shop",
          });
          await blocker.connect();
          await blocker.query("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
          let run: ReturnType<typeof startCli>;
          let watch: ReturnType<typeof startCli>;
          try {
            run = startCli(
              [
                ...serverArgs(source, target),
                "--workers",
                "2",
                "--report",
                join(home, "elsewhere", "report.json"),
                "--log-level",
                "info",
                "--via",
                via,
              ],
              env,
            );
            const runId = (await run.waitFor(/run (\S+): logs in/))[1]!;
            // Held by the lock: its dump; streamed, the planning of its slices in its snapshot (the tables' sizes
            // wait on the lock as pg_dump would), while the other three go through.
            const held = via === "volume" ? "dumping" : "copying";
            if (via === "volume") await run.waitFor(/dump "shop" started/);
            else await run.waitFor(/^pg-migrate: verify .* done: /m, 3);

            const during = await runCli(["status", "--json"], env);
            assert.equal(during.exitCode, 0, during.stderr);
            const s = JSON.parse(during.stdout) as Snapshot;
            assert.equal(s.run.runId, runId);
            assert.equal(s.run.status, "running");
            assert.equal(s.coordinator, "alive");
            assert.equal(s.workers?.length, 2, `live workers: ${JSON.stringify(s.workers)}`);
            assert.equal(s.databases.find((d) => d.name === "shop")?.phase, held);
            assert.deepEqual(s.databases.map((d) => d.name).sort(), [...demoDatabases].sort());

            const table = await runCli(["status", runId], env);
            assert.equal(table.exitCode, 0, table.stderr);
            assert.match(table.stdout, new RegExp(`│ shop\\s+│ ${held}\\s+│`));

            watch = startCli(["watch", "--json"], env);
          } finally {
            await blocker.query("COMMIT").catch(() => undefined);
            await blocker.end();
          }
          const r = await run.result;
          assert.equal(r.exitCode, 0, r.stderr);
          const w = await watch.result;
          assert.equal(w.exitCode, 0, w.stderr);
          const lines = w.stdout
            .trim()
            .split("\n")
            .map((l) => JSON.parse(l) as Snapshot);
          assert.equal(lines.at(-1)!.run.status, "finished", "watch follows the run to its end");

          const after = JSON.parse((await runCli(["status", "--json"], env)).stdout) as Snapshot;
          assert.equal(after.run.status, "finished");
          for (const d of after.databases) assert.equal(d.phase, "done", d.name);

          // The JSON report matches its published schema, and the summary table (stdout) agrees with it.
          const report = await readReport(home, r.stderr);
          const schema = JSON.parse(
            readFileSync(fileURLToPath(new URL("../../../docs/schemas/report.schema.json", import.meta.url)), "utf8"),
          ) as object;
          const validate = new Ajv2020({ strict: false }).compile(schema);
          assert.ok(validate(report), JSON.stringify(validate.errors));
          assert.deepEqual(
            JSON.parse(readFileSync(join(home, "elsewhere", "report.json"), "utf8")),
            report,
            "--report wrote the same report",
          );
          // --log-level info: the run's log lines on stderr too, scoped by run.
          assert.ok(
            r.stderr
              .split("\n")
              .some((l) => l.startsWith("{") && (JSON.parse(l) as { runId?: string }).runId === report.runId),
            "log lines on stderr",
          );
          for (const d of report.databases as unknown as {
            name: string;
            tables: number;
            verifiedRows: number;
            verified: boolean;
          }[]) {
            const row = r.stdout.split("\n").find((l) => l.startsWith(`│ ${d.name} `));
            assert.ok(row, `${d.name} in the summary`);
            const cells = row.split("│").map((c) => c.trim());
            assert.equal(Number(cells[6]), d.tables, `${d.name} tables`);
            assert.equal(Number(cells[7]), d.verifiedRows, `${d.name} rows`);
            assert.equal(cells[8], d.verified ? "yes" : "FAILED");
          }
        },
        { nats: false },
      );
    },
  );
