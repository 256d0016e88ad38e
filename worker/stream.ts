// The streamed path (--via stream): a database moves as a schema step, data slices and a post step, every read of
// the source inside the one snapshot the coordinator's holder session exported. Nothing is shared between workers
// but NATS and the two servers: a worker's dump root holds only its own scratch copy of the schema archive.
//
// schema: pg_dump -Fc of everything but the streamed tables' data (and the large objects), its pre-data restored
//   into the fresh database, and the run's marker table created beside it.
// slice:  per table, COPY … TO STDOUT on the source piped into COPY … FROM STDIN on the target, in one target
//   transaction that also writes the slice's marker row. A whole table is truncated first and loaded with FREEZE.
//   An attempt whose transaction did not commit left nothing behind (it rolled back); one that committed left its
//   marker, and a later attempt of the same slice reports that commit instead of copying again — so a retry never
//   removes or duplicates another attempt's or another part's rows.
// post:   the archive again (same snapshot): the rest of the data section (sequence values, large objects,
//   extension configuration) and post-data with pg_restore -j, the marker schema dropped, ANALYZE, the checks against
//   what the slices counted, then the database's own properties.
import { writeFile } from "node:fs/promises";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { join } from "node:path";
import type pg from "pg";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import type { JobOf, SliceTable, TableCount, TableName, VerifyTable } from "../shared/contracts/messages.js";
import { connect, endOnAbort, withClient, type ServerSpec } from "../shared/pg/connect.js";
import {
  analyzeUserTables,
  countRows,
  hasDatabaseProperties,
  largeObjectCount,
  listTables,
  sequenceValues,
  setChecksumSession,
  type TableInfo,
} from "../shared/pg/catalog.js";
import { dbnameArg } from "../shared/pg/conninfo.js";
import { ident, literal, qualified } from "../shared/pg/quote.js";
import { knownSettings } from "../shared/pg/settings.js";
import { runTool } from "../shared/tools.js";
import { serverFor, type Handler, type JobRun, type WorkerContext } from "./context.js";
import { applyDatabaseProperties } from "./db-properties.js";
import { ensurePrivateDir, removeTree } from "./files.js";
import { prepareDatabase } from "./restore.js";
import { compare } from "./verify.js";

const ARCHIVE = "schema.dump";
/** A large object's own entries in pg_restore --list: the object (BLOB, or BLOB METADATA from 17), its comment, grants, labels. */
const LARGE_OBJECT_ENTRY = /^\d+; \d+ \d+ (BLOB( METADATA)? |(COMMENT|ACL|SECURITY LABEL) - LARGE OBJECTS? )/;
const PROGRESS_EVERY_MS = 2000;

/** The marker table of a database's slices, in the run's own schema on the target database. */
export const markerTable = (markerSchema: string) => `${ident(markerSchema)}.slices`;

export const schema: Handler<"schema"> = async (job, run, ctx) => {
  const started = Date.now();
  const target = serverFor("target", job.target, ctx);
  await prepareDatabase(job, run, target);
  const dir = join(ctx.dumpRoot, job.dumpPath, `schema-${run.attempt}`);
  try {
    const archive = await dumpArchive(ctx, job, dir, run, { largeObjects: false });
    await runTool(
      ctx.tools,
      "pg_restore",
      ["--section=pre-data", "--exit-on-error", ...restoreFlags(job), dbnameArg(job.db.name), archive],
      { conn: target, signal: run.signal, appName: "pg-migrate pg_restore" },
    );
    await withClient(
      target,
      job.db.name,
      (c) =>
        // A synchronous commit: it flushes the pre-data's commits too, so the slices never meet a schema a crash lost.
        c.query(
          `BEGIN; SET LOCAL synchronous_commit = on; CREATE SCHEMA ${ident(job.markerSchema)}; CREATE TABLE ${markerTable(job.markerSchema)} (slice text PRIMARY KEY, counts jsonb NOT NULL); COMMIT`,
        ),
      run.signal,
    );
  } finally {
    await removeTree(dir);
  }
  return { kind: "schema", ms: Date.now() - started };
};

interface Counted {
  schema: string;
  name: string;
  sent: number;
  copied: number;
  checksum?: string;
  format: "binary" | "text";
}

export const slice: Handler<"slice"> = async (job, run, ctx) => {
  const source = await connect(serverFor("source", job.source, ctx), job.db.name, "pg-migrate slice");
  const unblockSource = endOnAbort(source, run.signal);
  let target: pg.Client | undefined;
  let unblockTarget = () => undefined as void;
  let bytes = 0;
  const total = job.tables.length;
  const progress = setInterval(() => run.progress({ bytes, totalBytes: null }), PROGRESS_EVERY_MS);
  try {
    target = await connect(serverFor("target", job.target, ctx), job.db.name, "pg-migrate slice");
    unblockTarget = endOnAbort(target, run.signal);
    // A slice's rows are counted once, by its COPY tag: its commit must be on disk before it is reported, whatever
    // fast-restore mode says (synchronous_commit=off could lose it in a crash of the target, unseen).
    await target.query("BEGIN; SET LOCAL synchronous_commit = on");
    const earlier = await target.query<{ counts: Counted[] }>(
      `SELECT counts FROM ${markerTable(job.markerSchema)} WHERE slice = $1`,
      [job.slice],
    );
    if (earlier.rows[0]) {
      await target.query("ROLLBACK");
      run.log.info({ slice: job.slice }, "an earlier attempt of this slice committed; its counts are reported again");
      return { kind: "slice", tables: earlier.rows[0].counts, bytes: 0, alreadyCommitted: true };
    }
    const counted = await copyTables(source, target, job, run, (n) => (bytes += n));
    try {
      await target.query(`INSERT INTO ${markerTable(job.markerSchema)} (slice, counts) VALUES ($1, $2::jsonb)`, [
        job.slice,
        JSON.stringify(counted),
      ]);
    } catch (err) {
      // Another delivery of this slice (a redelivery while this one ran late) committed first: its rows stand, and
      // this transaction's go.
      if ((err as { code?: string }).code !== "23505") throw err;
      await target.query("ROLLBACK");
      const { rows } = await target.query<{ counts: Counted[] }>(
        `SELECT counts FROM ${markerTable(job.markerSchema)} WHERE slice = $1`,
        [job.slice],
      );
      run.log.info({ slice: job.slice }, "another delivery of this slice committed first; its counts are reported");
      return { kind: "slice", tables: rows[0]!.counts, bytes: 0, alreadyCommitted: true };
    }
    await target.query("COMMIT");
    await source.query("COMMIT");
    run.log.info({ slice: job.slice, tables: total, bytes }, "slice copied");
    return { kind: "slice", tables: counted, bytes };
  } finally {
    clearInterval(progress);
    unblockSource();
    unblockTarget();
    await source.end().catch(() => undefined);
    await target?.end().catch(() => undefined);
  }
};

/**
 * The slice's tables, each streamed from the source (in the snapshot, row security off, as pg_dump reads) into the
 * target inside the target transaction the caller opened; each table's rows as both sides counted them.
 */
async function copyTables(
  source: pg.Client,
  target: pg.Client,
  job: { snapshot: string; tables: SliceTable[]; checksum?: boolean | undefined },
  run: JobRun,
  onBytes: (n: number) => void,
): Promise<Counted[]> {
  await source.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
  await source.query(`SET TRANSACTION SNAPSHOT ${literal(job.snapshot)}`);
  // Every row, as pg_dump reads them: a source user subject to row security gets an error, not a subset.
  await source.query("SET LOCAL row_security = off");
  if (job.checksum) await setChecksumSession(source);
  const counted: Counted[] = [];
  for (const t of job.tables) {
    const { sent, copied } = await copyTable(source, target, t, run, onBytes);
    if (sent !== copied)
      throw new Error(
        `${qualified(t.schema, t.name)}: the source sent ${sent} rows but the target's COPY took ${copied}`,
      );
    counted.push({
      schema: t.schema,
      name: t.name,
      sent,
      copied,
      format: t.binary ? "binary" : "text",
      ...(job.checksum ? { checksum: await sourceChecksum(source, t) } : {}),
    });
  }
  return counted;
}

/** The rows a slice's table (or part) reads: the whole table without its children, or its pages [from, to). */
function rangeOf(t: SliceTable): string {
  if (!t.pages) return "";
  const from = `ctid >= '(${t.pages.from},0)'::tid`;
  return ` WHERE ${from}${t.pages.to === null ? "" : ` AND ctid < '(${t.pages.to},0)'::tid`}`;
}

async function copyTable(
  source: pg.Client,
  target: pg.Client,
  t: SliceTable,
  run: JobRun,
  onBytes: (n: number) => void,
): Promise<{ sent: number; copied: number }> {
  const table = qualified(t.schema, t.name);
  const cols = t.columns.map(ident).join(", ");
  // A table without columns still has rows: COPY without a column list carries them as empty lines.
  const list = cols ? ` (${cols})` : "";
  const format = t.binary ? "binary" : "text";
  const read = t.pages
    ? `COPY (SELECT ${cols} FROM ONLY ${table}${rangeOf(t)}) TO STDOUT (FORMAT ${format})`
    : `COPY ${table}${list} TO STDOUT (FORMAT ${format})`;
  const whole = !t.pages;
  // A whole table is emptied in this transaction, which also lets COPY write its rows frozen.
  if (whole) await target.query(`TRUNCATE ONLY ${table}`);
  const write = `COPY ${table}${list} FROM STDIN (FORMAT ${format}${whole ? ", FREEZE" : ""})`;
  const out = source.query(copyTo(read));
  const into = target.query(copyFrom(write));
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      onBytes(chunk.length);
      done(null, chunk);
    },
  });
  await pipeline(out, counter, into, { signal: run.signal });
  return { sent: out.rowCount, copied: into.rowCount };
}

/** The source's checksum of a slice's table or part, in the snapshot, over the columns verification hashes. */
async function sourceChecksum(source: pg.Client, t: SliceTable): Promise<string> {
  const row = `ROW(${(t.hashColumns ?? t.columns).map((c) => `r.${ident(c)}`).join(", ")})`;
  const { rows } = await source.query<{ h: string }>(
    `SELECT coalesce(sum(('x' || left(md5(${row}::text), 16))::bit(64)::bigint::numeric), 0)::text AS h FROM ONLY ${qualified(t.schema, t.name)} AS r${rangeOf(t)}`,
  );
  return rows[0]?.h ?? "0";
}

export const post: Handler<"post"> = async (job, run, ctx) => {
  const target = serverFor("target", job.target, ctx);
  const dir = join(ctx.dumpRoot, job.dumpPath, `post-${run.attempt}`);
  const started = Date.now();
  try {
    const archive = await dumpArchive(ctx, job, dir, run, { largeObjects: true });
    const list = await postList(ctx, archive, dir, run);
    // An earlier attempt may have built part of the post-data: what it made is dropped and made again.
    await restorePostData(ctx, job, run, target, archive, list, run.attempt > 1);
    return { kind: "post", ...(await finish(job, run, ctx, target, archive, dir, started)) };
  } finally {
    await removeTree(dir);
  }
};

/**
 * A streamed database that is one slice: pre-data, the slice, then the rest, from one archive on this worker. The
 * database is fresh (a retry recreates it), so nothing needs a marker.
 */
export const whole: Handler<"whole"> = async (job, run, ctx) => {
  const target = serverFor("target", job.target, ctx);
  await prepareDatabase(job, run, target);
  const dir = join(ctx.dumpRoot, job.dumpPath, `whole-${run.attempt}`);
  const started = Date.now();
  let bytes = 0;
  const progress = setInterval(() => run.progress({ bytes, totalBytes: null }), PROGRESS_EVERY_MS);
  try {
    const archive = await dumpArchive(ctx, job, dir, run, { largeObjects: true });
    await runTool(
      ctx.tools,
      "pg_restore",
      ["--section=pre-data", "--exit-on-error", ...restoreFlags(job), dbnameArg(job.db.name), archive],
      { conn: target, signal: run.signal, appName: "pg-migrate pg_restore" },
    );
    const source = await connect(serverFor("source", job.source, ctx), job.db.name, "pg-migrate slice");
    const unblockSource = endOnAbort(source, run.signal);
    let copied: Counted[];
    try {
      copied = await withClient(
        target,
        job.db.name,
        async (c) => {
          await c.query("BEGIN; SET LOCAL synchronous_commit = on");
          const counted = await copyTables(source, c, job, run, (n) => (bytes += n));
          await c.query("COMMIT");
          return counted;
        },
        run.signal,
      );
      await source.query("COMMIT");
    } finally {
      unblockSource();
      await source.end().catch(() => undefined);
    }
    // Its large objects came with the pre-data from this very archive: the rest is the two later sections.
    await restorePostData(ctx, job, run, target, archive, undefined, false);
    const sums = new Map(copied.map((c) => [key(c), c]));
    const asPost = {
      ...job,
      copied: job.tables.map((t) => {
        const c = sums.get(key(t))!;
        return { schema: t.schema, name: t.name, rows: c.copied, ...(c.checksum ? { checksum: c.checksum } : {}) };
      }),
    };
    return { kind: "whole", copied, ...(await finish(asPost, run, ctx, target, archive, dir, started)) };
  } finally {
    clearInterval(progress);
    await removeTree(dir);
  }
};

/**
 * pg_restore -j of the data section and post-data (or of the entries a list file names); clean: what an earlier
 * attempt made is dropped first.
 */
async function restorePostData(
  ctx: WorkerContext,
  job: JobOf<"post"> | JobOf<"whole">,
  run: JobRun,
  target: ServerSpec,
  archive: string,
  list: string | undefined,
  clean: boolean,
): Promise<void> {
  await runTool(
    ctx.tools,
    "pg_restore",
    [
      ...(list ? [`--use-list=${list}`] : ["--section=data", "--section=post-data"]),
      `--jobs=${job.jobs}`,
      ...(clean ? ["--clean", "--if-exists"] : []),
      "--exit-on-error",
      ...restoreFlags(job),
      dbnameArg(job.db.name),
      archive,
    ],
    { conn: target, signal: run.signal, appName: "pg-migrate pg_restore" },
  );
}

/** After the post-data: the marker schema dropped, ANALYZE, the checks, then the database's own properties. */
async function finish(
  job: Checked,
  run: JobRun,
  ctx: WorkerContext,
  target: ServerSpec,
  archive: string,
  dir: string,
  started: number,
) {
  let restoreMs = 0;
  let analyzeStarted = 0;
  await withClient(
    target,
    job.db.name,
    async (c) => {
      await c.query(`DROP SCHEMA IF EXISTS ${ident(job.markerSchema)} CASCADE`);
      restoreMs = Date.now() - started;
      analyzeStarted = Date.now();
      await analyzeUserTables(c);
    },
    run.signal,
  );
  const analyzeMs = Date.now() - analyzeStarted;

  const checked = await check(job, run, ctx, target);
  // A database with none of its own (the source says so) spares the listing of the archive.
  let properties: { applied: boolean; why?: string; skipped?: string[]; none?: boolean } = {
    applied: true,
    ...(checked.hasProperties ? {} : { none: true }),
  };
  if (checked.hasProperties) {
    const { mismatches: failed, skipped } = await applyDatabaseProperties(
      ctx.tools,
      archive,
      target,
      job.db.name,
      run.signal,
      checked.known,
      dir,
    );
    checked.mismatches.push(...failed);
    if (failed.length)
      properties = {
        applied: false,
        why: `${failed.length} of its statements failed (listed as database-property mismatches)`,
      };
    if (skipped.length) properties.skipped = skipped;
  }
  return {
    ok: checked.mismatches.length === 0,
    tables: checked.tables,
    rows: checked.rows,
    sequences: checked.sequences,
    mismatches: checked.mismatches.slice(0, 100),
    warnings: checked.warnings.slice(0, 100),
    properties,
    restoreMs,
    analyzeMs,
    others: checked.others,
    ...(checked.targetChecksums ? { targetChecksums: checked.targetChecksums } : {}),
  };
}

/** What the checks need of a job: its servers, its snapshot, and the streamed tables' counts. */
type Checked = Pick<JobOf<"post">, "db" | "source" | "snapshot" | "markerSchema" | "copied" | "checksum">;

/**
 * The checks of a streamed database, without a count scan: the table lists and columns of both sides (the source's
 * in the snapshot), the streamed tables' rows as the slices counted them on both sides, the other tables (materialized
 * views, extension configuration) counted on both, sequences and large objects; with --verify checksum every table's
 * hash on the target against the sum of its slices' hashes on the source.
 */
async function check(job: Checked, run: JobRun, ctx: WorkerContext, target: ServerSpec) {
  const copied = new Map(job.copied.map((t) => [key(t), t]));
  const streamed = (t: TableName) => copied.has(key(t));
  const sourceSide = await withClient(
    serverFor("source", job.source, ctx),
    job.db.name,
    async (c) => {
      const now = (await c.query<{ s: string }>("SELECT txid_current_snapshot()::text AS s")).rows[0]!.s;
      await c.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      await c.query(`SET TRANSACTION SNAPSHOT ${literal(job.snapshot)}`);
      await c.query("SET LOCAL row_security = off");
      const then = (await c.query<{ s: string }>("SELECT txid_current_snapshot()::text AS s")).rows[0]!.s;
      const tables = await listTables(c);
      if (job.checksum) await setChecksumSession(c);
      const others = await countRows(
        c,
        tables.filter((t) => !streamed(t)),
        { checksum: job.checksum ?? false },
      );
      return {
        tables,
        others,
        sequences: await sequenceValues(c),
        largeObjects: await largeObjectCount(c),
        hasProperties: await hasDatabaseProperties(c),
        changed: now !== then,
      };
    },
    run.signal,
  );
  const sourceColumns = new Map(sourceSide.tables.map((t) => [key(t), t.columns]));
  const hashColumns = (t: TableInfo) => {
    const cols = sourceColumns.get(key(t));
    return cols && cols.every((c) => t.columns.includes(c)) ? cols : t.columns;
  };
  const targetSide = await withClient(
    target,
    job.db.name,
    async (c) => {
      const tables = await listTables(c);
      if (job.checksum) await setChecksumSession(c);
      const hashed = { checksum: job.checksum ?? false, hashColumns };
      return {
        tables,
        // With --verify checksum the streamed tables are scanned on the target too: their hash, and their real count.
        checksummed: job.checksum ? await countRows(c, tables.filter(streamed), hashed) : [],
        others: await countRows(
          c,
          tables.filter((t) => !streamed(t)),
          hashed,
        ),
        sequences: await sequenceValues(c),
        largeObjects: await largeObjectCount(c),
        known: await knownSettings(c),
      };
    },
    run.signal,
  );
  const summed = new Map(targetSide.checksummed.map((t) => [key(t), t]));
  // A streamed table's rows are what its slices counted (or, checksummed, what the target's scan found); the others'
  // are their own counts.
  const side = (tables: TableInfo[], others: TableCount[], which: "source" | "target"): TableCount[] => {
    const other = new Map(others.map((t) => [key(t), t]));
    return tables.map((t) => {
      const c = copied.get(key(t));
      if (!c) return other.get(key(t)) ?? { schema: t.schema, name: t.name, rows: 0, columns: t.columns };
      const scanned = which === "target" ? summed.get(key(t)) : undefined;
      return {
        schema: t.schema,
        name: t.name,
        rows: scanned?.rows ?? c.rows,
        columns: t.columns,
        ...(job.checksum ? { checksum: which === "source" ? (c.checksum ?? "0") : (scanned?.checksum ?? "0") } : {}),
      };
    });
  };
  const {
    tables,
    mismatches: found,
    warnings,
  } = compare(
    {
      tables: side(sourceSide.tables, sourceSide.others, "source"),
      sequences: sourceSide.sequences,
      largeObjects: sourceSide.largeObjects,
    },
    {
      tables: side(targetSide.tables, targetSide.others, "target"),
      sequences: targetSide.sequences,
      largeObjects: targetSide.largeObjects,
    },
  );
  // A sequence is not read in a snapshot: on a source that went on committing, its value now is ahead of the one
  // pg_dump carried, as the rows committed since are not in the copy either. That is no difference in the copy.
  const value = (v: string | null) => (v === null ? undefined : /^-?\d+/.exec(v)?.[0]);
  const mismatches = found.filter((m) => {
    const [s, t] = [value(m.source), value(m.target)];
    const behind =
      m.what === "sequence" &&
      sourceSide.changed &&
      s !== undefined &&
      m.target !== null &&
      (t === undefined || BigInt(t) < BigInt(s));
    if (behind)
      warnings.push({
        what: "sequence-advanced",
        object: m.object,
        source: m.source,
        target: m.target,
        note: "the source went on using it after the snapshot (a sequence is not read in one); the copy carries the value of its time",
      });
    return !behind;
  });
  const others: VerifyTable[] = tables.filter((t) => !streamed(t));
  return {
    tables: tables.length,
    rows: tables.reduce((n, t) => n + (t.target ?? 0), 0),
    sequences: targetSide.sequences.length,
    mismatches,
    warnings,
    others,
    known: targetSide.known,
    hasProperties: sourceSide.hasProperties,
    ...(job.checksum
      ? {
          targetChecksums: targetSide.checksummed.map((t) => ({
            schema: t.schema,
            name: t.name,
            checksum: t.checksum ?? "0",
          })),
        }
      : {}),
  };
}

const key = (t: TableName) => JSON.stringify([t.schema, t.name]);

/**
 * What the post job restores when the database has large objects: a list file, in the archive's order, of its data
 * section (sequence values, large objects' contents, extension configuration) and post-data, and the large objects
 * themselves with their comments and grants, which pg_dump keeps in pre-data and the schema step left out.
 * Without large objects: undefined, the two sections are restored as they are.
 */
async function postList(ctx: WorkerContext, archive: string, dir: string, run: JobRun): Promise<string | undefined> {
  const listed = async (args: string[]) =>
    (await runTool(ctx.tools, "pg_restore", ["--list", ...args, archive], { signal: run.signal })).stdout
      .split("\n")
      .filter((line) => /^\d+;/.test(line));
  const all = await listed([]);
  if (!all.some((line) => LARGE_OBJECT_ENTRY.test(line))) return undefined;
  const wanted = new Set(await listed(["--section=data", "--section=post-data"]));
  const file = join(dir, "post.list");
  await writeFile(file, `${all.filter((line) => wanted.has(line) || LARGE_OBJECT_ENTRY.test(line)).join("\n")}\n`, {
    mode: 0o600,
  });
  return file;
}

/** pg_restore's flags a streamed database's job asks for. */
function restoreFlags(job: { noOwner?: boolean | undefined; noTablespaces?: boolean | undefined }): string[] {
  return [...(job.noOwner ? ["--no-owner"] : []), ...(job.noTablespaces ? ["--no-tablespaces"] : [])];
}

/**
 * pg_dump -Fc of the database in the holder's snapshot, without the streamed tables' data (their rows travel in the
 * slices) and, for the schema step, without the large objects. --create records the database's own properties.
 */
async function dumpArchive(
  ctx: WorkerContext,
  job: JobOf<"schema"> | JobOf<"post"> | JobOf<"whole">,
  dir: string,
  run: JobRun,
  opts: { largeObjects: boolean },
): Promise<string> {
  await ensurePrivateDir(dir);
  const file = join(dir, ARCHIVE);
  await runTool(
    ctx.tools,
    "pg_dump",
    [
      "--format=custom",
      "--create",
      `--snapshot=${job.snapshot}`,
      ...(opts.largeObjects ? [] : ["--no-blobs"]),
      ...job.streamed.map((t) => `--exclude-table-data=${exactPattern(t)}`),
      `--file=${file}`,
      dbnameArg(job.db.name),
    ],
    { conn: serverFor("source", job.source, ctx), signal: run.signal, appName: "pg-migrate pg_dump" },
  );
  return file;
}

/** A pg_dump pattern that matches this one table and nothing else: both names quoted, quotes doubled. */
export function exactPattern(t: TableName): string {
  const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;
  return `${quote(t.schema)}.${quote(t.name)}`;
}
