// restore: pg_restore -j --exit-on-error into the database the coordinator created, then ANALYZE (statistics
// are not in dumps, and autovacuum may be off). A retry drops and recreates that database first, so a
// half-finished attempt can never leave duplicate rows.
import { join } from "node:path";
import { connect, withClient } from "../shared/pg/connect.js";
import { analyzeUserTables, userObjectCount } from "../shared/pg/catalog.js";
import { createDatabaseSql, dropDatabaseSql } from "../shared/pg/create.js";
import { dbnameArg } from "../shared/pg/conninfo.js";
import type { JobOf, Progress } from "../shared/contracts/messages.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { PermanentJobError } from "../shared/errors.js";
import { runTool } from "../shared/tools.js";
import { serverFor, type Handler, type JobRun } from "./context.js";
import { readManifest } from "./dump.js";

const PROGRESS_EVERY_MS = 2000;

export const restore: Handler<"restore"> = async (job, run, ctx) => {
  const dir = join(ctx.dumpRoot, job.dumpPath);
  const manifest = await readManifest(dir).catch((err: unknown) => {
    throw new PermanentJobError(`the dump of ${JSON.stringify(job.db.name)} at ${dir} has no valid manifest`, {
      cause: err,
    });
  });
  const server = serverFor("target", job.target, ctx);

  await prepareDatabase(job, run, server);

  const progress = startSizeProgress(server, job.maintenanceDb, job.db.name, job.estimatedBytes ?? null, run.progress);
  const started = Date.now();
  try {
    await runTool(
      ctx.tools,
      "pg_restore",
      [
        `--jobs=${job.jobs}`,
        "--exit-on-error",
        ...(job.noOwner ? ["--no-owner"] : []),
        ...(job.noTablespaces ? ["--no-tablespaces"] : []),
        dbnameArg(job.db.name),
        dir,
      ],
      {
        conn: server,
        signal: run.signal,
        appName: "pg-migrate pg_restore",
      },
    );
  } finally {
    progress.stop();
  }
  const restoreMs = Date.now() - started;

  const analyzeStarted = Date.now();
  await withClient(server, job.db.name, analyzeUserTables, run.signal);
  return { kind: "restore", restoreMs, analyzeMs: Date.now() - analyzeStarted };
};

/**
 * The database the coordinator created, made ready to be restored into: one that was there before the run (the
 * maintenance database) only while it holds no user objects; one this run created is dropped and created again when
 * an earlier attempt or session may have written to it.
 */
export async function prepareDatabase(
  job: Pick<JobOf<"restore">, "db" | "intoExisting" | "recreate" | "maintenanceDb" | "create">,
  run: JobRun,
  server: ServerSpec,
): Promise<void> {
  if (job.intoExisting) {
    // Not ours to drop: restored into only while it holds no user objects (an earlier attempt's, or its own).
    const n = await withClient(server, job.db.name, userObjectCount, run.signal);
    if (n > 0) {
      throw new PermanentJobError(
        `the target's ${JSON.stringify(job.db.name)} database holds ${n} user object(s) (an earlier attempt's, or its own), and pg-migrate restores into it only while it holds none: empty it and run again, or leave it out with --exclude-db`,
      );
    }
  } else if (job.recreate || run.attempt > 1) {
    await withClient(
      server,
      job.maintenanceDb,
      async (c) => {
        const { rows } = await c.query<{ n: number }>("SELECT current_setting('server_version_num')::int AS n");
        await c.query(dropDatabaseSql(job.db.name, rows[0]!.n >= 130000));
        await c.query(createDatabaseSql(job.db.name, job.create));
      },
      run.signal,
    );
    run.log.info({ attempt: run.attempt }, "recreated the database before restoring again");
  }
}

/**
 * While pg_restore fills the database: its size on the target against the dump's size, and what the target
 * itself reports on the COPYs and index builds running in it.
 */
function startSizeProgress(
  server: ReturnType<typeof serverFor>,
  maintenanceDb: string,
  database: string,
  sourceBytes: number | null,
  report: (p: Omit<Progress, "stage">) => void,
): { stop(): void } {
  let stopped = false;
  // Connect on the first tick only: a small database is restored before it comes.
  let clientP: Promise<Awaited<ReturnType<typeof connect>> | undefined> | undefined;
  const timer = setInterval(() => {
    clientP ??= connect(server, maintenanceDb, "pg-migrate progress").catch(() => undefined);
    void clientP.then(async (c) => {
      if (!c || stopped) return;
      const size = await c
        .query<{ size: string }>("SELECT pg_database_size($1) AS size", [database])
        .catch(() => undefined);
      if (!size?.rows[0]) return;
      // pg_stat_progress_copy arrived in PostgreSQL 14: older targets report the size alone.
      const views = await c
        .query<{ copies: string; copied: string; indexes: string; done: string; total: string }>(
          `SELECT (SELECT count(*) FROM pg_stat_progress_copy WHERE datname = $1) AS copies,
                  (SELECT coalesce(sum(bytes_processed), 0) FROM pg_stat_progress_copy WHERE datname = $1) AS copied,
                  (SELECT count(*) FROM pg_stat_progress_create_index WHERE datname = $1) AS indexes,
                  (SELECT coalesce(sum(blocks_done), 0) FROM pg_stat_progress_create_index WHERE datname = $1) AS done,
                  (SELECT coalesce(sum(blocks_total), 0) FROM pg_stat_progress_create_index WHERE datname = $1) AS total`,
          [database],
        )
        .catch(() => undefined);
      const v = views?.rows[0];
      report({
        bytes: Number(size.rows[0].size),
        totalBytes: sourceBytes,
        ...(v
          ? {
              copy: { tables: Number(v.copies), bytes: Number(v.copied) },
              index: { building: Number(v.indexes), blocksDone: Number(v.done), blocksTotal: Number(v.total) },
            }
          : {}),
      });
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
