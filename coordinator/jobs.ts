// The job each step publishes, built from the run's configuration and what the database's earlier steps found.
// Keyed by kind like the worker's handlers, so a new job kind without a builder does not compile.
import { posix } from "node:path";
import { CONTRACT_VERSION, type ConnSpec, type JobOf } from "../shared/contracts/messages.js";
import type { JobKind } from "../shared/contracts/phases.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { seal, type SharedKey } from "../shared/secrets.js";
import type { MigrateConfig } from "./config.js";
import { MAINTENANCE_DB } from "./discovery.js";
import { jobsFor } from "./parallelism.js";
import type { PlannedSlice } from "./slices.js";
import type { DbState } from "./state.js";

/** What a builder is given besides the database. */
export interface JobSpec {
  cfg: MigrateConfig;
  /** The run's shared key: passwords travel sealed with it. */
  key: SharedKey | undefined;
  runId: string;
  jobId: string;
  /** Attempts of this step that earlier jobs used up. */
  attemptsBefore: number;
  /** Whether the target database may hold a partial restore from an earlier session or job. */
  recreate: boolean;
  /** A slice job's slice, as planned (its columns and pages live only in the session that planned it). */
  slice?: PlannedSlice;
}

export const BUILD: { [K in JobKind]: (db: DbState, s: JobSpec) => JobOf<K> } = {
  dump: (db, s) => ({
    ...common(db, s),
    kind: "dump",
    dumpPath: posix.join(s.runId, db.key, s.jobId),
    source: conn(s.cfg.source, s.key),
    jobs: jobsFor(db.sizeBytes, s.cfg.jobs),
    compress: s.cfg.compress,
    estimatedBytes: db.sizeBytes,
    ...(s.cfg.verify === "checksum" ? { checksum: true } : {}),
  }),
  restore: (db, s) => ({
    ...common(db, s),
    kind: "restore",
    dumpPath: db.dumpPath!,
    target: conn(s.cfg.target, s.key),
    jobs: jobsFor(db.sizeBytes, s.cfg.jobs),
    create: db.create,
    estimatedBytes: db.sizeBytes,
    maintenanceDb: s.cfg.targetDb,
    ...(s.cfg.noOwner ? { noOwner: true } : {}),
    ...(s.cfg.noTablespaces ? { noTablespaces: true } : {}),
    ...(db.name === MAINTENANCE_DB ? { intoExisting: true } : {}),
    recreate: s.recreate,
  }),
  verify: (db, s) => ({ ...common(db, s), kind: "verify", dumpPath: db.dumpPath!, target: conn(s.cfg.target, s.key) }),
  schema: (db, s) => ({
    ...streamCommon(db, s),
    kind: "schema",
    create: db.create,
    recreate: s.recreate,
    ...(db.name === MAINTENANCE_DB ? { intoExisting: true } : {}),
  }),
  slice: (db, s) => {
    const slice = s.slice!;
    return {
      ...streamCommon(db, s),
      // The tables are in the slice itself; the schema and post jobs' list is not needed here.
      streamed: [],
      kind: "slice",
      slice: slice.id,
      tables: sliceTables(slice, s.cfg),
      ...(s.cfg.verify === "checksum" ? { checksum: true } : {}),
    };
  },
  whole: (db, s) => ({
    ...streamCommon(db, s),
    kind: "whole",
    create: db.create,
    recreate: s.recreate,
    ...(db.name === MAINTENANCE_DB ? { intoExisting: true } : {}),
    jobs: jobsFor(db.sizeBytes, s.cfg.jobs),
    tables: sliceTables(s.slice, s.cfg),
    ...(s.cfg.verify === "checksum" ? { checksum: true } : {}),
  }),
  post: (db, s) => ({
    ...streamCommon(db, s),
    kind: "post",
    jobs: jobsFor(db.sizeBytes, s.cfg.jobs),
    copied: copiedTables(db),
    ...(s.cfg.verify === "checksum" ? { checksum: true } : {}),
  }),
};

/** A slice's tables as its job carries them: columns, COPY format, the columns hashed, a part's pages. */
function sliceTables(slice: PlannedSlice | undefined, cfg: MigrateConfig) {
  return (slice?.tables ?? []).map((t) => ({
    schema: t.schema,
    name: t.name,
    columns: t.columns,
    binary: t.binary,
    ...(cfg.verify === "checksum" ? { hashColumns: t.hashColumns } : {}),
    ...(slice?.part ? { pages: { from: slice.part.from, to: slice.part.to } } : {}),
  }));
}

/** What every job of a streamed database carries: both servers, the holder's snapshot, the marker schema. */
function streamCommon(db: DbState, s: JobSpec) {
  const stream = db.stream!;
  return {
    ...common(db, s),
    dumpPath: posix.join(s.runId, db.key),
    source: conn(s.cfg.source, s.key),
    target: conn(s.cfg.target, s.key),
    snapshot: stream.snapshot,
    markerSchema: stream.markerSchema,
    streamed: stream.streamed,
    maintenanceDb: s.cfg.targetDb,
    ...(s.cfg.noOwner ? { noOwner: true } : {}),
    ...(s.cfg.noTablespaces ? { noTablespaces: true } : {}),
  };
}

/** Per streamed table, its slices' counts summed over its parts: rows sent, rows copied, the source checksum. */
export function sliceSums(
  db: DbState,
): { key: string; schema: string; name: string; sent: number; copied: number; checksum?: string }[] {
  const byTable = new Map<
    string,
    { key: string; schema: string; name: string; sent: number; copied: number; checksum?: string }
  >();
  for (const slice of db.stream?.slices ?? []) {
    for (const c of slice.counts ?? []) {
      const key = JSON.stringify([c.schema, c.name]);
      const t = byTable.get(key) ?? { key, schema: c.schema, name: c.name, sent: 0, copied: 0 };
      t.sent += c.sent;
      t.copied += c.copied;
      if (c.checksum !== undefined) t.checksum = (BigInt(t.checksum ?? "0") + BigInt(c.checksum)).toString();
      byTable.set(key, t);
    }
  }
  return [...byTable.values()];
}

/** Each streamed table's rows as its slices counted them, with its source checksum: what the post job checks. */
function copiedTables(db: DbState): { schema: string; name: string; rows: number; checksum?: string }[] {
  return sliceSums(db).map((t) => ({
    schema: t.schema,
    name: t.name,
    rows: t.copied,
    ...(t.checksum !== undefined ? { checksum: t.checksum } : {}),
  }));
}

function common(db: DbState, s: JobSpec) {
  return {
    v: CONTRACT_VERSION,
    runId: s.runId,
    jobId: s.jobId,
    db: { name: db.name, key: db.key },
    maxAttempts: s.cfg.maxDeliver,
    ...(s.attemptsBefore ? { attemptsBefore: s.attemptsBefore } : {}),
  } as const;
}

function conn(s: ServerSpec, key: SharedKey | undefined): ConnSpec {
  return {
    host: s.host,
    port: s.port,
    user: s.user,
    ...(s.sslmode ? { sslmode: s.sslmode } : {}),
    ...(s.sslrootcert ? { sslrootcert: s.sslrootcert } : {}),
    ...(s.sslcert ? { sslcert: s.sslcert } : {}),
    ...(s.sslkey ? { sslkey: s.sslkey } : {}),
    ...(key && s.password !== undefined ? { password: seal(key, s.password) } : {}),
  };
}
