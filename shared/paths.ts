// Where pg-migrate keeps things: under $HOME, as its users expect.
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";

export function homeDir(): string {
  return process.env.HOME || homedir();
}

/** ~/.pg-migrate: state markers, reports, logs, the run lock and the embedded NATS store. */
export function appDir(): string {
  return join(homeDir(), ".pg-migrate");
}

/** --dump-root: relative paths are taken from $HOME, like the original pg-migrate's default "pg_dumps". */
export function resolveDumpRoot(value: string): string {
  return isAbsolute(value) ? resolve(value) : join(homeDir(), value);
}
