// The coordinator's configuration: parsed once (flags, then PGMIGRATE_* environment, then defaults) into a
// frozen, typed object.
import { describeAuth, withoutCredentials, type NatsAuth } from "../shared/nats.js";
import type { ServerSpec } from "../shared/pg/connect.js";

export const VIAS = ["auto", "volume", "stream"] as const;
export type Via = (typeof VIAS)[number];

export const FAST_RESTORE_MODES = ["safe", "full", "off"] as const;
export type FastRestoreMode = (typeof FAST_RESTORE_MODES)[number];

export interface MigrateConfig {
  source: ServerSpec;
  /** The source database used for discovery and globals. */
  sourceDb: string;
  target: ServerSpec;
  /** The target database used for server settings, globals and CREATE DATABASE. */
  targetDb: string;
  jobs: number;
  /** Databases restoring at once; as many may be dumping or dumped ahead of them. */
  maxParallel: number;
  /** Whether -j / -m were given (a given value that does not fit the servers' connections is refused, a default shrinks). */
  parallelismGiven: { jobs: boolean; maxParallel: boolean };
  dumpRoot: string;
  /**
   * How the data moves: volume (pg_dump -Fd into the dump root, pg_restore from it), stream (table slices under one
   * snapshot), or auto: per database, whichever the bench found faster for it (via.ts).
   */
  via: Via;
  migrateGlobals: boolean;
  /** false (--no-role-passwords): roles without their password verifiers, for sources that hide pg_authid. */
  rolePasswords: boolean;
  /** count: every table's exact row count; checksum: also an order-independent hash of its content. */
  verify: "count" | "checksum";
  /** --no-tablespaces: none created, everything in the target's default tablespace (pg_restore --no-tablespaces). */
  noTablespaces: boolean;
  /** --tablespace-location NAME=PATH: where a source tablespace is created on the target. */
  tablespaceLocations: ReadonlyMap<string, string>;
  /** --include-db / --exclude-db: shell-style name patterns that narrow the databases a new run takes. */
  includeDb: string[];
  excludeDb: string[];
  /** --no-owner: restore every object owned by the target user (a target that is not a superuser cannot give objects to one). */
  noOwner: boolean;
  /** Absent: embedded mode (a local nats-server and local workers). */
  natsUrl: string | undefined;
  /** How to log in to that NATS and whether to use TLS (never stored: publicOptions keeps only its description). */
  natsAuth: NatsAuth;
  /** Local workers in embedded mode. */
  workers: number;
  fastRestore: FastRestoreMode;
  compress: string;
  pgBin: string | undefined;
  keepDumps: boolean;
  restart: boolean;
  /** Confirms what --restart drops, without asking. */
  yes: boolean;
  /** --wait: how long to keep trying the source, the target and NATS before the preflight (0: no waiting). */
  waitMs: number;
  workerWaitMs: number;
  ackWaitMs: number;
  maxDeliver: number;
  retryDelayMs: number;
  natsReplicas: number;
  /**
   * --follow: every database streamed under its logical slot's snapshot, then followed by a subscription on the
   * target until `pg-migrate cutover`.
   */
  follow: boolean;
  /** --replica-identity-full: --follow sets REPLICA IDENTITY FULL on the source tables that have no replica identity. */
  replicaIdentityFull: boolean;
  /** --follow-source HOST:PORT: how the target server reaches the source (default: the source's own address). */
  followSource: { host: string; port: number } | undefined;
  /** --report: a second place for the JSON report. */
  reportPath: string | undefined;
  /** --log-level: the run's log lines on stderr too (undefined: only in the log file). */
  logLevel: string | undefined;
}

/** What is safe to write into state files, the KV and reports: everything but the passwords. */
export function publicOptions(cfg: MigrateConfig) {
  const { source, target, natsUrl, natsAuth, ...rest } = cfg;
  const strip = (s: ServerSpec) => ({
    host: s.host,
    port: s.port,
    user: s.user,
    sslmode: s.sslmode,
    sslrootcert: s.sslrootcert,
    sslcert: s.sslcert,
    sslkey: s.sslkey,
  });
  return {
    source: strip(source),
    target: strip(target),
    natsUrl: natsUrl === undefined ? undefined : withoutCredentials(natsUrl),
    natsAuth: describeAuth(natsAuth),
    ...rest,
  };
}
