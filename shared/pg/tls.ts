// TLS to PostgreSQL, the same for the pg driver and for the native tools: libpq's sslmode and its certificate
// files, turned into node's TLS options for the driver and into PGSSL* variables for pg_dump and friends.
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import type { ConnectionOptions } from "node:tls";
import { ConfigError } from "../errors.js";
import { readFlagFile } from "../flag-file.js";

export const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const;
export type SslMode = (typeof SSL_MODES)[number];

/** libpq's names. Paths must be valid on every host that connects (the coordinator and each worker). */
export interface PgTls {
  sslmode?: string | undefined;
  sslrootcert?: string | undefined;
  sslcert?: string | undefined;
  sslkey?: string | undefined;
}

/** The variables libpq reads, for a native tool's environment. */
export function tlsEnv(t: PgTls): Record<string, string> {
  const env: Record<string, string> = {};
  if (t.sslmode) env.PGSSLMODE = t.sslmode;
  if (t.sslrootcert) env.PGSSLROOTCERT = t.sslrootcert;
  if (t.sslcert) env.PGSSLCERT = t.sslcert;
  if (t.sslkey) env.PGSSLKEY = t.sslkey;
  return env;
}

/**
 * The driver's `ssl` option. libpq's default (prefer) and allow try TLS without checking the certificate and
 * fall back to a plain connection when the server has no TLS (the caller retries with `false`).
 */
export function driverSsl(t: PgTls, role: string): { ssl: false | ConnectionOptions; fallback: boolean } {
  const mode = (t.sslmode ?? "prefer") as SslMode;
  if (mode === "disable") return { ssl: false, fallback: false };
  const files = clientFiles(t, role);
  if (mode === "allow" || mode === "prefer") return { ssl: { rejectUnauthorized: false, ...files }, fallback: true };
  const ca = rootCert(t, role);
  // require checks nothing, unless a root certificate is given: then, as in libpq, it means verify-ca.
  if (mode === "require" && !ca) return { ssl: { rejectUnauthorized: false, ...files }, fallback: false };
  if (!ca) {
    // As libpq: verifying against no CA of one's own would trust every public CA, and verify-ca then any name.
    const flag = `--${role === "source" ? "from" : "to"}-sslrootcert`;
    throw new ConfigError(
      `--${role === "source" ? "from" : "to"}-sslmode ${mode} needs the CA that signed the ${role}'s certificate: give it with ${flag} (or put it in ~/.postgresql/root.crt)`,
      flag,
    );
  }
  const verify: ConnectionOptions = { rejectUnauthorized: true, ca, ...files };
  if (mode !== "verify-full") verify.checkServerIdentity = () => undefined;
  return { ssl: verify, fallback: false };
}

function rootCert(t: PgTls, role: string): string | undefined {
  const file = t.sslrootcert ?? defaultFile("root.crt");
  return file ? readPem(file, role, "sslrootcert") : undefined;
}

function clientFiles(t: PgTls, role: string): Pick<ConnectionOptions, "cert" | "key"> {
  const cert = t.sslcert ?? defaultFile("postgresql.crt");
  const key = t.sslkey ?? defaultFile("postgresql.key");
  if (!cert || !key) return {};
  return { cert: readPem(cert, role, "sslcert"), key: readPem(key, role, "sslkey") };
}

/** libpq's defaults under ~/.postgresql, when they exist. */
function defaultFile(name: string): string | undefined {
  const file = join(homedir(), ".postgresql", name);
  return existsSync(file) ? file : undefined;
}

function readPem(file: string, role: string, what: string): string {
  return readFlagFile(file, `--${role === "source" ? "from" : "to"}-${what}`, `the ${role}'s ${what} file`);
}
