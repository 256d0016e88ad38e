// Creating a folder and its parents. Node 20's own recursive mkdir never settles on some paths (/proc/x loops
// forever, and its sync twin blocks the process), so each level is created on its own: every failure is an error.
import { mkdirSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, resolve } from "node:path";

/** The path and its missing parents, outermost first. */
function levels(path: string): string[] {
  const out: string[] = [];
  for (let p = resolve(path); ; p = dirname(p)) {
    out.unshift(p);
    if (dirname(p) === p) return out;
  }
}

const exists = (err: unknown) => (err as NodeJS.ErrnoException).code === "EEXIST";

export async function makeDir(path: string, mode = 0o700): Promise<void> {
  for (const p of levels(path)) {
    try {
      await mkdir(p, { mode });
    } catch (err) {
      if (!exists(err)) throw err;
    }
  }
}

export function makeDirSync(path: string, mode = 0o700): void {
  for (const p of levels(path)) {
    try {
      mkdirSync(p, { mode });
    } catch (err) {
      if (!exists(err)) throw err;
    }
  }
}
