// Where a password comes from, in the order a libpq user expects: pg-migrate's own flag, file or environment
// variable first, then PGPASSWORD, then the password file (PGPASSFILE, else ~/.pgpass, with libpq's rules:
// host, port, database and user, `*` for any, ignored unless it is 0600). Every connection error names the source,
// so a wrong password in ~/.pgpass does not read like a wrong flag.
import { join } from "node:path";
import pgpass from "pgpass";
import { homeDir } from "../paths.js";

export interface PasswordLookup {
  host: string;
  port: number;
  database: string;
  user: string;
}

/** The password file libpq reads: PGPASSFILE, else ~/.pgpass. */
export function passwordFilePath(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGPASSFILE || join(homeDir(), ".pgpass");
}

/** The password file's entry for this connection, if there is one (and the file is private, as libpq insists). */
export function fromPasswordFile(c: PasswordLookup): Promise<string | undefined> {
  return new Promise((resolve) => {
    try {
      pgpass({ host: c.host, port: c.port, database: c.database, user: c.user }, (password) => resolve(password));
    } catch {
      resolve(undefined);
    }
  });
}

/** How a source of a password is named in messages: "~/.pgpass" or the PGPASSFILE path. */
export function passwordFileName(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGPASSFILE ? `PGPASSFILE (${env.PGPASSFILE})` : "~/.pgpass";
}

/**
 * What libpq itself would use when pg-migrate was given no password: PGPASSWORD, else the password file.
 * Undefined (and no source) when neither has one.
 */
export async function libpqPassword(
  c: PasswordLookup,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ password: string; from: string } | undefined> {
  if (env.PGPASSWORD !== undefined && env.PGPASSWORD !== "") return { password: env.PGPASSWORD, from: "PGPASSWORD" };
  const filed = await fromPasswordFile(c);
  return filed === undefined ? undefined : { password: filed, from: passwordFileName(env) };
}
