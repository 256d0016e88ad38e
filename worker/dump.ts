// dump: pg_dump -Fd -j into a fresh attempt directory, inside a snapshot this worker exported, with every
// table counted in that same snapshot. Only a manifest written after pg_dump exited 0 marks the dump complete.
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { CONTRACT_VERSION, decodeManifest, type Manifest } from "../shared/contracts/messages.js";
import { connect, endOnAbort } from "../shared/pg/connect.js";
import { contentsOf, hasDatabaseProperties } from "../shared/pg/catalog.js";
import { dbnameArg } from "../shared/pg/conninfo.js";
import { errorMessage, PermanentJobError, ToolError } from "../shared/errors.js";
import { runTool } from "../shared/tools.js";
import { chooseCompression, networkFsOf, type Compression } from "../shared/compression.js";
import { serverFor, type Handler } from "./context.js";
import { directorySize, ensurePrivateDir, removeTree, writeFileAtomic } from "./files.js";

export const MANIFEST_FILE = "manifest.json";
const PROGRESS_EVERY_MS = 2000;

export const dump: Handler<"dump"> = async (job, run, ctx) => {
  const jobDir = join(ctx.dumpRoot, job.dumpPath);
  const attemptDir = join(jobDir, `attempt-${run.attempt}`);
  await ensurePrivateDir(jobDir);
  await removeIncompleteAttempts(jobDir);

  let compression: Compression;
  try {
    compression = chooseCompression(job.compress, ctx.tools.major, await networkFsOf(ctx.dumpRoot));
  } catch (err) {
    throw new PermanentJobError(errorMessage(err));
  }
  run.log.info({ compress: compression.arg, why: compression.why }, "dump compression");

  const server = serverFor("source", job.source, ctx);
  const client = await connect(server, job.db.name, "pg-migrate dump");
  const unblock = endOnAbort(client, run.signal);
  const progress = setInterval(() => {
    void directorySize(attemptDir).then((bytes) => run.progress({ bytes, totalBytes: job.estimatedBytes ?? null }));
  }, PROGRESS_EVERY_MS);
  try {
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const { rows } = await client.query<{ id: string }>("SELECT pg_export_snapshot() AS id");
    const snapshot = rows[0]!.id;
    const { rows: ver } = await client.query<{ v: string }>("SELECT current_setting('server_version') AS v");

    const dumping = runTool(
      ctx.tools,
      "pg_dump",
      // --create: the dump also records the database's own properties, applied after verification.
      [
        "--format=directory",
        "--create",
        `--jobs=${job.jobs}`,
        `--snapshot=${snapshot}`,
        `--compress=${compression.arg}`,
        `--file=${attemptDir}`,
        dbnameArg(job.db.name),
      ],
      { conn: server, signal: run.signal, appName: "pg-migrate pg_dump" },
    );
    // Count while pg_dump runs: same snapshot, so the counts describe exactly what is being dumped.
    const counting = (async () => ({
      ...(await contentsOf(client, { checksum: job.checksum ?? false })),
      databaseProperties: await hasDatabaseProperties(client),
    }))();
    // Settle both before deciding: a failed count must not leave pg_dump running unobserved.
    const [dumped, counted] = await Promise.allSettled([dumping, counting]);
    // A failed count comes first: it ends the transaction that holds the snapshot, so pg_dump's own error then
    // is only "could not import the requested snapshot".
    if (counted.status === "rejected") throw countingFailed(counted.reason, job.db.name);
    if (dumped.status === "rejected") throw await volumeFull(dumped.reason, ctx.dumpRoot, attemptDir, job.db.name);
    await client.query("COMMIT");

    const bytes = await directorySize(attemptDir);
    const manifest: Manifest = {
      v: CONTRACT_VERSION,
      runId: job.runId,
      jobId: job.jobId,
      db: job.db,
      completedAt: new Date().toISOString(),
      pgDumpVersion: ctx.tools.version,
      serverVersion: ver[0]!.v,
      bytes,
      compression: compression.arg,
      ...counted.value,
    };
    await writeFileAtomic(join(attemptDir, MANIFEST_FILE), JSON.stringify(manifest)).catch(async (err: unknown) => {
      throw await volumeFull(err, ctx.dumpRoot, attemptDir, job.db.name);
    });
    return {
      kind: "dump",
      attemptPath: relative(ctx.dumpRoot, attemptDir),
      bytes,
      compression: compression.arg,
      tables: manifest.tables.length,
      rows: manifest.tables.reduce((sum, t) => sum + t.rows, 0),
    };
  } finally {
    clearInterval(progress);
    unblock();
    await client.end().catch(() => undefined);
  }
};

/** Why counting in the snapshot failed, said as the cause it is; a table the source user may not read is for good. */
function countingFailed(err: unknown, db: string): unknown {
  const message = `counting the rows of ${JSON.stringify(db)} in pg_dump's snapshot failed: ${errorMessage(err)}`;
  if ((err as { code?: string }).code === "42501") {
    return new PermanentJobError(
      `${message} (the source user must be able to read every table, as pg_dump must: grant it SELECT, or migrate as a role that can read everything)`,
      { cause: err },
    );
  }
  // The driver's code stays readable: a server that went away during the count is waited for, not a failed attempt.
  return Object.assign(new Error(message, { cause: err }), { code: (err as { code?: string }).code });
}

/**
 * A full dump volume is not something a retry mends while the other dumps keep writing to it: the job fails at
 * once with a sentence naming the volume, and the partial attempt is removed to give the space back.
 */
async function volumeFull(err: unknown, dumpRoot: string, attemptDir: string, db: string): Promise<unknown> {
  const text =
    err instanceof ToolError
      ? err.stderrTail
      : (err as NodeJS.ErrnoException)?.code === "ENOSPC"
        ? "No space left on device"
        : "";
  if (!/No space left on device|Disk quota exceeded/i.test(text)) return err;
  await removeTree(attemptDir);
  return new PermanentJobError(
    `the dump volume ${dumpRoot} (--dump-root) is full: no space left while dumping ${JSON.stringify(db)}; free space there or use a larger volume, then run the same command again`,
    { cause: err },
  );
}

/** A redelivered dump starts clean: earlier attempts without a manifest are partial and removed. */
async function removeIncompleteAttempts(jobDir: string): Promise<void> {
  const entries = await readdir(jobDir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory() || !e.name.startsWith("attempt-")) continue;
    const dir = join(jobDir, e.name);
    const complete = await readFile(join(dir, MANIFEST_FILE), "utf8").then(
      () => true,
      () => false,
    );
    if (!complete) await removeTree(dir);
  }
}

export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST_FILE);
  return decodeManifest(await readFile(path, "utf8"), path);
}
