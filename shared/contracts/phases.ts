// Phases are data: declared once, they drive the scheduler, the logs and the report.

export const DB_PHASES = [
  "planned",
  /** --via stream: the schema step and the data slices are running (restoring: its post-data step). */
  "copying",
  "dumping",
  "dumped",
  "restoring",
  "restored",
  "verifying",
  "done",
  "failed",
] as const;
export type DbPhase = (typeof DB_PHASES)[number];

export const JOB_KINDS = ["dump", "restore", "verify", "schema", "slice", "post", "whole"] as const;
export type JobKind = (typeof JOB_KINDS)[number];
/**
 * The jobs of the streamed path (--via stream): a database's schema, its data slices, its post-data and checks; or,
 * for a database that is one slice, all of it in one job.
 */
export const STREAM_KINDS = ["schema", "slice", "post", "whole"] as const satisfies readonly JobKind[];
export type StreamKind = (typeof STREAM_KINDS)[number];
export const isStreamKind = (k: JobKind): k is StreamKind => (STREAM_KINDS as readonly JobKind[]).includes(k);

/** The phase a database is in while a job of this kind runs, and the one it reaches when it succeeds. */
export const JOB_PHASES: { [K in JobKind]: { running: DbPhase; finished: DbPhase } } = {
  dump: { running: "dumping", finished: "dumped" },
  restore: { running: "restoring", finished: "restored" },
  verify: { running: "verifying", finished: "done" },
  // A streamed database is "copying" from its schema job to its last slice; its post job ends in "done".
  schema: { running: "copying", finished: "copying" },
  slice: { running: "copying", finished: "copying" },
  post: { running: "restoring", finished: "done" },
  // A streamed database small enough for one slice: schema, data and post-data in one job.
  whole: { running: "copying", finished: "done" },
};

/** Whether a database has reached the end of its run: verified, or given up on. */
export function isTerminal(phase: DbPhase): boolean {
  return phase === "done" || phase === "failed";
}

/** The next job a database needs, given the phase it reached; undefined when it needs none. */
export function nextJobFor(phase: DbPhase): JobKind | undefined {
  switch (phase) {
    case "planned":
    case "dumping":
      return "dump";
    case "copying":
      return "schema";
    case "dumped":
    case "restoring":
      return "restore";
    case "restored":
    case "verifying":
      return "verify";
    case "done":
    case "failed":
      return undefined;
  }
}

/**
 * A run, in order (coordinator/run.ts runs them as a loop, logs each as STEP n with its timing, and the report
 * keeps the timings). Nothing changes on the target before "lock"; the target's settings change in
 * "fast-restore" and go back in "finish", which runs whatever happened before it.
 */
export const RUN_STEPS = [
  /** Both servers, the tools, discovery, conflicts, connections, an earlier run, the dump volume, the broker. */
  "preflight",
  /** The target's lock: this home's file and the target's advisory lock. */
  "lock",
  /** The embedded nats-server or the given one: streams, buckets, and the lock in the KV. */
  "broker",
  /** An unfinished run resumed (what it left on the target put back first), or a new run recorded. */
  "resume",
  /** Local workers started (embedded), every worker awaited; with --restart the old run's databases dropped. */
  "workers",
  /** The target's settings saved, then switched to fast-restore mode. */
  "fast-restore",
  /** Roles and tablespaces; a target user that is not a superuser joins the migrated roles. */
  "globals",
  /** Each database created, dumped, restored and verified through the workers. */
  "jobs",
  /** Workers stopped, roles left, the target's settings reverted, the report written. */
  "finish",
] as const;
export type RunStep = (typeof RUN_STEPS)[number];
