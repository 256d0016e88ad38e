// Connections with errors a user can act on: which server, which user, what to fix.
import pg from "pg";
import { errorMessage } from "../errors.js";

export interface ServerSpec {
  /** "source" or "target": named in every error. */
  role: string;
  host: string;
  port: number;
  user: string;
  password: string | undefined;
  sslmode?: string | undefined;
}

export class ConnectError extends Error {
  override name = "ConnectError";
}

export function describe(s: ServerSpec, db?: string): string {
  return `${s.role} ${s.host}:${s.port}${db ? `/${db}` : ""} as ${s.user}`;
}

export async function connect(s: ServerSpec, database: string, appName = "pg-migrate"): Promise<pg.Client> {
  const client = new pg.Client({
    host: s.host,
    port: s.port,
    user: s.user,
    password: s.password ?? "",
    database,
    application_name: appName,
    connectionTimeoutMillis: 15_000,
    ssl: sslOption(s.sslmode),
  });
  // An idle client whose server goes away emits 'error'; without a listener that would crash the process.
  client.on("error", () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw new ConnectError(`cannot connect to ${describe(s, database)}: ${explain(err)}`, { cause: err });
  }
  return client;
}

/** A client for fn's duration; when signal aborts, the connection is closed, which fails a query still running. */
export async function withClient<T>(s: ServerSpec, database: string, fn: (c: pg.Client) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const client = await connect(s, database);
  const unblock = endOnAbort(client, signal);
  try {
    return await fn(client);
  } finally {
    unblock();
    await client.end().catch(() => undefined);
  }
}

/** Closes the client when signal aborts (a query waiting on a lock must not keep a stopping worker alive). */
export function endOnAbort(client: pg.Client, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => undefined;
  const end = () => void client.end().catch(() => undefined);
  if (signal.aborted) end();
  signal.addEventListener("abort", end, { once: true });
  return () => signal.removeEventListener("abort", end);
}

function sslOption(mode: string | undefined): pg.ClientConfig["ssl"] {
  if (!mode || mode === "disable" || mode === "allow" || mode === "prefer") return false;
  if (mode === "require") return { rejectUnauthorized: false };
  return true;
}

function explain(err: unknown): string {
  const code = (err as { code?: string }).code;
  if (code === "ECONNREFUSED") return "connection refused (is the server running and listening on that address?)";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "host name not found";
  if (code === "ETIMEDOUT") return "connection timed out (is the host reachable?)";
  if (code === "28P01") return "password authentication failed (check the password)";
  if (code === "28000") return `not allowed (${errorMessage(err)}; check pg_hba.conf)`;
  if (code === "3D000") return `database does not exist`;
  return errorMessage(err);
}
