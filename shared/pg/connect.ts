// Connections with errors a user can act on: which server, which user, what to fix.
import { connect as netConnect } from "node:net";
import pg from "pg";
import { ConnectError, errorMessage } from "../errors.js";
import { libpqPassword } from "./passwords.js";
import { driverSsl, type PgTls } from "./tls.js";

export interface ServerSpec extends PgTls {
  /** "source" or "target": named in every error. */
  role: string;
  host: string;
  port: number;
  user: string;
  /** Undefined: as libpq would, PGPASSWORD, then the password file (PGPASSFILE or ~/.pgpass). */
  password: string | undefined;
  /** Where the password came from ("--from-pass", "~/.pgpass", …): named when the server refuses it. */
  passwordFrom?: string | undefined;
}

export function describe(s: ServerSpec, db?: string): string {
  return `${s.role} ${s.host}:${s.port}${db ? `/${db}` : ""} as ${s.user}`;
}

/** Servers that answered "no TLS" to a prefer/allow connection: later connections go plain at once. */
const withoutTls = new Set<string>();

/**
 * A session on one server's database. `replication: "database"`: a logical replication connection (a walsender
 * that also takes SQL), for CREATE_REPLICATION_SLOT.
 */
export async function connect(
  given: ServerSpec,
  database: string,
  appName = "pg-migrate",
  opts: { replication?: "database" } = {},
): Promise<pg.Client> {
  const s = given.password === undefined ? await withLibpqPassword(given, database) : given;
  const { ssl, fallback } = driverSsl(s, s.role);
  const server = `${s.host}:${s.port}`;
  if (!(fallback && withoutTls.has(server))) {
    try {
      return await connectWith(s, database, appName, ssl, opts);
    } catch (err) {
      // prefer/allow: a server without TLS is fine, as with libpq (which goes on in the same connection; the
      // driver cannot, so it opens a second one, once per server).
      if (!fallback || !/does not support SSL/i.test(errorMessage(err))) throw wrap(s, database, err);
      withoutTls.add(server);
    }
  }
  try {
    return await connectWith(s, database, appName, false, opts);
  } catch (err) {
    throw wrap(s, database, err);
  }
}

/** No password given: the one libpq would find for this very database (PGPASSWORD, then the password file). */
async function withLibpqPassword(s: ServerSpec, database: string): Promise<ServerSpec> {
  const found = await libpqPassword({ host: s.host, port: s.port, database, user: s.user });
  return found ? { ...s, password: found.password, passwordFrom: found.from } : s;
}

async function connectWith(
  s: ServerSpec,
  database: string,
  appName: string,
  ssl: pg.ClientConfig["ssl"],
  opts: { replication?: "database" },
): Promise<pg.Client> {
  const client = new pg.Client({
    ...(opts.replication ? { replication: opts.replication } : {}),
    host: s.host,
    port: s.port,
    user: s.user,
    password: s.password ?? "",
    database,
    application_name: appName,
    connectionTimeoutMillis: 15_000,
    ssl,
  });
  // An idle client whose server goes away emits 'error'; without a listener that would crash the process.
  client.on("error", () => undefined);
  try {
    await client.connect();
    // pg-migrate's sessions wait by design (for a worker, a dump, a lock): a server that ends idle sessions
    // (idle_session_timeout, PostgreSQL 14+) or idle transactions must not end them. One statement on every major.
    await client.query(
      "SELECT set_config(name, '0', false) FROM pg_settings WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout')",
    );
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/**
 * Whether an error says the server itself is away for now (stopped, restarting, in recovery, or the connection cut
 * by it, also as the driver says it of a client whose connection broke), rather than anything about the statement:
 * worth waiting for, never a failed attempt.
 */
export function serverUnavailable(err: unknown): boolean {
  const code = (err as { code?: string }).code ?? "";
  const text = `${errorMessage(err)}\n${(err as { stderrTail?: string }).stderrTail ?? ""}`;
  return (
    /^(57P0[1-3]|08)/.test(code) ||
    ["ECONNREFUSED", "ECONNRESET", "EPIPE"].includes(code) ||
    /connection refused|Connection terminated unexpectedly|the database system is (starting up|shutting down|in recovery mode|not yet accepting connections)|terminating connection (due to administrator command|because of crash of another server process)|server closed the connection unexpectedly|no connection to the server|Client has encountered a connection error and is not queryable/i.test(
      text,
    )
  );
}

/**
 * Whether an error is one no retry can mend, because it says something about the servers' contents or rights that
 * stays so until a person changes it: a permission refused, a database or role that does not exist. Read from
 * the driver's SQLSTATE or from a native tool's stderr. Not among them: a relation that vanished (a concurrent DROP
 * on the source is mended by a new snapshot), a refused login (one worker's own password may be wrong where
 * another's is right), and a full lock table (shared by every session: it may have room once other dumps are done).
 */
export function deterministicFailure(err: unknown): boolean {
  const code = (err as { code?: string }).code ?? "";
  const text = `${errorMessage(err)}\n${(err as { stderrTail?: string }).stderrTail ?? ""}`;
  return (
    /^(42501|3D000|42704)$/.test(code) ||
    /permission denied for |must be owner of |database "[^\n]*" does not exist|role "[^\n]*" does not exist/i.test(text)
  );
}

const wrap = (s: ServerSpec, database: string, err: unknown) =>
  new ConnectError(`cannot connect to ${describe(s, database)}: ${explain(err, s)}`, { cause: err });

/** A client for fn's duration; when signal aborts, the connection is closed, which fails a query still running. */
export async function withClient<T>(
  s: ServerSpec,
  database: string,
  fn: (c: pg.Client) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  const client = await connect(s, database);
  const unblock = endOnAbort(client, signal);
  try {
    return await fn(client);
  } finally {
    unblock();
    await client.end().catch(() => undefined);
  }
}

/**
 * Closes the client when signal aborts (a query waiting on a lock must not keep a stopping worker alive). What the
 * session runs is cancelled first: a backend waiting on a lock does not read its socket, so a closed connection
 * alone would leave it on the server, waiting, until the lock went.
 */
export function endOnAbort(client: pg.Client, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => undefined;
  const end = () =>
    void cancelRunning(client)
      .then(() => client.end())
      .catch(() => undefined);
  if (signal.aborted) end();
  signal.addEventListener("abort", end, { once: true });
  return () => signal.removeEventListener("abort", end);
}

function explain(err: unknown, s: ServerSpec): string {
  const code = (err as { code?: string }).code;
  const flag = s.role === "source" ? "--from" : "--to";
  if (code === "ECONNREFUSED") return "connection refused (is the server running and listening on that address?)";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "host name not found";
  if (code === "ETIMEDOUT") return "connection timed out (is the host reachable?)";
  if (code === "28P01")
    return `password authentication failed (${s.passwordFrom ? `the password came from ${s.passwordFrom}` : "no password was found: none given, no PGPASSWORD, no matching ~/.pgpass entry"}; check it)`;
  if (/no pg_hba\.conf entry/i.test(errorMessage(err)) && /no encryption/i.test(errorMessage(err)))
    return `${errorMessage(err)} (the server wants TLS: use ${flag}-sslmode require or verify-full)`;
  if (code === "28000") return `not allowed (${errorMessage(err)}; check pg_hba.conf)`;
  if (code === "3D000") return `database does not exist`;
  if (
    code === "SELF_SIGNED_CERT_IN_CHAIN" ||
    code === "DEPTH_ZERO_SELF_SIGNED_CERT" ||
    code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE" ||
    code === "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
  ) {
    return `the server's TLS certificate is not signed by a CA this host trusts (${code}): give its CA with ${flag}-sslrootcert`;
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID")
    return `the server's TLS certificate does not name ${s.host} (${errorMessage(err)}): connect by a name the certificate holds, or use ${flag}-sslmode verify-ca`;
  if (/does not support SSL/i.test(errorMessage(err)))
    return `the server does not accept TLS connections: enable ssl there, or use ${flag}-sslmode prefer or disable`;
  return errorMessage(err);
}

/** The wire protocol's CancelRequest code (PostgreSQL's frontend/backend protocol, "Canceling Requests"). */
const CANCEL_REQUEST_CODE = 80877102;

/**
 * Asks the server to cancel whatever the client's session is running, as libpq's PQcancel does: a CancelRequest
 * with the session's process id and secret key, on a connection of its own, which the server reads before any
 * authentication or TLS. Resolves within CANCEL_WAIT_MS whatever happens; a session running nothing ignores it.
 */
export function cancelRunning(client: pg.Client): Promise<void> {
  const c = client as unknown as { processID: number | null; secretKey: number | null; host: string; port: number };
  if (c.processID === null || c.secretKey === null || !c.host) return Promise.resolve();
  return new Promise((resolve) => {
    const sock = c.host.startsWith("/") ? netConnect(`${c.host}/.s.PGSQL.${c.port}`) : netConnect(c.port, c.host);
    const done = () => {
      sock.destroy();
      resolve();
    };
    sock.setTimeout(CANCEL_WAIT_MS, done);
    sock.on("error", done);
    sock.on("close", done);
    sock.on("connect", () => {
      try {
        const packet = Buffer.alloc(16);
        packet.writeInt32BE(16, 0);
        packet.writeInt32BE(CANCEL_REQUEST_CODE, 4);
        packet.writeInt32BE(c.processID!, 8);
        packet.writeInt32BE(c.secretKey!, 12); // pg-protocol reads it as a signed int32
        sock.end(packet);
      } catch {
        done(); // a key of another shape (a later protocol): no cancel, the connection is closed all the same
      }
    });
  });
}
const CANCEL_WAIT_MS = 2_000;
