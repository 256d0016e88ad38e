// Message and file contracts. Every payload carries a version; decoding validates at run time.
// No JSON.parse of a message or a manifest happens anywhere else.
import { z } from "zod";
import { ContractError } from "../errors.js";
import { DB_PHASES, JOB_KINDS } from "./phases.js";

export const CONTRACT_VERSION = 1;

const Sealed = z.object({ alg: z.literal("aes-256-gcm"), iv: z.string(), tag: z.string(), data: z.string() });
export type Sealed = z.infer<typeof Sealed>;

/** Where a worker connects. The password, if present, is sealed with the run's shared key, never clear. */
const ConnSpec = z.object({
  host: z.string(),
  port: z.number().int(),
  user: z.string(),
  sslmode: z.string().optional(),
  /** Certificate paths as the coordinator was given them: they must exist at the same paths on the workers. */
  sslrootcert: z.string().optional(),
  sslcert: z.string().optional(),
  sslkey: z.string().optional(),
  password: Sealed.optional(),
});
export type ConnSpec = z.infer<typeof ConnSpec>;

const DbRef = z.object({ name: z.string(), key: z.string() });
export type DbRef = z.infer<typeof DbRef>;

/** How the coordinator created a database on the target; a retried restore recreates it the same way. */
export const CreateSpecSchema = z.object({
  owner: z.string(),
  encoding: z.string(),
  collate: z.string(),
  ctype: z.string(),
  /** builtin: PostgreSQL 17's own provider (datlocprovider 'b'). */
  localeProvider: z.enum(["libc", "icu", "builtin"]),
  /** The provider's locale: ICU's (daticulocale in 15 and 16, datlocale from 17), or the builtin provider's (datlocale). */
  iculocale: z.string().nullable(),
  /** The database's default tablespace when it is not pg_default (absent: pg_default, or --no-tablespaces). */
  tablespace: z.string().optional(),
});
export type CreateSpec = z.infer<typeof CreateSpecSchema>;

const jobBase = {
  v: z.literal(CONTRACT_VERSION),
  runId: z.string(),
  jobId: z.string(),
  db: DbRef,
  /** Relative to the dump root, which each worker mounts wherever it likes. */
  dumpPath: z.string(),
  /**
   * Attempts of this step that earlier jobs used up (failures, not interruptions): a job handed back by a stopping
   * worker is published again with the same count, so its next claim is the same attempt number.
   */
  attemptsBefore: z.number().int().nonnegative().optional(),
  /** The run's --max-deliver: attempts of this step before its database fails (absent: the consumer's max_deliver). */
  maxAttempts: z.number().int().positive().optional(),
};

const DumpJob = z.object({
  ...jobBase,
  kind: z.literal("dump"),
  source: ConnSpec,
  /** The database's size on the source: what dump progress is measured against. */
  estimatedBytes: z.number().optional(),
  jobs: z.number().int().positive(),
  compress: z.string(),
  /** --verify checksum: also hash every table's content in the dump's snapshot. */
  checksum: z.boolean().optional(),
});
const RestoreJob = z.object({
  ...jobBase,
  kind: z.literal("restore"),
  target: ConnSpec,
  jobs: z.number().int().positive(),
  create: CreateSpecSchema,
  /** pg_restore --no-owner: every object owned by the target user (--no-owner, for targets that cannot give objects to their owners). */
  noOwner: z.boolean().optional(),
  /** Restore into a database that was there before the run (the maintenance database): never dropped or created. */
  intoExisting: z.boolean().optional(),
  /** pg_restore --no-tablespaces (--no-tablespaces). */
  noTablespaces: z.boolean().optional(),
  /** The target database the worker connects to when it must drop and recreate the restored one. */
  maintenanceDb: z.string(),
  /** Drop and recreate the (run-created) database before restoring: set when an earlier attempt may have written. */
  recreate: z.boolean(),
  /** The database's size on the source: what restore progress (its size on the target) is measured against. */
  estimatedBytes: z.number().optional(),
});
const VerifyJob = z.object({ ...jobBase, kind: z.literal("verify"), target: ConnSpec });

const TableRef = z.object({ schema: z.string(), name: z.string() });
export type TableName = z.infer<typeof TableRef>;

/**
 * What every job of a streamed database (--via stream) shares: both servers, the snapshot the coordinator's holder
 * session exported on the source (every read of the database happens inside it), and the schema the run keeps its
 * slice markers in on the target database until the post job drops it. dumpPath is the worker's own scratch
 * directory under its dump root (nothing there is shared).
 */
const streamBase = {
  ...jobBase,
  source: ConnSpec,
  target: ConnSpec,
  snapshot: z.string(),
  markerSchema: z.string(),
  /** The tables whose data the slices carry: left out of the schema archive's data. */
  streamed: z.array(TableRef),
  noOwner: z.boolean().optional(),
  noTablespaces: z.boolean().optional(),
  maintenanceDb: z.string(),
};
/** The schema step: pre-data restored into a fresh database before any slice runs. */
const SchemaJob = z.object({
  ...streamBase,
  kind: z.literal("schema"),
  create: CreateSpecSchema,
  intoExisting: z.boolean().optional(),
  /** Drop and recreate the (run-created) database first: an earlier attempt or session may have written to it. */
  recreate: z.boolean(),
});
/** One table of a slice: its columns (not generated, not dropped), its COPY format, and for a part its pages. */
const SliceTable = z.object({
  schema: z.string(),
  name: z.string(),
  columns: z.array(z.string()),
  binary: z.boolean(),
  /** With --verify checksum: the columns the hash is built of (every column, generated ones too, in the source's order). */
  hashColumns: z.array(z.string()).optional(),
  /** A part of a split table: the heap pages [from, to) it reads (to null: to the end); absent: the whole table. */
  pages: z.object({ from: z.number().int().nonnegative(), to: z.number().int().positive().nullable() }).optional(),
});
export type SliceTable = z.infer<typeof SliceTable>;
/** A data slice: a table, a batch of small tables, or a part of a big one, streamed in one target transaction. */
const SliceJob = z.object({
  ...streamBase,
  kind: z.literal("slice"),
  /** The slice's id within its database (its marker on the target): the same for every attempt. */
  slice: z.string(),
  tables: z.array(SliceTable).min(1),
  checksum: z.boolean().optional(),
});
/** After the last slice: the rest of the data section and post-data, ANALYZE, the checks, the database's properties. */
const PostJob = z.object({
  ...streamBase,
  kind: z.literal("post"),
  jobs: z.number().int().positive(),
  /** Every streamed table's rows (the source's, which each slice's target COPY confirmed) and source checksum. */
  copied: z.array(
    z.object({ schema: z.string(), name: z.string(), rows: z.number(), checksum: z.string().optional() }),
  ),
  checksum: z.boolean().optional(),
});

/**
 * A streamed database that is one slice: the schema, the slice and the post-data in one job on one worker, from one
 * archive (no marker: a retry recreates the database).
 */
const WholeJob = z.object({
  ...streamBase,
  kind: z.literal("whole"),
  create: CreateSpecSchema,
  intoExisting: z.boolean().optional(),
  recreate: z.boolean(),
  jobs: z.number().int().positive(),
  tables: z.array(SliceTable),
  checksum: z.boolean().optional(),
});

const Job = z.discriminatedUnion("kind", [DumpJob, RestoreJob, VerifyJob, SchemaJob, SliceJob, PostJob, WholeJob]);
export type Job = z.infer<typeof Job>;
export type JobOf<K extends Job["kind"]> = Extract<Job, { kind: K }>;

const TableCount = z.object({
  schema: z.string(),
  name: z.string(),
  rows: z.number().int().nonnegative(),
  /** --verify checksum: an order-independent hash of the table's rows (the sum of each row's md5, as text). */
  checksum: z.string().optional(),
  /** The columns in their physical order on that server (absent: a manifest of an older pg-migrate). */
  columns: z.array(z.string()).optional(),
  /** A materialized view: pg_restore refreshes it, so its content is the view's query run on the target. */
  matview: z.boolean().optional(),
});
export type TableCount = z.infer<typeof TableCount>;
const SequenceValue = z.object({
  schema: z.string(),
  name: z.string(),
  lastValue: z.string().nullable(),
  isCalled: z.boolean(),
});
export type SequenceValue = z.infer<typeof SequenceValue>;

/** Written into a dump's attempt directory only after pg_dump exited 0: the mark of a complete dump. */
const Manifest = z.object({
  v: z.literal(CONTRACT_VERSION),
  runId: z.string(),
  jobId: z.string(),
  db: DbRef,
  completedAt: z.string(),
  pgDumpVersion: z.string(),
  serverVersion: z.string(),
  bytes: z.number().int().nonnegative(),
  /** The pg_dump --compress value the dump was made with (what --compress auto chose). */
  compression: z.string().optional(),
  tables: z.array(TableCount),
  sequences: z.array(SequenceValue),
  largeObjects: z.number().int().nonnegative(),
  /** Whether the database has settings, a connection limit, a comment, labels or grants of its own to apply after verification (absent: look in the dump). */
  databaseProperties: z.boolean().optional(),
});
export type Manifest = z.infer<typeof Manifest>;

export const MismatchSchema = z.object({
  what: z.enum([
    "table-missing",
    "table-extra",
    "row-count",
    "checksum",
    "columns",
    "sequence",
    "large-objects",
    "database-property",
  ]),
  object: z.string(),
  source: z.string().nullable(),
  target: z.string().nullable(),
});
export type Mismatch = z.infer<typeof MismatchSchema>;

/**
 * A difference pg_dump itself cannot avoid, named but not a failure: an inheritance child whose columns the target
 * keeps in another order (pg_dump recreates it with its parent's columns first), a materialized view whose content
 * changed because pg_restore refreshed it. `note` says what it means for the user.
 */
export const VerifyWarningSchema = z.object({
  what: z.enum(["column-order", "matview-refreshed", "sequence-advanced"]),
  object: z.string(),
  source: z.string().nullable(),
  target: z.string().nullable(),
  note: z.string(),
});
export type VerifyWarning = z.infer<typeof VerifyWarningSchema>;

const DumpResult = z.object({
  kind: z.literal("dump"),
  attemptPath: z.string(),
  bytes: z.number(),
  /** The pg_dump --compress value used. */
  compression: z.string().optional(),
  tables: z.number().int(),
  rows: z.number(),
});
const RestoreResult = z.object({ kind: z.literal("restore"), restoreMs: z.number(), analyzeMs: z.number() });
/** One table on both sides, as verify saw it (also each row of a report's tableCounts). */
export const VerifyTable = z.object({
  schema: z.string(),
  name: z.string(),
  source: z.number().nullable(),
  target: z.number().nullable(),
  /** With --verify checksum: each side's content hash (null: the table is missing there). */
  sourceChecksum: z.string().nullable().optional(),
  targetChecksum: z.string().nullable().optional(),
});
export type VerifyTable = z.infer<typeof VerifyTable>;
const VerifyResult = z.object({
  kind: z.literal("verify"),
  ok: z.boolean(),
  tables: z.number().int(),
  rows: z.number(),
  sequences: z.number().int(),
  mismatches: z.array(MismatchSchema),
  /** What pg_dump cannot preserve, named: not a failure. */
  warnings: z.array(VerifyWarningSchema).optional(),
  /**
   * The database's own properties (settings, connection limit, comment, grants): applied (also after a failed
   * verification, whose reason stays in mismatches), none to apply, or not applied and why.
   */
  properties: z
    .object({
      applied: z.boolean(),
      why: z.string().optional(),
      /** SETs of settings the target's major no longer knows: left out, the rest applied. */
      skipped: z.array(z.string()).optional(),
      /** The database has none of its own. */
      none: z.boolean().optional(),
    })
    .optional(),
  /** Relative to the dump root: every table's counts on both sides. */
  detailPath: z.string(),
});
const SchemaResult = z.object({ kind: z.literal("schema"), ms: z.number() });
/** Per table of a slice: the rows the source sent and the target's COPY command tag, which must agree. */
const SliceResult = z.object({
  kind: z.literal("slice"),
  tables: z.array(
    z.object({
      schema: z.string(),
      name: z.string(),
      sent: z.number().int().nonnegative(),
      copied: z.number().int().nonnegative(),
      checksum: z.string().optional(),
      /** The COPY format used: binary where both sides have binary I/O for every column's type, text otherwise. */
      format: z.enum(["binary", "text"]).optional(),
    }),
  ),
  bytes: z.number(),
  /** An earlier attempt of this slice had committed on the target (its marker was there): nothing was copied again. */
  alreadyCommitted: z.boolean().optional(),
});
const PostResult = VerifyResult.omit({ kind: true, detailPath: true }).extend({
  kind: z.literal("post"),
  restoreMs: z.number(),
  analyzeMs: z.number(),
  /** The tables the slices did not carry (materialized views, extension configuration), counted on both sides. */
  others: z.array(VerifyTable),
  /** With --verify checksum: the target's hash of each streamed table. */
  targetChecksums: z.array(z.object({ schema: z.string(), name: z.string(), checksum: z.string() })).optional(),
});

const WholeResult = PostResult.extend({
  kind: z.literal("whole"),
  /** The slice's counts, as a slice job reports them. */
  copied: SliceResult.shape.tables,
});

const JobResult = z.discriminatedUnion("kind", [
  DumpResult,
  RestoreResult,
  VerifyResult,
  SchemaResult,
  SliceResult,
  PostResult,
  WholeResult,
]);
export type JobResult = z.infer<typeof JobResult>;

/** Every table of a verification, written beside the dump by the verify job. */
const VerifyDetail = z.object({ v: z.literal(CONTRACT_VERSION), tables: z.array(VerifyTable) });
export type VerifyDetail = z.infer<typeof VerifyDetail>;

/**
 * How far a job is. dump: bytes pg_dump wrote so far, against the database's size on the source (an estimate:
 * dumps are compressed and hold no indexes); restore: the database's size on the target against its size on the
 * source, with the COPYs and index builds the target reports (pg_stat_progress_copy and
 * pg_stat_progress_create_index, PostgreSQL 14 and later); verify: start and end only. stage "start" comes right
 * after "claimed" and "end" right before "done", so every job reports progress at least twice.
 */
const Progress = z.object({
  bytes: z.number(),
  totalBytes: z.number().nullable(),
  stage: z.enum(["start", "running", "end"]).optional(),
  copy: z.object({ tables: z.number().int(), bytes: z.number() }).optional(),
  index: z.object({ building: z.number().int(), blocksDone: z.number(), blocksTotal: z.number() }).optional(),
});
export type Progress = z.infer<typeof Progress>;

const JobEvent = z.object({
  v: z.literal(CONTRACT_VERSION),
  type: z.literal("job"),
  runId: z.string(),
  jobId: z.string(),
  kind: z.enum(JOB_KINDS),
  /** released: a stopping worker gave the job back unfinished (no attempt used); the coordinator publishes it again. */
  status: z.enum(["claimed", "progress", "done", "failed", "released"]),
  db: DbRef,
  worker: z.string(),
  attempt: z.number().int(),
  maxAttempts: z.number().int(),
  at: z.string(),
  durationMs: z.number().optional(),
  progress: Progress.optional(),
  result: JobResult.optional(),
  /** final: no delivery is left, the database has failed. */
  error: z.object({ message: z.string(), stderrTail: z.string(), final: z.boolean() }).optional(),
  /** Why a job was released: its worker was stopping, or the job's server went away and came back. */
  reason: z.enum(["stopping", "server-back"]).optional(),
});
const DbEvent = z.object({
  v: z.literal(CONTRACT_VERSION),
  type: z.literal("db"),
  runId: z.string(),
  db: DbRef,
  phase: z.enum(DB_PHASES),
  at: z.string(),
  error: z.string().optional(),
});
const RunEvent = z.object({
  v: z.literal(CONTRACT_VERSION),
  type: z.literal("run"),
  runId: z.string(),
  status: z.enum(["started", "resumed", "finished", "failed", "interrupted"]),
  at: z.string(),
  databases: z.number().int(),
  verified: z.number().int().optional(),
  failed: z.number().int().optional(),
});
/** A worker appeared in or vanished from the presence bucket while this run was live (seen by the coordinator). */
const WorkerEvent = z.object({
  v: z.literal(CONTRACT_VERSION),
  type: z.literal("worker"),
  runId: z.string(),
  worker: z.string(),
  status: z.enum(["joined", "left"]),
  host: z.string().optional(),
  pid: z.number().int().optional(),
  at: z.string(),
});
const Event = z.discriminatedUnion("type", [JobEvent, DbEvent, RunEvent, WorkerEvent]);
export type Event = z.infer<typeof Event>;
export type JobEvent = z.infer<typeof JobEvent>;
export type DbEvent = z.infer<typeof DbEvent>;
export type RunEvent = z.infer<typeof RunEvent>;
export type WorkerEvent = z.infer<typeof WorkerEvent>;

/** A worker's entry in the presence bucket, refreshed every few seconds while it lives. */
const Presence = z.object({
  id: z.string(),
  host: z.string(),
  pid: z.number().int(),
  jobs: z.number().int(),
  inFlight: z.number().int(),
  at: z.string(),
});
export type Presence = z.infer<typeof Presence>;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encode(value: Job | Event | Presence): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function decodeWith<T>(schema: z.ZodType<T>, data: Uint8Array | string, what: string, subject?: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(typeof data === "string" ? data : decoder.decode(data));
  } catch (err) {
    throw new ContractError(`${what} is not JSON`, subject, { cause: err });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new ContractError(
      `${what} does not match contract v${CONTRACT_VERSION}: ${z.prettifyError(parsed.error)}`,
      subject,
    );
  }
  return parsed.data;
}

export const decodeJob = (data: Uint8Array, subject?: string) => decodeWith(Job, data, "job", subject);
export const decodeEvent = (data: Uint8Array, subject?: string) => decodeWith(Event, data, "event", subject);
export const decodeManifest = (text: string, path: string) => decodeWith(Manifest, text, `manifest ${path}`);
export const decodePresence = (data: Uint8Array, key?: string) => decodeWith(Presence, data, "presence entry", key);
export const decodeVerifyDetail = (text: string, path: string) =>
  decodeWith(VerifyDetail, text, `verification ${path}`);

/** The JSON schemas of the published contracts, for the README and for third-party consumers. */
export const schemas = { Job, Event, Manifest, VerifyDetail } as const;
