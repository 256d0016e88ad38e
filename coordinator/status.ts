// `pg-migrate status [run]` and `pg-migrate watch [run]`: a run's databases and the live workers, from the run
// record (this home's, or the KV of --nats-url) and the presence bucket of the run's broker. --json for scripts.
import Table from "cli-table3";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { openExistingKv, RUNS_BUCKET, WORKERS_BUCKET } from "../shared/contracts/jetstream.js";
import { ConfigError, errorMessage } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { natsConnectOptions, connectNats, withoutCredentials, type NatsAuth } from "../shared/nats.js";
import { appDir } from "../shared/paths.js";
import type pg from "pg";
import { connect as connectPg, type ServerSpec } from "../shared/pg/connect.js";
import type { PgTls } from "../shared/pg/tls.js";
import { readTargetRecord, type TargetRecord } from "./fast-restore.js";
import { bytes, seconds, type Output } from "./output.js";
import { fileLockHolders, isStale, kvLockHolders } from "./lock.js";
import { readPresence } from "./presence.js";
import { RunState, type RunRecord } from "./state.js";

export interface StatusOptions {
  runId: string | undefined;
  natsUrl: string | undefined;
  natsAuth: NatsAuth;
  json: boolean;
}

export interface StatusSnapshot {
  run: Pick<RunRecord, "runId" | "status" | "startedAt" | "updatedAt" | "resumedAt" | "source" | "target">;
  databases: {
    name: string;
    phase: string;
    sizeBytes: number;
    workers: RunRecord["databases"][number]["workers"];
    timings: RunRecord["databases"][number]["timings"];
    attempts: RunRecord["databases"][number]["attempts"];
    rows: number | null;
    verifiedRows: number | null;
    error: string | null;
    /** The current job's newest progress (bytes against the expected total), while one runs. */
    progress: RunRecord["databases"][number]["progress"] | null;
    /** --via stream: its data slices, how many are done and running, and the workers running them. */
    slices: { total: number; done: number; running: number; workers: string[] } | null;
    /** --follow: whether its subscription follows the source, and the newest lag reading (cutover --lag, the run's end). */
    follow: { subscribed: boolean; lag: { bytes: number; seconds: number | null; at: string } | null } | null;
  }[];
  /** Whether a coordinator holds the run's target lock now: "gone" for a running run means it died. */
  coordinator: "alive" | "gone";
  /** Live workers; null when the run's broker cannot be reached (a finished embedded run's broker is gone). */
  workers: { id: string; host?: string; pid?: number; jobs?: number; inFlight?: number; at?: string }[] | null;
  /**
   * What the target itself carries of fast-restore settings a run put there and has not put back (any run, from any
   * home), or why it could not be read; left out by watch, which does not connect to the target.
   */
  target?: { read: true; fastRestore: TargetRecord | null } | { read: false; why: string };
}

export async function snapshot(
  opts: Pick<StatusOptions, "runId" | "natsUrl" | "natsAuth">,
  readTarget = false,
): Promise<StatusSnapshot> {
  const r = await findRecord(opts);
  const holders = opts.natsUrl ? await kvHolders(opts.natsUrl, opts.natsAuth) : await fileLockHolders(appDir());
  const held = holders.some((h) => h.runId === r.runId && !isStale(h));
  return {
    coordinator: held ? "alive" : "gone",
    run: {
      runId: r.runId,
      status: r.status,
      startedAt: r.startedAt,
      updatedAt: r.updatedAt,
      resumedAt: r.resumedAt,
      source: r.source,
      target: r.target,
    },
    databases: r.databases.map((d) => ({
      name: d.name,
      phase: d.phase,
      sizeBytes: d.sizeBytes,
      workers: d.workers,
      timings: d.timings,
      attempts: d.attempts,
      rows: d.rows ?? null,
      verifiedRows: d.verifiedRows ?? null,
      error: d.error ?? null,
      // A streamed database's progress is its slices' (no single job): shown while they run.
      progress:
        d.progress && (d.jobId === d.progress.jobId || (d.phase === "copying" && d.progress.kind === "slice"))
          ? d.progress
          : null,
      slices: d.stream
        ? {
            total: d.stream.slices.length,
            done: d.stream.slices.filter((x) => x.phase === "done").length,
            running: d.stream.slices.filter((x) => x.phase === "running").length,
            workers: [
              ...new Set(d.stream.slices.flatMap((x) => (x.phase === "running" && x.worker ? [x.worker] : []))),
            ],
          }
        : null,
      follow: d.follow ? { subscribed: d.follow.subscribed, lag: d.follow.lag ?? null } : null,
    })),
    workers: await liveWorkers(opts.natsUrl ?? r.broker, opts.natsAuth),
    ...(readTarget ? { target: await targetCarries(r) } : {}),
  };
}

const TARGET_READ_MS = 5_000;

/**
 * The target's own record of fast-restore settings left on it, read as the run's target user (PGMIGRATE_TO_PASS,
 * PGPASSWORD or the password file) with the run's own TLS settings, within TARGET_READ_MS: status never waits long
 * for a server it only reports on.
 */
async function targetCarries(r: RunRecord): Promise<NonNullable<StatusSnapshot["target"]>> {
  const given = (r.options as { target?: PgTls }).target ?? {};
  const tls: PgTls = {
    sslmode: given.sslmode,
    sslrootcert: given.sslrootcert,
    sslcert: given.sslcert,
    sslkey: given.sslkey,
  };
  const spec: ServerSpec = {
    role: "target",
    host: r.target.host,
    port: r.target.port,
    user: r.target.user,
    password: process.env.PGMIGRATE_TO_PASS || undefined,
    ...tls,
  };
  let connecting: Promise<pg.Client> | undefined;
  const reading = (async () => {
    connecting = connectPg(spec, r.target.db, "pg-migrate status");
    const client = await connecting;
    try {
      // pg_file_settings is for superusers (and whom they grant it): without it the answer would be a false "none".
      const { rows } = await client.query<{ ok: boolean }>(
        "SELECT has_function_privilege('pg_show_all_file_settings()', 'EXECUTE') AS ok",
      );
      if (!rows[0]?.ok) return { read: false as const, why: `${r.target.user} may not read pg_file_settings` };
      return { read: true as const, fastRestore: (await readTargetRecord(client)) ?? null };
    } finally {
      await client.end().catch(() => undefined);
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>(
    (_, reject) =>
      (timer = setTimeout(() => reject(new Error(`no answer within ${TARGET_READ_MS / 1000} s`)), TARGET_READ_MS)),
  );
  try {
    return await Promise.race([reading, late]);
  } catch (err) {
    // A connection that comes after all, or a query still running, is closed at once.
    void connecting?.then((c) => c.end()).catch(() => undefined);
    return { read: false, why: errorMessage(err) };
  } finally {
    clearTimeout(timer);
  }
}

function targetLine(t: NonNullable<StatusSnapshot["target"]>, runId: string): string {
  if (!t.read) return `target: not read (${t.why})`;
  const c = t.fastRestore;
  if (!c) return "target: no fast-restore settings of pg-migrate on it";
  const whose = c.runId === runId ? "this run's" : `run ${c.runId}'s`;
  return `target: in ${whose} fast-restore mode (${c.mode}) since ${c.at}, recorded on the target; put back at the run's end, or by pg-migrate revert-settings, to ${c.original.map((o) => `${o.name}=${o.setting}`).join(", ")}`;
}

async function findRecord(opts: Pick<StatusOptions, "runId" | "natsUrl" | "natsAuth">): Promise<RunRecord> {
  if (opts.natsUrl) {
    const nc = await connectNats(opts.natsUrl, "pg-migrate-status", opts.natsAuth);
    try {
      const kv = await openExistingKv(new Kvm(nc), RUNS_BUCKET);
      const records = kv ? await RunState.recordsInKv(kv, opts.runId) : [];
      const newest = records.sort((a, b) => b.startedAt.localeCompare(a.startedAt))[0];
      if (!newest)
        throw new ConfigError(
          `no pg-migrate run${opts.runId ? ` ${opts.runId}` : ""} in the KV of ${withoutCredentials(opts.natsUrl)}`,
        );
      return newest;
    } finally {
      await nc.close().catch(() => undefined);
    }
  }
  const states = await RunState.all(appDir(), createLogger({ level: "silent" }));
  const found = opts.runId ? states.find((s) => s.runId === opts.runId) : states[0];
  if (!found)
    throw new ConfigError(
      `no pg-migrate run${opts.runId ? ` ${opts.runId}` : ""} under ${appDir()}: pass --nats-url to read a run of another host`,
    );
  return found.record;
}

async function kvHolders(url: string, auth: NatsAuth): ReturnType<typeof kvLockHolders> {
  const nc = await connectNats(url, "pg-migrate-status", auth);
  try {
    const kv = await openExistingKv(new Kvm(nc), RUNS_BUCKET);
    return kv ? await kvLockHolders(kv) : [];
  } finally {
    await nc.close().catch(() => undefined);
  }
}

async function liveWorkers(url: string | undefined, auth: NatsAuth): Promise<StatusSnapshot["workers"]> {
  if (!url) return null;
  let nc: NatsConnection | undefined;
  try {
    nc = await connect({
      ...natsConnectOptions(url, auth),
      name: "pg-migrate-status",
      timeout: 2_000,
      maxReconnectAttempts: 0,
    });
    const present = await readPresence(await new Kvm(nc).open(WORKERS_BUCKET));
    return [...present].map(([id, p]) => ({ id, ...p })).sort((a, b) => a.id.localeCompare(b.id));
  } catch {
    return null;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

/** ", following (lag 1.2 KiB / 0.3 s at …)" for a database a subscription follows. */
function followText(f: StatusSnapshot["databases"][number]["follow"]): string {
  if (!f?.subscribed) return "";
  if (!f.lag) return ", following";
  const secs = f.lag.seconds === null ? "" : ` / ${f.lag.seconds.toFixed(1)} s`;
  return `, following (lag ${bytes(f.lag.bytes)}${secs} at ${f.lag.at})`;
}

export function renderStatus(s: StatusSnapshot): string {
  const lines = [
    `run ${s.run.runId}: ${s.run.status}${s.run.status === "running" && s.coordinator === "gone" ? " (but its coordinator is gone: run the same command again to resume)" : ""}, started ${s.run.startedAt}${s.run.resumedAt.length ? `, resumed ${s.run.resumedAt.length}×` : ""}, updated ${s.run.updatedAt}`,
  ];
  const dbs = new Table({
    head: ["database", "phase", "size", "worker", "progress", "dump/copy", "restore/post", "analyze", "rows verified"],
    style: { head: [], border: [] },
  });
  for (const d of s.databases) {
    const copying = d.phase === "copying" && d.slices?.workers.length;
    const worker = copying
      ? d.slices!.workers.join(", ")
      : (d.workers.post ??
        d.workers.whole ??
        d.workers.verify ??
        d.workers.restore ??
        d.workers.dump ??
        d.workers.schema ??
        "-");
    const slices = d.slices && d.phase === "copying" ? `${d.slices.done}/${d.slices.total} slices` : "";
    const progress = progressText(d.progress);
    dbs.push([
      d.name,
      d.phase + (d.error ? `: ${d.error.slice(0, 60)}` : "") + followText(d.follow),
      bytes(d.sizeBytes),
      worker,
      slices ? `${slices}${progress === "-" ? "" : `, ${progress}`}` : progress,
      seconds(d.timings.dump ?? d.timings.copy),
      seconds(d.timings.restore ?? d.timings.post),
      seconds(d.timings.analyze),
      d.verifiedRows ?? "-",
    ]);
  }
  lines.push(dbs.toString());
  if (s.target) lines.push(targetLine(s.target, s.run.runId));
  if (s.workers === null) lines.push("workers: the run's broker cannot be reached");
  else {
    const w = new Table({
      head: ["worker", "host", "pid", "jobs done", "in flight", "seen"],
      style: { head: [], border: [] },
    });
    for (const x of s.workers)
      w.push([x.id, x.host ?? "-", x.pid ?? "-", x.jobs ?? "-", x.inFlight ?? "-", x.at ?? "-"]);
    lines.push(s.workers.length ? w.toString() : "workers: none present");
  }
  return lines.join("\n");
}

/** "12.0 MiB of 40.0 MiB, 3.1 MiB/s, ETA 9s": the job's bytes so far, its rate since it was claimed, and what is left at that rate. */
export function progressText(p: StatusSnapshot["databases"][number]["progress"]): string {
  if (!p) return "-";
  const elapsed = (Date.parse(p.at) - Date.parse(p.startedAt)) / 1000;
  const rate = elapsed > 0 ? p.bytes / elapsed : 0;
  const parts = [`${bytes(p.bytes)}${p.totalBytes ? ` of ${bytes(p.totalBytes)}` : ""}`];
  if (rate > 0) parts.push(`${bytes(rate)}/s`);
  if (rate > 0 && p.totalBytes && p.totalBytes > p.bytes)
    parts.push(`ETA ${Math.ceil((p.totalBytes - p.bytes) / rate)}s`);
  return parts.join(", ");
}

/** Terminal rows a text takes: a line wider than the terminal wraps onto more than one. */
function rowsOf(text: string, columns: number | undefined): number {
  const width = columns && columns > 0 ? columns : 80;
  return text
    .split("\n")
    .reduce((rows, line) => rows + Math.max(1, Math.ceil([...line.replace(/\x1b\[[0-9;]*m/g, "")].length / width)), 0);
}

const ENDED = new Set(["finished", "following", "failed", "interrupted", "abandoned"]);

export async function status(opts: StatusOptions & { watch: boolean }, out: Output): Promise<number> {
  if (!opts.watch) {
    const s = await snapshot(opts, true);
    process.stdout.write(opts.json ? `${JSON.stringify(s)}\n` : `${renderStatus(s)}\n`);
    return 0;
  }
  // watch: redraw every second on a terminal, one JSON line per change with --json, until the run ends (or its
  // coordinator is seen gone three times in a row: a crashed run would otherwise say "running" forever).
  let last = "";
  let drawnLines = 0;
  let gone = 0;
  for (;;) {
    let s: StatusSnapshot;
    try {
      s = await snapshot(opts);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      out.warn(`status not read: ${errorMessage(err)}`);
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    const text = opts.json ? JSON.stringify(s) : renderStatus(s);
    if (text !== last) {
      if (opts.json || !process.stdout.isTTY) process.stdout.write(`${text}\n`);
      else {
        // Redrawn in place: up over the previous drawing, cleared to the end of the screen, drawn again.
        process.stdout.write(`${drawnLines ? `\x1b[${drawnLines}F\x1b[J` : ""}${text}\n`);
        drawnLines = rowsOf(text, process.stdout.columns);
      }
      last = text;
    }
    if (ENDED.has(s.run.status)) return 0;
    gone = s.coordinator === "gone" ? gone + 1 : 0;
    if (gone >= 3) {
      out.warn(
        `run ${s.run.runId} says "${s.run.status}" but no coordinator holds its lock: it died; run the same command again to resume it`,
      );
      return 1;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}
