// The one wrapper around the native PostgreSQL tools: paths and versions resolved once, the password in the
// environment (never argv), a cancel signal, the kernel ending the tool with its parent, and a failure turned
// into a ToolError that keeps the tail of stderr.
import { access, constants, readdir } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { execa } from "execa";
import { ConfigError, ToolError } from "./errors.js";
import { tlsEnv, type PgTls } from "./pg/tls.js";

export const TOOL_NAMES = ["pg_dump", "pg_restore", "pg_dumpall", "psql"] as const;
export type ToolName = (typeof TOOL_NAMES)[number];

export interface Toolset {
  paths: Record<ToolName, string>;
  /** Major version of pg_dump, the one that decides which servers we can read. */
  major: number;
  version: string;
  /** setpriv, when present, makes the kernel kill a tool whose parent died. */
  setpriv: string | undefined;
  /** Where they were found, said to the user: --pg-bin, the newest /usr/lib/postgresql/N/bin, or PATH. */
  from: string;
}

export async function findExecutable(name: string, dirs: string[]): Promise<string | undefined> {
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export const pathDirs = (): string[] => (process.env.PATH ?? "").split(delimiter).filter(Boolean);

/** Where Debian and Ubuntu keep each major's client tools, one dir per major (postgresql-client-N). */
export const DEBIAN_PG_DIR = "/usr/lib/postgresql";

/**
 * pgBin (--pg-bin / PGMIGRATE_PG_BIN) wins. Otherwise the newest installed client tools: the highest
 * /usr/lib/postgresql/N/bin that has them all, or PATH's when those are newer (or the only ones). `from` says which.
 */
export async function resolveTools(pgBin?: string): Promise<Toolset> {
  if (pgBin) return toolsIn([pgBin], `--pg-bin ${pgBin}`, pgBin);
  const candidates: Toolset[] = [];
  const majors = await readdir(DEBIAN_PG_DIR).catch(() => [] as string[]);
  for (const m of majors.filter((x) => /^\d+$/.test(x)).sort((a, b) => Number(b) - Number(a))) {
    const dir = join(DEBIAN_PG_DIR, m, "bin");
    const found = await toolsIn([dir], `${dir}, the newest installed`).catch(() => undefined);
    if (found) {
      candidates.push(found);
      break;
    }
  }
  const onPath = await toolsIn(pathDirs(), "PATH").catch((err: unknown) => err as Error);
  if (!(onPath instanceof Error)) candidates.push(onPath);
  if (!candidates.length) throw onPath;
  // The newest wins; at the same major, PATH's (what the user would run by hand).
  return candidates.reduce((best, t) => (t.major >= best.major ? t : best));
}

async function toolsIn(dirs: string[], from: string, pgBin?: string): Promise<Toolset> {
  const paths = {} as Record<ToolName, string>;
  for (const name of TOOL_NAMES) {
    const found = await findExecutable(name, dirs);
    if (!found) {
      throw new ConfigError(
        `${name} not found ${pgBin ? `in ${pgBin}` : "on PATH"}: install the PostgreSQL client tools (Debian: apt-get install postgresql-client) or pass --pg-bin`,
        "--pg-bin",
      );
    }
    paths[name] = found;
  }
  const { stdout } = await execa(paths.pg_dump, ["--version"]);
  const match = /(\d+)(?:\.(\d+))?/.exec(stdout);
  if (!match) throw new ConfigError(`cannot read the version of ${paths.pg_dump}: ${stdout}`, "--pg-bin");
  const setpriv = await findExecutable("setpriv", [...pathDirs(), "/usr/bin", "/bin"]);
  return { paths, major: Number(match[1]), version: stdout.trim(), setpriv, from };
}

export interface ToolConnection extends PgTls {
  host: string;
  port: number;
  user: string;
  password: string | undefined;
}

export interface RunToolOptions {
  conn?: ToolConnection;
  signal?: AbortSignal;
  timeoutMs?: number;
  appName?: string;
  input?: string;
  /** Called with each chunk of stderr as it arrives (progress, live logging). */
  onStderr?: (chunk: string) => void;
}

const STDERR_TAIL = 8 * 1024;

export interface ToolResult {
  stdout: string;
  stderr: string;
}

export async function runTool(
  tools: Toolset,
  tool: ToolName,
  args: string[],
  opts: RunToolOptions = {},
): Promise<ToolResult> {
  const env: Record<string, string> = { PGAPPNAME: opts.appName ?? `pg-migrate ${tool}`, PGCONNECT_TIMEOUT: "15" };
  const connArgs: string[] = [];
  if (opts.conn) {
    connArgs.push(
      "--host",
      opts.conn.host,
      "--port",
      String(opts.conn.port),
      "--username",
      opts.conn.user,
      "--no-password",
    );
    if (opts.conn.password !== undefined) env.PGPASSWORD = opts.conn.password;
    Object.assign(env, tlsEnv(opts.conn));
  }
  const [file, fullArgs] = tools.setpriv
    ? [tools.setpriv, ["--pdeathsig", "KILL", "--", tools.paths[tool], ...connArgs, ...args]]
    : [tools.paths[tool], [...connArgs, ...args]];
  const child = execa(file, fullArgs, {
    env,
    extendEnv: true,
    reject: false,
    stripFinalNewline: false,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: "ignore" as const }),
    ...(opts.signal ? { cancelSignal: opts.signal, forceKillAfterDelay: 3000 } : {}),
    ...(opts.timeoutMs ? { timeout: opts.timeoutMs } : {}),
  });
  if (opts.onStderr) child.stderr?.on("data", (b: Buffer) => opts.onStderr?.(b.toString("utf8")));
  const result = await child;
  const stderr = String(result.stderr ?? "");
  if (result.failed) {
    const tail = stderr.length > STDERR_TAIL ? stderr.slice(-STDERR_TAIL) : stderr;
    throw new ToolError({
      tool,
      exitCode: result.exitCode,
      signal: result.signal,
      timedOut: result.timedOut,
      cancelled: result.isCanceled,
      durationMs: result.durationMs,
      stderrTail: tail || String(result.shortMessage ?? ""),
    });
  }
  return { stdout: String(result.stdout ?? ""), stderr };
}
