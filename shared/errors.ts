// Small error classes that carry data. Only the CLI's top level turns them into exit codes and messages.

export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    message: string,
    readonly flag?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A check before anything changes on the target refused the run. */
export class PreflightError extends Error {
  override name = "PreflightError";
}

/** What a native tool's run ended with. */
export interface ToolFailure {
  tool: string;
  exitCode: number | undefined;
  /** The signal that ended it, if one did (a timeout or a cancel ends it with one too). */
  signal: string | undefined;
  /** Ended because it ran longer than its time limit. */
  timedOut: boolean;
  /** Ended because the job was stopped (a signal of ours, not a failure of the tool). */
  cancelled: boolean;
  durationMs: number;
  stderrTail: string;
}

export class ToolError extends Error implements ToolFailure {
  override name = "ToolError";
  readonly tool: string;
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
  readonly timedOut: boolean;
  readonly cancelled: boolean;
  readonly durationMs: number;
  readonly stderrTail: string;
  constructor(f: ToolFailure, options?: ErrorOptions) {
    const how = f.timedOut
      ? `timed out after ${(f.durationMs / 1000).toFixed(1)}s`
      : f.cancelled
        ? "was cancelled"
        : f.signal
          ? `was killed by ${f.signal}`
          : `exited with code ${f.exitCode ?? "?"}`;
    const tail = f.stderrTail.trim().split("\n").filter(Boolean).slice(-3).join(" | ");
    super(`${f.tool} ${how}${tail ? `: ${tail}` : ""}`, options);
    this.tool = f.tool;
    this.exitCode = f.exitCode;
    this.signal = f.signal;
    this.timedOut = f.timedOut;
    this.cancelled = f.cancelled;
    this.durationMs = f.durationMs;
    this.stderrTail = f.stderrTail;
  }
}

/** A server could not be reached or refused the login: said with which server, which user and what to fix. */
export class ConnectError extends Error {
  override name = "ConnectError";
  /** The driver's code (a SQLSTATE, or a socket's), kept so that what the failure means can still be read. */
  readonly code: string | undefined = (this.cause as { code?: string } | undefined)?.code;
}

/** The NATS server could not be reached or refused us. */
export class NatsConnectError extends Error {
  override name = "NatsConnectError";
}

/** A job's failure no retry can mend: the worker terminates the job at once. */
export class PermanentJobError extends Error {
  override name = "PermanentJobError";
}

/** A NATS message that does not match the contract: never retried. */
export class ContractError extends Error {
  override name = "ContractError";
  constructor(
    message: string,
    readonly subject?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The run was interrupted by a signal; the CLI exits 130. */
export class InterruptedError extends Error {
  override name = "InterruptedError";
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
