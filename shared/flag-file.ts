// A file a flag or variable names (a password file, a certificate, a key): read now, and a failure is one line
// that names the file, the flag and the reason.
import { readFileSync } from "node:fs";
import { ConfigError } from "./errors.js";

export function readFlagFile(file: string, flag: string, what = ""): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(
      `cannot read ${what ? `${what} ` : ""}${file} (${flag}): ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      flag,
      { cause: err },
    );
  }
}
