// restore: pg_restore -j --exit-on-error into the database the coordinator created, then ANALYZE (statistics
// are not in dumps, and autovacuum may be off). A retry drops and recreates that database first, so a
// half-finished attempt can never leave duplicate rows.
import { join } from "node:path";
import { connect, withClient } from "../shared/pg/connect.js";
import { createDatabaseSql, dropDatabaseSql } from "../shared/pg/create.js";
import { dbnameArg } from "../shared/pg/conninfo.js";
import { literal } from "../shared/pg/quote.js";
import { runTool } from "../shared/tools.js";
import { PermanentJobError, serverFor, type Handler } from "./context.js";
import { readManifest } from "./dump.js";

const PROGRESS_EVERY_MS = 2000;

export const restore: Handler<"restore"> = async (job, run, ctx) => {
  const dir = join(ctx.dumpRoot, job.dumpPath);
  const manifest = await readManifest(dir).catch((err: unknown) => {
    throw new PermanentJobError(`the dump of ${JSON.stringify(job.db.name)} at ${dir} has no valid manifest`, { cause: err });
  });
  const server = serverFor("target", job.target, ctx);

  if (job.recreate || run.attempt > 1) {
    await withClient(server, job.maintenanceDb, async (c) => {
      const { rows } = await c.query<{ n: number }>("SELECT current_setting('server_version_num')::int AS n");
      await c.query(dropDatabaseSql(job.db.name, rows[0]!.n >= 130000));
      await c.query(createDatabaseSql(job.db.name, job.create));
    }, run.signal);
    run.log.info({ attempt: run.attempt }, "recreated the database before restoring again");
  }

  const progress = startSizeProgress(server, job.maintenanceDb, job.db.name, manifest.bytes, run.progress);
  const started = Date.now();
  try {
    await runTool(ctx.tools, "pg_restore", [`--jobs=${job.jobs}`, "--exit-on-error", dbnameArg(job.db.name), dir], {
      conn: server,
      signal: run.signal,
      appName: "pg-migrate pg_restore",
    });
  } finally {
    progress.stop();
  }
  const restoreMs = Date.now() - started;

  const analyzeStarted = Date.now();
  await withClient(server, job.db.name, (c) => c.query("ANALYZE"), run.signal);
  return { kind: "restore", restoreMs, analyzeMs: Date.now() - analyzeStarted };
};

/** The target database's size while pg_restore fills it: a rough but honest progress figure. */
function startSizeProgress(
  server: ReturnType<typeof serverFor>,
  maintenanceDb: string,
  database: string,
  dumpBytes: number,
  report: (bytes: number, total: number | null) => void,
): { stop(): void } {
  let stopped = false;
  // Connect on the first tick only: a small database is restored before it comes.
  let clientP: Promise<Awaited<ReturnType<typeof connect>> | undefined> | undefined;
  const timer = setInterval(() => {
    clientP ??= connect(server, maintenanceDb, "pg-migrate progress").catch(() => undefined);
    void clientP.then(async (c) => {
      if (!c || stopped) return;
      const { rows } = await c.query<{ n: string }>(`SELECT pg_database_size(${literal(database)}) AS n`).catch(() => ({ rows: [] }));
      if (rows[0]) report(Number(rows[0].n), dumpBytes);
    });
  }, PROGRESS_EVERY_MS);
  return {
    stop() {
      stopped = true;
      clearInterval(timer);
      void clientP?.then((c) => c?.end().catch(() => undefined));
    },
  };
}
