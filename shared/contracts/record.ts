// The coordinator's own records, as contracts: the run record (a local file and a KV entry a coordinator on another
// host resumes from), the target lock's holder (a file and a KV entry), and JetStream's max-deliveries advisory.
// Decoded through these schemas wherever they are read, as the messages are: a record that does not match is
// named, never half-read. The report's schema (report.ts) is built from the run record's parts.
import { z } from "zod";
import { ContractError, errorMessage } from "../errors.js";
import { CreateSpecSchema, MismatchSchema, VerifyTable, VerifyWarningSchema } from "./messages.js";
import { DB_PHASES, JOB_KINDS, RUN_STEPS } from "./phases.js";

/** following: every database copied and verified, the target kept current by subscriptions until `pg-migrate cutover`. */
export const RUN_STATUSES = ["running", "interrupted", "failed", "following", "finished", "abandoned"] as const;
export const UPGRADE_NOTE_KINDS = ["public-schema", "unknown-setting", "extension-version", "removed-feature"] as const;

export const ServerSchema = z.object({
  host: z.string(),
  port: z.number().int(),
  user: z.string(),
  db: z.string(),
  systemId: z.string().nullable(),
  version: z.string(),
});

export const SavedSettingSchema = z.object({
  name: z.string(),
  /** The value in effect before the run, as pg_settings shows it. */
  setting: z.string(),
  /** The value postgresql.auto.conf held (ALTER SYSTEM), or null when it held none. */
  autoConf: z.string().nullable(),
});
export type SavedSetting = z.infer<typeof SavedSettingSchema>;

export const FastRestoreSchema = z.object({
  mode: z.string(),
  applied: z.boolean(),
  reverted: z.boolean(),
  original: z.array(SavedSettingSchema),
  skippedReason: z.string().optional(),
});

export const GlobalsSchema = z.object({
  done: z.boolean(),
  applied: z.number().int(),
  removed: z.array(z.string()),
  alreadyExisted: z.array(z.string()),
  failed: z.array(z.object({ statement: z.string(), error: z.string() })),
  /** --no-role-passwords: login roles created without a password; set one with ALTER ROLE … PASSWORD. */
  withoutPassword: z.array(z.string()).optional(),
  /** A target user that is not a superuser: role attributes (SUPERUSER, REPLICATION, BYPASSRLS) and grantors left out. */
  notApplied: z.array(z.string()).optional(),
  /** ALTER ROLE … SET of settings the target's major no longer knows: left out, the rest applied. */
  unknownSettings: z.array(z.string()).optional(),
});

export const SkippedSchema = z.object({ name: z.string(), reason: z.string() });

/** What crossing majors changes that a user must know, naming its object (coordinator/upgrade-notes.ts). */
export const UpgradeNoteSchema = z.object({ what: z.enum(UPGRADE_NOTE_KINDS), object: z.string(), note: z.string() });
export type UpgradeNote = z.infer<typeof UpgradeNoteSchema>;

const PerKind = <T extends z.ZodType>(t: T) =>
  z.object({ dump: t, restore: t, verify: t, schema: t, slice: t, post: t, whole: t }).partial();
export const TimingsSchema = z
  .object({
    dump: z.number(),
    restore: z.number(),
    verify: z.number(),
    analyze: z.number(),
    /** --via stream: the schema step, the newest slice job, all of the data (first slice to last), the post job. */
    schema: z.number(),
    slice: z.number(),
    copy: z.number(),
    post: z.number(),
    whole: z.number(),
  })
  .partial();
export const AttemptsSchema = PerKind(z.number().int());
export const WorkersSchema = PerKind(z.string());

/** Whether verification applied the database's own properties, and why not. */
export const PropertiesSchema = z.object({
  applied: z.boolean(),
  why: z.string().optional(),
  skipped: z.array(z.string()).optional(),
  none: z.boolean().optional(),
});

/** One data slice of a streamed database: what it holds, who did it, and what both sides counted. */
export const SliceStateSchema = z.object({
  id: z.string(),
  /** The tables (a batch), or the one table a part belongs to. */
  tables: z.array(z.object({ schema: z.string(), name: z.string() })),
  /** A part of a split table: its number (1-based) of how many, and its heap pages [from, to). */
  part: z
    .object({ n: z.number().int(), of: z.number().int(), from: z.number().int(), to: z.number().int().nullable() })
    .optional(),
  bytes: z.number(),
  phase: z.enum(["planned", "running", "done", "failed"]),
  jobId: z.string().optional(),
  jobSeq: z.number().int().optional(),
  attempts: z.number().int(),
  worker: z.string().optional(),
  ms: z.number().optional(),
  /** Per table: rows the source sent, the target's COPY tag, and the source checksum (--verify checksum). */
  counts: z
    .array(
      z.object({
        schema: z.string(),
        name: z.string(),
        sent: z.number(),
        copied: z.number(),
        checksum: z.string().optional(),
        format: z.enum(["binary", "text"]).optional(),
      }),
    )
    .optional(),
  /** Found committed by an earlier attempt whose result never arrived: kept, not copied again. */
  alreadyCommitted: z.boolean().optional(),
});
export type SliceState = z.infer<typeof SliceStateSchema>;

/** A streamed database's snapshot and slices (--via stream). */
export const StreamStateSchema = z.object({
  /** The snapshot the holder session exported; valid only while that session lives. */
  snapshot: z.string(),
  /**
   * The source's transaction snapshot (txid_current_snapshot(): xmin:xmax:in-progress) when it was taken. The same
   * one later means no transaction has taken an id or ended since: the source shows the very same rows.
   */
  txids: z.string(),
  /** The schema job is done: pre-data and the marker table are on the target. */
  schemaDone: z.boolean().optional(),
  /** The schema of the slice markers on the target database (dropped by the post job). */
  markerSchema: z.string(),
  /** Every table the slices carry, with its columns and COPY format, as the schema and post jobs are told. */
  streamed: z.array(z.object({ schema: z.string(), name: z.string() })),
  slices: z.array(SliceStateSchema),
  /** When the first slice was published. */
  copyStartedAt: z.string().optional(),
  /** How many times the database started over with a new snapshot (its holder died, or a session ended). */
  restarts: z.number().int(),
  /** Why it last started over, for the report. */
  restartedBecause: z.string().optional(),
  /** A resumed session found the source unchanged and kept this many finished slices (not copied again). */
  keptSlices: z.number().int().optional(),
});
export type StreamState = z.infer<typeof StreamStateSchema>;

/**
 * --follow, one database: the publication and logical slot the run made on the source (recorded before it made
 * them) and, once the database is copied and verified, the subscription on the target that follows that slot.
 */
export const FollowDbSchema = z.object({
  publication: z.string(),
  slot: z.string(),
  /** The subscription's name (the same in the target database); subscribed: it exists. */
  subscription: z.string(),
  subscribed: z.boolean(),
  /** The slot's consistent point: the copy's snapshot is the source as of this LSN. */
  startLsn: z.string().optional(),
  /** The newest lag reading: bytes of source WAL the target has not confirmed, and seconds behind. */
  lag: z.object({ bytes: z.number(), seconds: z.number().nullable(), at: z.string() }).optional(),
});
export type FollowDb = z.infer<typeof FollowDbSchema>;

/** --follow, the run: the temporary replication role on the source, and the cutover's progress. */
export const FollowSchema = z.object({
  /** The role the target's subscriptions log in to the source as (created by the run, dropped by cutover/abort). */
  role: z.string(),
  roleCreated: z.boolean(),
  /** How the target reaches the source (the run's source address unless --follow-source says otherwise). */
  publisher: z.object({ host: z.string(), port: z.number().int() }),
  cutover: z
    .object({
      /** When the writes were blocked on the source (absent with --writes-stopped). */
      blockedAt: z.string().optional(),
      /** The source databases the cutover made read-only (ALTER DATABASE … SET default_transaction_read_only). */
      readOnly: z.array(z.string()),
      /** The source's WAL position once the writes stopped: every subscription applied up to it. */
      lsn: z.string().optional(),
      doneAt: z.string().optional(),
      /** From blockedAt to the moment the target was the one to write to. */
      windowMs: z.number().optional(),
      sequences: z.number().int().optional(),
      verifiedRows: z.number().optional(),
    })
    .optional(),
  /** pg-migrate abort (or --restart) dropped what the run made on both servers. */
  aborted: z.boolean().optional(),
});
export type Follow = z.infer<typeof FollowSchema>;

export const DbStateSchema = z.object({
  name: z.string(),
  key: z.string(),
  sizeBytes: z.number(),
  phase: z.enum(DB_PHASES),
  /** True once this run has (or is about to have) created the database on the target. */
  created: z.boolean(),
  create: CreateSpecSchema,
  jobId: z.string().optional(),
  jobSeq: z.number().int().optional(),
  /** The kind of the job jobId names (absent in a record of an older pg-migrate: the one its phase implies). */
  jobKind: z.enum(JOB_KINDS).optional(),
  /** stream: slices through the workers under one snapshot; volume (absent): pg_dump -Fd and pg_restore. */
  via: z.enum(["volume", "stream"]).optional(),
  stream: StreamStateSchema.optional(),
  follow: FollowDbSchema.optional(),
  /** --via stream: every table's counts on both sides (the volume path keeps them in the detail file). */
  tableCounts: z.array(VerifyTable).optional(),
  /** Attempt directory of the completed dump, relative to the dump root. */
  dumpPath: z.string().optional(),
  dumpBytes: z.number().optional(),
  tables: z.number().int().optional(),
  rows: z.number().optional(),
  verifiedRows: z.number().optional(),
  sequences: z.number().int().optional(),
  mismatches: z.array(MismatchSchema).optional(),
  /** What pg_dump could not preserve (column order, refreshed materialized views): named, not failures. */
  warnings: z.array(VerifyWarningSchema).optional(),
  properties: PropertiesSchema.optional(),
  detailPath: z.string().optional(),
  timings: TimingsSchema,
  attempts: AttemptsSchema,
  workers: WorkersSchema,
  error: z.string().optional(),
  /** The tail of the failing tool's stderr, from the newest failed attempt. */
  stderrTail: z.string().optional(),
  /** The current job's newest progress: what status and watch show as bytes, rate and ETA. */
  progress: z
    .object({
      kind: z.enum(JOB_KINDS),
      jobId: z.string(),
      bytes: z.number(),
      totalBytes: z.number().nullable(),
      startedAt: z.string(),
      at: z.string(),
    })
    .optional(),
});
export type DbState = z.infer<typeof DbStateSchema>;

/** Roles a target user that is not a superuser joined for the run (granted), and whether it left them again. */
export const MembershipsSchema = z.object({ granted: z.array(z.string()), revoked: z.boolean() });
export type Memberships = z.infer<typeof MembershipsSchema>;

/** One step of one session of the run (RUN_STEPS): when it started and how long it took. */
export const StepTimingSchema = z.object({
  /** 0 for the first session, n for the n-th resume. */
  session: z.number().int(),
  step: z.enum(RUN_STEPS),
  startedAt: z.string(),
  ms: z.number(),
});
export type StepTiming = z.infer<typeof StepTimingSchema>;

export const RunRecordSchema = z.object({
  v: z.literal(1),
  runId: z.string(),
  pairKey: z.string(),
  /** abandoned: a later `--restart` cleaned up after it and started over. */
  status: z.enum(RUN_STATUSES),
  startedAt: z.string(),
  updatedAt: z.string(),
  resumedAt: z.array(z.string()),
  source: ServerSchema,
  target: ServerSchema,
  /** The run's options, passwords excluded. */
  options: z.record(z.string(), z.unknown()),
  fastRestore: FastRestoreSchema,
  /** What crossing majors changes (coordinator/upgrade-notes.ts), said before the run changed anything. */
  upgradeNotes: z.array(UpgradeNoteSchema).optional(),
  globals: GlobalsSchema,
  skipped: z.array(SkippedSchema),
  /** Roles a target user that is not a superuser joined for the run, left again at its end. */
  memberships: MembershipsSchema.optional(),
  databases: z.array(DbStateSchema),
  /** The run's NATS URL(s), without credentials: where `pg-migrate status` finds the live workers. */
  broker: z.string().optional(),
  /** The last EVENTS stream sequence the coordinator handled: a resume reads the run's events again from there. */
  eventsSeq: z.number().int().optional(),
  follow: FollowSchema.optional(),
  /** Each session's steps with their timings, in order (the finish step's up to the report). */
  steps: z.array(StepTimingSchema).optional(),
});
export type RunRecord = z.infer<typeof RunRecordSchema>;

/** What the target itself carries (pg_migrate.fast_restore) of the fast-restore settings a run put there. */
export const TargetRecordSchema = z.object({
  v: z.literal(1),
  runId: z.string(),
  mode: z.string(),
  at: z.string(),
  original: z.array(SavedSettingSchema),
});
export type TargetRecord = z.infer<typeof TargetRecordSchema>;

/** Who holds a target's lock (a file of this host, or a KV entry). */
export const LockHolderSchema = z.object({
  /** Unknown for the first moments of a run, before its record is found or created. */
  runId: z.string().nullable(),
  pid: z.number().int(),
  host: z.string(),
  target: z.string(),
  startedAt: z.string(),
  /** Refreshed while the holder lives. */
  at: z.string(),
});
export type LockHolder = z.infer<typeof LockHolderSchema>;

/** JetStream's advisory that a message reached its max_deliver (only the fields read; the rest is the server's). */
export const MaxDeliveriesSchema = z.object({
  stream: z.string(),
  stream_seq: z.number().int(),
  deliveries: z.number().int(),
});
export type MaxDeliveries = z.infer<typeof MaxDeliveriesSchema>;

function decodeWith<S extends z.ZodType>(schema: S, what: string, text: string): z.infer<S> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ContractError(`${what} is not JSON: ${errorMessage(err)}`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new ContractError(
      `${what} does not match its contract: ${first ? `${first.path.join(".") || "(root)"}: ${first.message}` : "invalid"}`,
    );
  }
  return parsed.data;
}

export const decodeRunRecord = (text: string): RunRecord => decodeWith(RunRecordSchema, "a run record", text);
export const decodeTargetRecord = (text: string): TargetRecord =>
  decodeWith(TargetRecordSchema, "the target's pg_migrate.fast_restore", text);
export const decodeLockHolder = (text: string): LockHolder =>
  decodeWith(LockHolderSchema, "a target lock's holder", text);
export const decodeMaxDeliveries = (text: string): MaxDeliveries =>
  decodeWith(MaxDeliveriesSchema, "a max-deliveries advisory", text);
