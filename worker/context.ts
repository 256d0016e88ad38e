// What a handler needs besides its job: the tools, the dump root, the credentials this worker holds.
import type { ConnSpec, JobOf } from "../shared/contracts/messages.js";
import type { JobKind } from "../shared/contracts/phases.js";
import type { JobResult, Progress } from "../shared/contracts/messages.js";
import type { Logger } from "../shared/log.js";
import { PermanentJobError } from "../shared/errors.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { SECRET_ENV, unseal, type SharedKey } from "../shared/secrets.js";
import type { Toolset } from "../shared/tools.js";

export interface WorkerContext {
  id: string;
  dumpRoot: string;
  tools: Toolset;
  key: SharedKey | undefined;
  /** Passwords this worker was given itself (PGMIGRATE_FROM_PASS / PGMIGRATE_TO_PASS), used when a job carries none. */
  ownPasswords: { source: string | undefined; target: string | undefined };
}

export interface JobRun {
  attempt: number;
  signal: AbortSignal;
  log: Logger;
  progress(p: Omit<Progress, "stage">): void;
}

export type Handler<K extends JobKind> = (
  job: JobOf<K>,
  run: JobRun,
  ctx: WorkerContext,
) => Promise<Extract<JobResult, { kind: K }>>;
export type Handlers = { [K in JobKind]: Handler<K> };

export function serverFor(role: "source" | "target", conn: ConnSpec, ctx: WorkerContext): ServerSpec {
  const { host, port, user, sslmode, sslrootcert, sslcert, sslkey } = conn;
  return { role, host, port, user, sslmode, sslrootcert, sslcert, sslkey, password: passwordFor(role, conn, ctx) };
}

function passwordFor(role: "source" | "target", conn: ConnSpec, ctx: WorkerContext): string | undefined {
  if (!conn.password) return ctx.ownPasswords[role];
  if (!ctx.key) {
    throw new PermanentJobError(
      `the job carries the ${role} password sealed, but this worker has no shared key: set ${SECRET_ENV} (or PGMIGRATE_SECRET_FILE) to the coordinator's key`,
    );
  }
  try {
    return unseal(ctx.key, conn.password);
  } catch {
    throw new PermanentJobError(
      `the ${role} password in the job cannot be opened with this worker's ${SECRET_ENV}: the keys differ`,
    );
  }
}
