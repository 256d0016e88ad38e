// Throwaway local servers for the demo and the integration tests: PostgreSQL clusters and a NATS JetStream
// server, each in its own temp dir, listening only on loopback at a free port, with every connection
// password-checked (SCRAM). Callers tear them down with stop() in a `finally`; an exit hook is only a net.
import { freePort } from "../shared/net.js";
import { findExecutable, pathDirs } from "../shared/tools.js";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync } from "node:fs";
import { appendFile, chown, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";

/* ------------------------------------------------------------------------------------------------------------
 * Shared bits
 * ---------------------------------------------------------------------------------------------------------- */

export { freePort };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The environment without the caller's PG* variables, so a stray PGPORT or PGSERVICE cannot redirect a tool. */
function envWithoutPgVars(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("PG")) env[key] = value;
  }
  return { ...env, ...extra };
}

function tailOf(text: string, lines = 30): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** A log for an error message: the head holds the cause often enough (a bad flag before the usage text). */
function logExcerpt(text: string): string {
  const lines = text.trimEnd().split("\n");
  if (lines.length <= 40) return lines.join("\n");
  return [...lines.slice(0, 8), `[... ${lines.length - 28} lines ...]`, ...lines.slice(-20)].join("\n");
}

/** Bytes appended to a file since `offset`, as text; empty if the file is not there. */
function readSince(file: string, offset: number): string {
  try {
    return readFileSync(file).subarray(offset).toString("utf8");
  } catch {
    return "";
  }
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

// Synchronous last-resort cleanups, run if the process exits while servers are still up.
const exitCleanups = new Set<() => void>();
let exitHookInstalled = false;

function onProcessExit(cleanup: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const fn of exitCleanups) {
        try {
          fn();
        } catch {
          // best effort: the process is going away
        }
      }
    });
  }
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}

/* ------------------------------------------------------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------------------------------------------------- */

/** What a client needs to log in. */
export interface PgLogin {
  host: string;
  port: number;
  user: string;
  password: string;
}

export interface LocalCluster extends PgLogin {
  dataDir: string;
  socketDir: string;
  baseDir: string;
  logFile: string;
  stop(): Promise<void>;
  /** An outage for the fault tests: an immediate stop (as a crash would), downMs of nothing, then a start on the same port. */
  outage(downMs: number): Promise<void>;
}

export interface StartClusterOptions {
  /** Shows in the temp dir name and as cluster_name in `ps`. */
  name: string;
  /** Password of the bootstrap superuser. */
  password: string;
  /** Bootstrap superuser; default 'postgres' (the public sample databases expect that role). */
  user?: string;
  /** Parent dir for the cluster's own temp dir (default os.tmpdir()); the parent itself is never removed. */
  baseDir?: string;
  /** Extra postgresql.conf settings. */
  settings?: Record<string, string>;
  /** TLS with this certificate and key (PEM); `only` refuses every connection without it (hostssl). */
  tls?: { cert: string; key: string; only?: boolean };
  /** Another PostgreSQL's initdb, pg_ctl and postgres (another major, say); default postgresBinDir(). */
  server?: ServerBinaries;
}

/** Where a cluster's server binaries are, and the environment they need (a private LD_LIBRARY_PATH, say). */
export interface ServerBinaries {
  bin: string;
  env?: Record<string, string>;
}

// The OS account that owns the cluster when we run as root: PostgreSQL refuses to run as root.
const SERVER_OS_USER = "postgres";

// A Unix socket path must fit in sun_path (108 bytes with the NUL); `.s.PGSQL.65535` adds 15.
const MAX_SOCKET_DIR_LENGTH = 107 - 15;

const START_ATTEMPTS = 5;

let serverBinDir: Promise<string> | undefined;

/** Directory of initdb/pg_ctl: PGMIGRATE_PG_SERVER_BIN, then pg_config, then the newest Debian install, then PATH. */
export function postgresBinDir(): Promise<string> {
  serverBinDir ??= locatePostgresBinDir();
  return serverBinDir;
}

async function locatePostgresBinDir(): Promise<string> {
  const hasServerTools = async (dir: string) =>
    (await findExecutable("initdb", [dir])) !== undefined && (await findExecutable("pg_ctl", [dir])) !== undefined;

  const forced = process.env.PGMIGRATE_PG_SERVER_BIN;
  if (forced) {
    if (await hasServerTools(forced)) return forced;
    throw new Error(`PGMIGRATE_PG_SERVER_BIN=${forced} has no initdb/pg_ctl`);
  }
  const candidates: string[] = [];
  const pgConfig = await execa("pg_config", ["--bindir"], { reject: false, env: envWithoutPgVars(), extendEnv: false });
  if (!pgConfig.failed && pgConfig.stdout.trim()) candidates.push(pgConfig.stdout.trim());
  // Debian keeps server binaries off PATH, one dir per major version.
  const majors = await readdir("/usr/lib/postgresql").catch(() => [] as string[]);
  for (const major of majors.filter((m) => /^\d+$/.test(m)).sort((a, b) => Number(b) - Number(a))) {
    candidates.push(join("/usr/lib/postgresql", major, "bin"));
  }
  candidates.push(...pathDirs());
  for (const dir of candidates) {
    if (await hasServerTools(dir)) return dir;
  }
  throw new Error(
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install the server (Debian: apt-get install postgresql) " +
      "or set PGMIGRATE_PG_SERVER_BIN",
  );
}

interface ServerAccount {
  /** Command prefix that runs the rest of argv as that account. */
  prefix: string[];
  uid: number;
  gid: number;
}

let serverAccount: Promise<ServerAccount | undefined> | undefined;

/** undefined when not root: then the servers simply run as the current user. */
function serverOsAccount(): Promise<ServerAccount | undefined> {
  serverAccount ??= locateServerAccount();
  return serverAccount;
}

async function locateServerAccount(): Promise<ServerAccount | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const uid = await execa("id", ["-u", SERVER_OS_USER], { reject: false });
  const gid = await execa("id", ["-g", SERVER_OS_USER], { reject: false });
  if (uid.failed || gid.failed) {
    throw new Error(
      `running as root, but there is no OS user '${SERVER_OS_USER}' to run PostgreSQL as (PostgreSQL refuses root)`,
    );
  }
  const sbin = [...pathDirs(), "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
  const runuser = await findExecutable("runuser", sbin);
  const setpriv = await findExecutable("setpriv", sbin);
  const prefix = runuser
    ? [runuser, "-u", SERVER_OS_USER, "--"]
    : setpriv
      ? [setpriv, `--reuid=${SERVER_OS_USER}`, `--regid=${SERVER_OS_USER}`, "--init-groups", "--"]
      : undefined;
  if (!prefix)
    throw new Error("running as root, but neither runuser nor setpriv is available to drop to the postgres user");
  return { prefix, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

export async function giveToServerAccount(path: string): Promise<void> {
  const account = await serverOsAccount();
  if (account) await chown(path, account.uid, account.gid);
}

function serverCommand(account: ServerAccount | undefined, bin: string, args: string[]): [string, string[]] {
  return account ? [account.prefix[0]!, [...account.prefix.slice(1), bin, ...args]] : [bin, args];
}

/** initdb / pg_ctl as the cluster's owner; never throws, the caller reads the result. */
async function runServerTool(
  bin: string,
  args: string[],
  cwd: string,
  timeoutMs: number,
  extraEnv: Record<string, string> = {},
) {
  const [file, argv] = serverCommand(await serverOsAccount(), bin, args);
  return execa(file, argv, {
    cwd, // the caller's cwd may be unreadable for the postgres user (e.g. /root)
    env: envWithoutPgVars({ LC_MESSAGES: "C", ...extraEnv }), // English messages: we match on them
    extendEnv: false,
    reject: false,
    stdin: "ignore",
    timeout: timeoutMs,
  });
}

let cUtf8Available: Promise<boolean> | undefined;

function hasCUtf8Locale(): Promise<boolean> {
  cUtf8Available ??= execa("locale", ["-a"], { reject: false }).then(
    (r) => !r.failed && r.stdout.split("\n").some((l) => l.trim().toLowerCase().replace(/-/g, "") === "c.utf8"),
  );
  return cUtf8Available;
}

const confValue = (value: string): string => `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;

// No trust anywhere: the socket and loopback TCP both want the SCRAM password.
const HBA = `# pg-migrate throwaway cluster: every connection proves its password with SCRAM.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
`;

const SETTINGS_FILE = "pg-migrate.conf";

// Settings startCluster owns: the returned host/port/socketDir must stay true.
const MANAGED_SETTINGS = ["listen_addresses", "port", "unix_socket_directories"];

function clusterSettings(name: string, port: number, socketDir: string, extra: Record<string, string>): string {
  const clash = Object.keys(extra).filter((key) => MANAGED_SETTINGS.includes(key.toLowerCase()));
  if (clash.length > 0) throw new Error(`startCluster manages ${clash.join(", ")} itself; leave them out of settings`);
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    port: String(port),
    unix_socket_directories: socketDir,
    password_encryption: "scram-sha-256",
    cluster_name: `pgm-${name}`,
    ...extra,
  };
  const lines = Object.entries(settings).map(([key, value]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(key)) throw new Error(`invalid setting name ${JSON.stringify(key)}`);
    return `${key} = ${confValue(value)}`;
  });
  return `# written by pg-migrate demo/cluster.ts for this start\n${lines.join("\n")}\n`;
}

const slug = (name: string): string => name.replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 40) || "cluster";

async function makeSocketDir(baseDir: string): Promise<{ dir: string; separate: boolean }> {
  const inside = join(baseDir, "sock");
  if (inside.length <= MAX_SOCKET_DIR_LENGTH) {
    await mkdir(inside, { mode: 0o755 });
    return { dir: inside, separate: false };
  }
  return { dir: await mkdtemp("/tmp/pgm-sock-"), separate: true };
}

const isPortTaken = (log: string): boolean => /Address already in use|could not create any TCP\/IP sockets/.test(log);

/** initdb, start on a free port (retrying if someone grabs it first), and hand back the running cluster. */
export async function startCluster(opts: StartClusterOptions): Promise<LocalCluster> {
  const user = opts.user ?? "postgres";
  if (!opts.password || /[\r\n]/.test(opts.password)) throw new Error("cluster password must be one non-empty line");
  const bin = opts.server?.bin ?? (await postgresBinDir());
  const serverEnv = opts.server?.env ?? {};
  const account = await serverOsAccount();

  const baseDir = await mkdtemp(join(opts.baseDir ?? tmpdir(), `pgm-${slug(opts.name)}-`));
  const dataDir = join(baseDir, "data");
  const logFile = join(baseDir, "postgres.log");
  let socket: { dir: string; separate: boolean } | undefined;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      forgetExitHook();
      await stopPostmaster(bin, dataDir, baseDir, serverEnv);
      await rm(baseDir, { recursive: true, force: true, maxRetries: 3 });
      if (socket?.separate) await rm(socket.dir, { recursive: true, force: true });
    })();
    return stopping;
  };
  const forgetExitHook = onProcessExit(() => {
    if (existsSync(join(dataDir, "postmaster.pid"))) {
      const [file, argv] = serverCommand(account, join(bin, "pg_ctl"), [
        "-D",
        dataDir,
        "-m",
        "immediate",
        "-w",
        "-t",
        "10",
        "stop",
      ]);
      spawnSync(file, argv, { cwd: baseDir, stdio: "ignore", timeout: 15_000, env: envWithoutPgVars(serverEnv) });
    }
    rmSync(baseDir, { recursive: true, force: true });
    if (socket?.separate) rmSync(socket.dir, { recursive: true, force: true });
  });

  try {
    socket = await makeSocketDir(baseDir);
    await giveToServerAccount(baseDir);
    await giveToServerAccount(socket.dir);
    await initCluster(bin, baseDir, dataDir, user, opts.password, serverEnv);
    const settings = { ...opts.settings };
    if (opts.tls) {
      await installTls(dataDir, opts.tls);
      Object.assign(settings, { ssl: "on", ssl_cert_file: "server.crt", ssl_key_file: "server.key" });
    }
    const port = await startOnFreePort(opts.name, bin, baseDir, dataDir, logFile, socket.dir, settings, serverEnv);
    const outage = async (downMs: number): Promise<void> => {
      await stopPostmaster(bin, dataDir, baseDir, serverEnv);
      await sleep(downMs);
      // The settings file still names the port: the server comes back where its clients look for it.
      const result = await runServerTool(
        join(bin, "pg_ctl"),
        ["-D", dataDir, "-w", "-t", "60", "-l", logFile, "start"],
        baseDir,
        90_000,
        serverEnv,
      );
      if (result.failed) throw new Error(`could not start cluster '${opts.name}' again: ${result.stderr.trim()}`);
    };
    return {
      host: "127.0.0.1",
      port,
      user,
      password: opts.password,
      dataDir,
      socketDir: socket.dir,
      baseDir,
      logFile,
      stop,
      outage,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

async function initCluster(
  bin: string,
  baseDir: string,
  dataDir: string,
  user: string,
  password: string,
  env: Record<string, string>,
): Promise<void> {
  // The password reaches initdb through a 0600 file, never argv.
  const pwfile = join(baseDir, "initdb.pw");
  await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
  await giveToServerAccount(pwfile);
  const locale = (await hasCUtf8Locale()) ? ["--locale=C.UTF-8"] : ["--no-locale"];
  const args = ["-D", dataDir, "-U", user, "--auth=scram-sha-256", `--pwfile=${pwfile}`, "-E", "UTF8", ...locale];
  // --no-sync only skips initdb's final flush of a cluster we throw away; the server itself keeps fsync on.
  const result = await runServerTool(join(bin, "initdb"), [...args, "--no-sync"], baseDir, 120_000, env);
  await rm(pwfile, { force: true });
  if (result.failed) {
    throw new Error(
      `initdb failed (exit ${result.exitCode ?? result.signal}): ${tailOf(`${result.stdout}\n${result.stderr}`)}`,
    );
  }
  // initdb's own hba also has scram, but we state the whole policy ourselves rather than trust its defaults.
  await writeFile(join(dataDir, "pg_hba.conf"), HBA);
  await appendFile(
    join(dataDir, "postgresql.conf"),
    `\n# pg-migrate: loopback port, socket dir and extras\ninclude '${SETTINGS_FILE}'\n`,
  );
}

/** The server's certificate and key in its data dir (the key 0600 and the server's, as PostgreSQL insists). */
async function installTls(dataDir: string, tls: NonNullable<StartClusterOptions["tls"]>): Promise<void> {
  for (const [name, pem] of [
    ["server.crt", tls.cert],
    ["server.key", tls.key],
  ] as const) {
    const file = join(dataDir, name);
    await writeFile(file, pem, { mode: 0o600 });
    await giveToServerAccount(file);
  }
  if (tls.only) await writeFile(join(dataDir, "pg_hba.conf"), HBA.replace(/^host /gm, "hostssl "));
}

async function startOnFreePort(
  name: string,
  bin: string,
  baseDir: string,
  dataDir: string,
  logFile: string,
  socketDir: string,
  extra: Record<string, string>,
  env: Record<string, string>,
): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const settingsFile = join(dataDir, SETTINGS_FILE);
    await writeFile(settingsFile, clusterSettings(name, port, socketDir, extra), { mode: 0o600 });
    await giveToServerAccount(settingsFile);
    const logOffset = fileSize(logFile);
    const result = await runServerTool(
      join(bin, "pg_ctl"),
      ["-D", dataDir, "-w", "-t", "60", "-l", logFile, "start"],
      baseDir,
      90_000,
      env,
    );
    if (!result.failed) return port;
    const log = readSince(logFile, logOffset);
    if (isPortTaken(log) && attempt < START_ATTEMPTS) continue;
    throw new Error(
      `could not start cluster '${name}' on 127.0.0.1:${port} (pg_ctl exit ${result.exitCode ?? result.signal}): ` +
        `${result.stderr.trim()}\n--- server log ---\n${logExcerpt(log)}`,
    );
  }
}

/** Immediate shutdown (the data is thrown away); a no-op when the server is already gone. */
async function stopPostmaster(
  bin: string,
  dataDir: string,
  baseDir: string,
  env: Record<string, string>,
): Promise<void> {
  const pidFile = join(dataDir, "postmaster.pid");
  if (!existsSync(pidFile)) return;
  const result = await runServerTool(
    join(bin, "pg_ctl"),
    ["-D", dataDir, "-m", "immediate", "-w", "-t", "30", "stop"],
    baseDir,
    45_000,
    env,
  );
  if (!result.failed || !existsSync(pidFile)) return;
  // pg_ctl could not do it (e.g. a stale pid file): kill the postmaster ourselves if it still exists.
  const pid = Number(readSince(pidFile, 0).split("\n")[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return; // already gone
  }
  for (let i = 0; i < 100 && processExists(pid); i++) await sleep(50);
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Failure of psql, with its stderr. */
export class PsqlError extends Error {
  override name = "PsqlError";
  constructor(
    message: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
  ) {
    super(message);
  }
}

export interface PsqlOptions {
  /** `--tuples-only --no-align`, fields separated by a tab: easy to split. */
  tuplesOnly?: boolean;
}

let psqlBinary: Promise<string> | undefined;

/** The client on PATH (what a user runs), else the one beside initdb. */
function psqlPath(): Promise<string> {
  psqlBinary ??= locatePsql();
  return psqlBinary;
}

async function locatePsql(): Promise<string> {
  const found = (await findExecutable("psql", pathDirs())) ?? (await findExecutable("psql", [await postgresBinDir()]));
  if (!found) throw new Error("psql not found on PATH nor beside initdb (Debian: apt-get install postgresql-client)");
  return found;
}

/** Run SQL (psql meta-commands allowed) or a file through psql; returns stdout, throws PsqlError on failure. */
export async function psqlExec(
  c: PgLogin,
  db: string,
  sql: string | { file: string },
  opts: PsqlOptions = {},
): Promise<string> {
  const args = ["-X", "-v", "ON_ERROR_STOP=1", "-q", "--no-password"];
  if (opts.tuplesOnly) args.push("--tuples-only", "--no-align", "--field-separator=\t");
  args.push("-f", typeof sql === "string" ? "-" : sql.file);
  // Connection through the environment: the password stays off argv, and a database name is never
  // re-parsed as a connection string the way `-d` would.
  const env = envWithoutPgVars({
    PGHOST: c.host,
    PGPORT: String(c.port),
    PGUSER: c.user,
    PGPASSWORD: c.password,
    PGDATABASE: db,
    PGCLIENTENCODING: "UTF8",
    PGCONNECT_TIMEOUT: "15",
    PGAPPNAME: "pg-migrate demo psql",
  });
  const result = await execa(await psqlPath(), args, {
    env,
    extendEnv: false,
    reject: false,
    ...(typeof sql === "string" ? { input: sql } : { stdin: "ignore" as const }),
  });
  if (result.failed) {
    const how = result.exitCode !== undefined ? `exit ${result.exitCode}` : (result.signal ?? "failed");
    const where = typeof sql === "string" ? "" : ` -f ${sql.file}`;
    throw new PsqlError(
      `psql${where} on ${JSON.stringify(db)} at ${c.host}:${c.port} as ${c.user} (${how}): ${tailOf(result.stderr, 10) || result.shortMessage}`,
      result.exitCode,
      result.stderr,
    );
  }
  return result.stdout;
}

/* ------------------------------------------------------------------------------------------------------------
 * NATS
 * ---------------------------------------------------------------------------------------------------------- */

export interface LocalNats {
  url: string;
  port: number;
  storeDir: string;
  logFile: string;
  /** SIGTERM, wait for exit, remove the temp dirs (a caller's storeDir is kept). Safe to call twice. */
  stop(): Promise<void>;
  /** Send a signal (default SIGKILL) without waiting: to simulate a crash. */
  kill(signal?: NodeJS.Signals): void;
  /** Stop (keeping the store) and start again on the same port. */
  restart(): Promise<void>;
}

export interface StartNatsOptions {
  /** Extra nats-server arguments, after ours. */
  args?: string[];
  /** JetStream store dir; kept on stop() when given. Default: a temp dir removed on stop(). */
  storeDir?: string;
}

const NATS_READY_TIMEOUT_MS = 10_000;
const NATS_STOP_TIMEOUT_MS = 10_000;

async function natsServerPath(): Promise<string> {
  const forced = process.env.PGMIGRATE_NATS_SERVER;
  if (forced) return forced;
  const found = await findExecutable("nats-server", [...pathDirs(), "/usr/sbin", "/usr/local/sbin"]);
  if (!found)
    throw new Error("nats-server not found on PATH, /usr/sbin or /usr/local/sbin (or set PGMIGRATE_NATS_SERVER)");
  return found;
}

interface NatsProcess {
  child: ChildProcess;
  exited: Promise<void>;
  alive(): boolean;
  spawnError(): Error | undefined;
  /** Where this run's output starts in the shared log file. */
  logOffset: number;
}

function launchNats(bin: string, args: string[], logFile: string): NatsProcess {
  const logOffset = fileSize(logFile);
  // Output goes to a file rather than a pipe: nothing to drain, and the log survives for the error message.
  const fd = openSync(logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(bin, args, { stdio: ["ignore", fd, fd] });
  } finally {
    closeSync(fd);
  }
  let alive = true;
  let error: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      alive = false;
      resolve();
    });
    child.once("error", (err) => {
      error = err;
      alive = false;
      resolve();
    });
  });
  // A forgotten server must not keep the process alive; the exit hook kills it.
  child.unref();
  return { child, exited, alive: () => alive, spawnError: () => error, logOffset };
}

async function terminate(proc: NatsProcess): Promise<void> {
  if (!proc.alive()) return;
  proc.child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    proc.exited.then(() => false),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), NATS_STOP_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    proc.child.kill("SIGKILL");
    await proc.exited;
  }
}

/** True when something on the port greets like a NATS server (its INFO line). */
function natsGreets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("data", (chunk: Buffer) => done(chunk.toString("latin1").startsWith("INFO ")));
  });
}

async function waitForNats(proc: NatsProcess, port: number, logFile: string): Promise<void> {
  const deadline = Date.now() + NATS_READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!proc.alive()) {
      const why = proc.spawnError()?.message ?? `exit code ${proc.child.exitCode ?? proc.child.signalCode}`;
      throw new Error(
        `nats-server exited during startup on port ${port} (${why})\n--- nats-server output ---\n${logExcerpt(readSince(logFile, proc.logOffset))}`,
      );
    }
    // "Server is ready" proves the greeting comes from our process, not from whoever else holds the port.
    if (readSince(logFile, proc.logOffset).includes("Server is ready") && (await natsGreets(port))) return;
    await sleep(50);
  }
  throw new Error(
    `nats-server did not accept connections on 127.0.0.1:${port} within ${NATS_READY_TIMEOUT_MS / 1000}s\n` +
      `--- nats-server output ---\n${logExcerpt(readSince(logFile, proc.logOffset))}`,
  );
}

const natsPortTaken = (log: string): boolean => /address already in use/i.test(log);

/** A JetStream-enabled nats-server on a free loopback port with its own temp store. */
export async function startNats(opts: StartNatsOptions = {}): Promise<LocalNats> {
  const bin = await natsServerPath();
  const workDir = await mkdtemp(join(tmpdir(), "pgm-nats-"));
  const storeDir = opts.storeDir ?? join(workDir, "store");
  const logFile = join(workDir, "nats-server.log");
  const argsFor = (port: number) => [
    "-a",
    "127.0.0.1",
    "-p",
    String(port),
    "-js",
    "-sd",
    storeDir,
    ...(opts.args ?? []),
  ];

  let proc: NatsProcess | undefined;
  let stopping: Promise<void> | undefined;
  const forgetExitHook = onProcessExit(() => {
    if (proc?.alive()) proc.child.kill("SIGKILL");
    rmSync(workDir, { recursive: true, force: true });
  });

  /** Start on `port`; retried a few times while the port is taken (by a stranger, or our own last run). */
  const launchOn = async (port: number, attempts: number, pauseMs: number): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      proc = launchNats(bin, argsFor(port), logFile);
      try {
        await waitForNats(proc, port, logFile);
        return;
      } catch (err) {
        await terminate(proc);
        if (attempt >= attempts || !natsPortTaken(readSince(logFile, proc.logOffset))) throw err;
        await sleep(pauseMs);
      }
    }
  };

  let port = 0;
  try {
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        await launchOn(port, 1, 0);
        break;
      } catch (err) {
        if (attempt >= START_ATTEMPTS || !proc || !natsPortTaken(readSince(logFile, proc.logOffset))) throw err;
      }
    }
  } catch (err) {
    forgetExitHook();
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    logFile,
    stop() {
      stopping ??= (async () => {
        forgetExitHook();
        if (proc) await terminate(proc);
        await rm(workDir, { recursive: true, force: true, maxRetries: 3 });
      })();
      return stopping;
    },
    kill(signal: NodeJS.Signals = "SIGKILL") {
      if (proc?.alive()) proc.child.kill(signal);
    },
    async restart() {
      if (stopping) throw new Error("nats-server was stopped; start a new one instead of restart()");
      if (proc) await terminate(proc);
      // Clients hold the URL, so the port must stay; give the kernel a moment if it is briefly busy.
      await launchOn(port, 20, 250);
    },
  };
}
