// Runs the real CLI as a child process, exactly as a user would.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import pg from "pg";
import type { LocalCluster } from "../../demo/cluster.js";

export const BIN = fileURLToPath(new URL("../../../bin/pg-migrate.js", import.meta.url));

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** How long a process may live after its last line of output: after that line it only has to close what it holds. */
export const EXIT_AFTER_LAST_LINE_MS = 5_000;

export async function runCli(
  args: string[],
  env: Record<string, string | undefined>,
  timeoutMs = 300_000,
): Promise<CliResult> {
  const child = execa(process.execPath, [BIN, ...args], { env, reject: false, timeout: timeoutMs, stdin: "ignore" });
  const lastLine = lastOutputClock(child);
  const r = await child;
  // No library warning may reach a user's screen (scripts/test also makes every deprecation throw).
  assert.doesNotMatch(String(r.stderr), /DeprecationWarning/, `a deprecation warning on stderr:\n${r.stderr}`);
  assertExitedAfterLastLine(lastLine(), `pg-migrate ${args[0] ?? ""}`, String(r.stderr));
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** Starts a clock on a child's output: the returned function, called once it has exited, says how long it lived after its last output. */
export function lastOutputClock(child: {
  stdout?: NodeJS.ReadableStream | null;
  stderr?: NodeJS.ReadableStream | null;
}): () => number {
  let last = Date.now();
  for (const stream of [child.stdout, child.stderr]) stream?.on("data", () => (last = Date.now()));
  return () => Date.now() - last;
}

/** No hang: a process that printed its last line (its error, its summary) and then sat there fails the test. */
export function assertExitedAfterLastLine(livedMs: number, what: string, stderr: string): void {
  assert.ok(
    livedMs <= EXIT_AFTER_LAST_LINE_MS,
    `${what} lived ${(livedMs / 1000).toFixed(1)}s after its last line of output (at most ${EXIT_AFTER_LAST_LINE_MS / 1000}s):\n${stderr.slice(-2000)}`,
  );
}

/** Flags and environment that point the CLI at a test source and target. */
export function serverArgs(source: LocalCluster, target: LocalCluster): string[] {
  return [
    "--from-host",
    source.host,
    "--from-port",
    String(source.port),
    "--to-host",
    target.host,
    "--to-port",
    String(target.port),
  ];
}

export function cliEnv(
  home: string,
  source: LocalCluster,
  target: LocalCluster,
  extra: Record<string, string> = {},
): Record<string, string> {
  return { HOME: home, PGMIGRATE_FROM_PASS: source.password, PGMIGRATE_TO_PASS: target.password, ...extra };
}

/** A cluster as the tests reach it; `ssl` for one that only takes TLS. */
export type TestCluster = LocalCluster & { ssl?: pg.ClientConfig["ssl"] };

export async function query<T extends pg.QueryResultRow>(
  c: TestCluster,
  db: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({
    host: c.host,
    port: c.port,
    user: c.user,
    password: c.password,
    database: db,
    ssl: c.ssl ?? false,
  });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

export const FAST_RESTORE_SETTINGS = [
  "fsync",
  "full_page_writes",
  "synchronous_commit",
  "autovacuum",
  "checkpoint_timeout",
  "max_wal_size",
  "maintenance_work_mem",
];

/** The target settings fast-restore touches, read from a new session. */
export async function settingsOf(c: TestCluster): Promise<Record<string, string>> {
  const rows = await query<{ name: string; setting: string }>(
    c,
    "postgres",
    "SELECT name, setting FROM pg_settings WHERE name = ANY($1) ORDER BY name",
    [FAST_RESTORE_SETTINGS],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.setting]));
}

export async function databasesOf(c: TestCluster): Promise<string[]> {
  const rows = await query<{ datname: string }>(
    c,
    "postgres",
    "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
  );
  return rows.map((r) => r.datname);
}

/** Every base table's exact row count, computed by the test itself (not by the project's catalog code). */
export async function tableCounts(c: TestCluster, db: string): Promise<Record<string, number>> {
  const rows = await query<{ t: string; n: string }>(
    c,
    db,
    `SELECT format('%I.%I', table_schema, table_name) AS t,
            (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', table_schema, table_name), false, true, '')))[1]::text AS n
       FROM information_schema.tables
      WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
     SELECT format('%I.%I (matview)', schemaname, matviewname),
            (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, matviewname), false, true, '')))[1]::text
       FROM pg_matviews WHERE ispopulated`,
  );
  return Object.fromEntries(rows.map((r) => [r.t, Number(r.n)]));
}

export async function sequencesOf(c: TestCluster, db: string): Promise<Record<string, string | null>> {
  const rows = await query<{ s: string; v: string | null }>(
    c,
    db,
    "SELECT format('%I.%I', schemaname, sequencename) AS s, last_value::text AS v FROM pg_sequences",
  );
  return Object.fromEntries(rows.map((r) => [r.s, r.v]));
}

export function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith("pg-migrate: error:"));
}

export interface Report {
  runId: string;
  status: string;
  totals: { databases: number; verified: number; failed: number };
  dumps: { path: string; kept: boolean; why: string };
  skipped: { name: string; reason: string }[];
  steps?: { session: number; step: string; startedAt: string; ms: number }[];
  databases: {
    name: string;
    phase: string;
    verified: boolean;
    error?: string;
    stderrTail?: string;
    attempts: Record<string, number>;
    workers: Record<string, string>;
    dumpPath?: string;
    detailPath?: string;
    /** "stream" for a streamed database (absent: through the dump volume). */
    via?: "stream";
    /** --via stream: the database's slices, which worker did each, and whether it started over. */
    stream?: {
      restarts: number;
      restartedBecause?: string;
      keptSlices?: number;
      slices: {
        id: string;
        tables: { schema: string; name: string }[];
        part?: { n: number; of: number };
        phase: string;
        attempts: number;
        worker?: string;
        alreadyCommitted?: boolean;
        counts?: { schema: string; name: string; sent: number; copied: number; format?: string }[];
      }[];
    };
    tableCounts: {
      schema: string;
      name: string;
      source: number | null;
      target: number | null;
      sourceChecksum?: string | null;
      targetChecksum?: string | null;
    }[];
  }[];
}

/** Asserts that a session of the run went through every declared step, in order, each timed. */
export function assertStepsTimed(report: Report, session: number, steps: readonly string[]): void {
  const mine = (report.steps ?? []).filter((s) => s.session === session);
  assert.deepEqual(
    mine.map((s) => s.step),
    steps,
    `session ${session}'s steps: ${JSON.stringify(report.steps)}`,
  );
  for (const s of mine) assert.ok(s.ms >= 0 && !Number.isNaN(Date.parse(s.startedAt)), JSON.stringify(s));
}

/** The JSON report whose path the run printed; it must lie under this HOME. */
export async function readReport(home: string, stderr: string): Promise<Report> {
  const path = /report: (.*\.json)/.exec(stderr)?.[1];
  assert.ok(path, `no report path in:\n${stderr}`);
  assert.ok(path.startsWith(join(home, ".pg-migrate", "reports")), path);
  return JSON.parse(await readFile(path, "utf8")) as Report;
}
