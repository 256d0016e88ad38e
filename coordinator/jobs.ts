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
};

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
