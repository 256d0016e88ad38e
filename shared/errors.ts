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

export class ToolError extends Error {
  override name = "ToolError";
  constructor(
    readonly tool: string,
    readonly exitCode: number | undefined,
    readonly signal: string | undefined,
    readonly stderrTail: string,
    options?: ErrorOptions,
  ) {
    const how = signal ? `was killed by ${signal}` : `exited with code ${exitCode ?? "?"}`;
    const tail = stderrTail.trim().split("\n").filter(Boolean).slice(-3).join(" | ");
    super(`${tool} ${how}${tail ? `: ${tail}` : ""}`, options);
  }
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
