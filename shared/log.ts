// Structured logs: pino, scoped by child loggers (runId, db, job, worker). Secrets are redacted by path, and
// nothing that holds one is ever passed to a logger in the first place.

import { dirname } from "node:path";
import pino from "pino";
import pretty from "pino-pretty";
import { makeDirSync } from "./dirs.js";

export type Logger = pino.Logger;

export const REDACT_PATHS = [
  "password",
  "*.password",
  "*.*.password",
  "PGPASSWORD",
  "*.PGPASSWORD",
  "env.PGPASSWORD",
  "secret",
  "*.secret",
  "pass",
  "*.pass",
  "token",
  "*.token",
];

export interface LogOptions {
  level: string;
  /** JSON lines into this file (created with its folder). */
  file?: string | undefined;
  /** Also JSON on stderr at this level. */
  stderrLevel?: string | undefined;
  base?: Record<string, unknown>;
}

export function createLogger(opts: LogOptions): Logger {
  const streams: pino.StreamEntry[] = [];
  if (opts.file) {
    makeDirSync(dirname(opts.file));
    streams.push({
      level: opts.level as pino.Level,
      stream: pino.destination({ dest: opts.file, sync: true, mode: 0o600 }),
    });
  }
  if (opts.stderrLevel) {
    // JSON for machines; on a terminal, pino-pretty's one readable line per entry (with its scope: run, db, job, worker).
    const stream = process.stderr.isTTY
      ? pretty({
          colorize: true,
          sync: true,
          destination: 2,
          translateTime: "SYS:HH:MM:ss",
          ignore: "pid,hostname",
          singleLine: true,
        })
      : pino.destination({ dest: 2, sync: true });
    streams.push({ level: opts.stderrLevel as pino.Level, stream });
  }
  const lowest = streams.length ? streams.map((s) => s.level).sort(byLevel)[0] : "silent";
  return pino(
    { level: lowest as string, redact: { paths: REDACT_PATHS, censor: "[redacted]" }, base: opts.base ?? {} },
    streams.length ? pino.multistream(streams) : undefined,
  );
}

const order = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
function byLevel(a: unknown, b: unknown): number {
  return order.indexOf(String(a)) - order.indexOf(String(b));
}
