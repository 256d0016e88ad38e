// The JSON report's schema: what ~/.pg-migrate/reports/<run>.json (and --report PATH) holds. Versioned by
// reportVersion; fields are only ever added. Published as docs/schemas/report.schema.json.
import { z } from "zod";
import { VerifyTable } from "./messages.js";

const Server = z.object({
  host: z.string(),
  port: z.number().int(),
  user: z.string(),
  db: z.string(),
  systemId: z.string().nullable(),
  version: z.string(),
});
const Timings = z.object({ dump: z.number(), restore: z.number(), verify: z.number(), analyze: z.number() }).partial();
const PerKind = <T extends z.ZodType>(t: T) => z.object({ dump: t, restore: t, verify: t }).partial();

export const ReportSchema = z.object({
  reportVersion: z.literal(1),
  runId: z.string(),
  status: z.enum(["running", "interrupted", "failed", "finished", "abandoned"]),
  startedAt: z.string(),
  finishedAt: z.string(),
  resumedAt: z.array(z.string()),
  source: Server,
  target: Server,
  /** The run's options, passwords excluded. */
  options: z.record(z.string(), z.unknown()),
  fastRestore: z.object({
    mode: z.string(),
    applied: z.boolean(),
    reverted: z.boolean(),
    original: z.array(z.object({ name: z.string(), setting: z.string(), autoConf: z.string().nullable() })),
    skippedReason: z.string().optional(),
  }),
  globals: z.object({
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
  }),
  skipped: z.array(z.object({ name: z.string(), reason: z.string() })),
  /** What crossing majors changes that a user must know (public schema defaults, settings the target lacks, extension versions, removed features), each naming its object. */
  upgradeNotes: z.array(z.object({ what: z.string(), object: z.string(), note: z.string() })).optional(),
  dumpRoot: z.string(),
  /** This run's dumps (directories created 0700): kept or removed, and why. */
  dumps: z.object({ path: z.string(), kept: z.boolean(), why: z.string() }),
  /** warnings: what verification named but pg_dump cannot preserve (column order, refreshed materialized views). */
  totals: z.object({
    databases: z.number().int(),
    verified: z.number().int(),
    failed: z.number().int(),
    rows: z.number(),
    warnings: z.number().int().optional(),
  }),
  databases: z.array(
    z.object({
      name: z.string(),
      key: z.string(),
      sizeBytes: z.number(),
      phase: z.string(),
      /** true: migrated and every check passed. */
      verified: z.boolean(),
      created: z.boolean(),
      dumpPath: z.string().optional(),
      dumpBytes: z.number().optional(),
      tables: z.number().int().optional(),
      rows: z.number().optional(),
      verifiedRows: z.number().optional(),
      sequences: z.number().int().optional(),
      mismatches: z
        .array(
          z.object({
            what: z.string(),
            object: z.string(),
            source: z.string().nullable(),
            target: z.string().nullable(),
          }),
        )
        .optional(),
      /** Differences pg_dump cannot avoid, named with what they mean: not failures. */
      warnings: z
        .array(
          z.object({
            what: z.string(),
            object: z.string(),
            source: z.string().nullable(),
            target: z.string().nullable(),
            note: z.string(),
          }),
        )
        .optional(),
      /** Whether the database's own properties (ALTER DATABASE … SET, limit, comment, grants) were applied, and why not. */
      properties: z
        .object({
          applied: z.boolean(),
          why: z.string().optional(),
          skipped: z.array(z.string()).optional(),
          none: z.boolean().optional(),
        })
        .optional(),
      detailPath: z.string().optional(),
      timings: Timings,
      attempts: PerKind(z.number().int()),
      workers: PerKind(z.string()),
      error: z.string().optional(),
      stderrTail: z.string().optional(),
      /** Every table's exact row count on both sides (null: missing on that side). */
      tableCounts: z.array(VerifyTable),
    }),
  ),
});
export type Report = z.infer<typeof ReportSchema>;
