// The JSON report's schema: what ~/.pg-migrate/reports/<run>.json (and --report PATH) holds. Versioned by
// reportVersion; fields are only ever added. Published as docs/schemas/report.schema.json.
import { z } from "zod";
import { VerifyTable } from "./messages.js";
import { DbStateSchema, RunRecordSchema, SliceStateSchema } from "./record.js";

// The record's parts, as the run record has them: the report restates nothing of it by hand.
const fromRecord = RunRecordSchema.pick({
  runId: true,
  status: true,
  startedAt: true,
  resumedAt: true,
  source: true,
  target: true,
  options: true,
  fastRestore: true,
  globals: true,
  skipped: true,
  upgradeNotes: true,
  steps: true,
}).shape;

const ReportDatabase = DbStateSchema.pick({
  name: true,
  key: true,
  sizeBytes: true,
  phase: true,
  created: true,
  dumpPath: true,
  dumpBytes: true,
  tables: true,
  rows: true,
  verifiedRows: true,
  sequences: true,
  mismatches: true,
  warnings: true,
  properties: true,
  detailPath: true,
  timings: true,
  attempts: true,
  workers: true,
  error: true,
  stderrTail: true,
  via: true,
}).extend({
  /** --via stream: the database's slices (which worker did each), and whether and why it started over. */
  stream: z
    .object({
      restarts: z.number().int(),
      restartedBecause: z.string().optional(),
      keptSlices: z.number().int().optional(),
      slices: z.array(SliceStateSchema.omit({ jobId: true, jobSeq: true })),
    })
    .optional(),
  /** true: migrated and every check passed. */
  verified: z.boolean(),
  /** Every table's exact row count on both sides (null: missing on that side). */
  tableCounts: z.array(VerifyTable),
});

export const ReportSchema = z.object({
  reportVersion: z.literal(1),
  ...fromRecord,
  finishedAt: z.string(),
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
  databases: z.array(ReportDatabase),
});
export type Report = z.infer<typeof ReportSchema>;
