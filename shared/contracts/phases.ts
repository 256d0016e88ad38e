// Phases are data: declared once, they drive the scheduler, the logs and the report.

export const DB_PHASES = [
  "planned",
  "dumping",
  "dumped",
  "restoring",
  "restored",
  "verifying",
  "done",
  "failed",
] as const;
export type DbPhase = (typeof DB_PHASES)[number];

export const JOB_KINDS = ["dump", "restore", "verify"] as const;
export type JobKind = (typeof JOB_KINDS)[number];

/** The phase a database is in while a job of this kind runs, and the one it reaches when it succeeds. */
export const JOB_PHASES: { [K in JobKind]: { running: DbPhase; finished: DbPhase } } = {
  dump: { running: "dumping", finished: "dumped" },
  restore: { running: "restoring", finished: "restored" },
  verify: { running: "verifying", finished: "done" },
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

export const RUN_STEPS = [
  "preflight",
  "discovery",
  "fast-restore",
  "globals",
  "databases",
  "jobs",
  "report",
  "cleanup",
] as const;
export type RunStep = (typeof RUN_STEPS)[number];
