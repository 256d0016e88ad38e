// One run per target. Two coordinators changing one target's settings and databases at once would undo each
// other's work, so the target is locked three times: a file under ~/.pg-migrate/locks (taken before anything
// starts, even the embedded broker), an entry in the runs KV (seen by coordinators on other hosts that share the
// broker), and a session advisory lock on the target itself (seen by every coordinator, whatever its home or
// broker; the server drops it when the coordinator's session ends, so it can never go stale). All three name the
// run that holds them. A file or KV lock whose holder died is stale and taken over: on this host the holder's
// pid is checked, elsewhere the holder's heartbeat must have stopped for STALE_MS.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { link, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import type { KV } from "@nats-io/kv";
import type pg from "pg";
import { kvKeys } from "../shared/contracts/jetstream.js";
import { decodeLockHolder, type LockHolder } from "../shared/contracts/record.js";
import { errorMessage, PreflightError } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { makeDir } from "../shared/dirs.js";

export type { LockHolder };

const REFRESH_MS = 5_000;
const STALE_MS = 30_000;

/** The target's identity: its system identifier when readable, else its address. */
export function targetLockKey(systemId: string | null, host: string, port: number): string {
  return createHash("sha256")
    .update(systemId ?? `${host}:${port}`)
    .digest("hex")
    .slice(0, 16);
}

/** Whether a pg-migrate process with this pid runs on this host (a reused pid belongs to something else). */
export function pgMigrateAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").includes("pg-migrate");
  } catch {
    return true; // no /proc to ask: the pid is alive, assume it is ours
  }
}

export function isStale(h: LockHolder, now = Date.now()): boolean {
  if (h.host === hostname()) return !pgMigrateAlive(h.pid);
  return now - Date.parse(h.at) > STALE_MS;
}

function refusal(h: LockHolder): PreflightError {
  const who = h.runId ? `run ${h.runId}` : "another pg-migrate run";
  return new PreflightError(
    `the target ${h.target} is being migrated by ${who} (coordinator pid ${h.pid} on ${h.host}, since ${h.startedAt}): wait for it to end or stop it (Ctrl-C) first; a dead run's lock is taken over automatically`,
  );
}

export class TargetLock {
  private kv: { kv: KV; key: string; revision: number } | undefined;
  private readonly timer: NodeJS.Timeout;
  private released = false;

  private constructor(
    private readonly path: string,
    private readonly holder: LockHolder,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.timer.unref();
  }

  /** Takes the file lock, or refuses with a sentence naming the live run that holds it. */
  static async acquire(home: string, key: string, target: string, log: Logger): Promise<TargetLock> {
    const dir = lockDir(home);
    await makeDir(dir);
    const path = join(dir, `target-${key}.json`);
    const now = new Date().toISOString();
    const holder: LockHolder = { runId: null, pid: process.pid, host: hostname(), target, startedAt: now, at: now };
    // Written whole into a private file, then linked into place: the lock never exists half-written.
    const mine = `${path}.${process.pid}.new`;
    await writeFile(mine, JSON.stringify(holder), { mode: 0o600 });
    try {
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await link(mine, path);
          return new TargetLock(path, holder, log);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        }
        const current = await readHolder(path);
        if (!current || !isStale(current)) {
          if (current) throw refusal(current);
          continue; // unreadable for a moment: look again
        }
        log.warn({ holder: current }, "taking over a stale target lock");
        // Moved aside and checked: if what was moved is not the stale holder we judged (someone took the lock
        // over in between), it is put back and counts as live.
        const aside = `${path}.stale-${process.pid}`;
        if (
          await rename(path, aside).then(
            () => true,
            () => false,
          )
        ) {
          const moved = await readHolder(aside);
          if (moved && !sameHolder(moved, current)) {
            await link(aside, path).catch(() => undefined);
            await rm(aside, { force: true });
            throw refusal(moved);
          }
          await rm(aside, { force: true });
        }
      }
      throw new PreflightError(`could not take the target lock ${path}: remove it if no pg-migrate run is alive`);
    } finally {
      await rm(mine, { force: true });
    }
  }

  /** Names the run in the lock once it is known. */
  async setRun(runId: string): Promise<void> {
    this.holder.runId = runId;
    await this.refresh();
  }

  /** The same lock in the runs KV, compare-and-set, for coordinators that do not share this host's files. */
  async holdInKv(kv: KV, key: string): Promise<void> {
    const k = kvKeys.lock(key);
    const value = () => JSON.stringify({ ...this.holder, at: new Date().toISOString() });
    let revision: number;
    try {
      revision = await kv.create(k, value());
    } catch {
      const entry = await kv.get(k);
      const current = entry && entry.operation === "PUT" ? kvHolder(entry, k) : undefined;
      const live = entry && liveInKv(entry, k);
      if (live) throw refusal(live);
      if (current) this.log.warn({ holder: current }, "taking over a stale target lock in the KV");
      revision = entry ? await kv.update(k, value(), entry.revision) : await kv.create(k, value());
    }
    this.kv = { kv, key: k, revision };
  }

  private async refresh(): Promise<void> {
    if (this.released) return;
    this.holder.at = new Date().toISOString();
    const text = JSON.stringify(this.holder);
    try {
      await writeFile(`${this.path}.tmp`, text, { mode: 0o600 });
      await rename(`${this.path}.tmp`, this.path);
      if (this.kv) this.kv.revision = await this.kv.kv.update(this.kv.key, text, this.kv.revision);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "target lock not refreshed");
      // An update whose reply was lost leaves us a revision behind: take the entry's if it is still ours.
      const entry = await this.kv?.kv.get(this.kv.key).catch(() => null);
      const current = entry && entry.operation === "PUT" ? kvHolder(entry, this.kv!.key) : undefined;
      if (this.kv && entry && current && sameHolder(current, this.holder)) this.kv.revision = entry.revision;
      else if (this.kv && current)
        this.log.error({ holder: current }, "the target lock in the KV is now held by another run");
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    const current = await readHolder(this.path);
    if (current && current.pid === this.holder.pid && current.host === this.holder.host)
      await rm(this.path, { force: true });
    if (this.kv) await this.kv.kv.delete(this.kv.key, { previousSeq: this.kv.revision }).catch(() => undefined);
  }
}

function sameHolder(a: LockHolder, b: LockHolder): boolean {
  return a.pid === b.pid && a.host === b.host && a.startedAt === b.startedAt;
}

const lockDir = (home: string) => join(home, "locks");

/** The holders of the target locks under this home (one file per target while a run is live). */
export async function fileLockHolders(home: string): Promise<LockHolder[]> {
  const names = await readdir(lockDir(home)).catch(() => [] as string[]);
  const holders: LockHolder[] = [];
  for (const n of names.filter((x) => x.endsWith(".json"))) {
    const h = await readHolder(join(lockDir(home), n)); // undefined while being replaced
    if (h) holders.push(h);
  }
  return holders;
}

/** The holders of the target locks in the runs KV, aged by the broker's clock (when the entry was written). */
export async function kvLockHolders(kv: KV): Promise<LockHolder[]> {
  const holders: LockHolder[] = [];
  for await (const key of await kv.keys(kvKeys.allLocks)) {
    const e = await kv.get(key);
    if (e && e.operation === "PUT") holders.push({ ...kvHolder(e, key), at: e.created.toISOString() });
  }
  return holders;
}

/** A lock's holder as pg-migrate itself wrote it (file or KV entry). */
export function parseHolder(text: string): LockHolder {
  return decodeLockHolder(text);
}

/**
 * A holder in the KV, also one this version cannot read (another version of pg-migrate wrote it): that one is held
 * by somebody unknown, judged stale or live by the broker's clock like any other, never taken for a free lock.
 */
function kvHolder(entry: { string(): string; created: Date }, key: string): LockHolder {
  try {
    return parseHolder(entry.string());
  } catch {
    const at = entry.created.toISOString();
    return {
      runId: null,
      pid: 0,
      host: "(unreadable: another version of pg-migrate?)",
      target: key,
      startedAt: at,
      at,
    };
  }
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    return parseHolder(await readFile(path, "utf8"));
  } catch {
    return undefined;
  }
}

/** The advisory lock's key on the target: two int4 halves, "pgmi" and 1. */
const ADVISORY = [0x70676d69, 1] as const;

/** A session that holds the target's advisory lock: its application_name names the run. */
interface AdvisoryHolder {
  app: string | null;
  addr: string | null;
  since: Date | null;
  pid: number;
}

/** Sessions other than ours that hold the target's advisory lock, in any of its databases. */
async function advisoryHolders(client: pg.Client): Promise<AdvisoryHolder[]> {
  const { rows } = await client.query<AdvisoryHolder>(
    `SELECT a.application_name AS app, a.client_addr::text AS addr, a.backend_start AS since, a.pid
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2 AND l.granted
        AND l.pid <> pg_backend_pid()
      ORDER BY a.backend_start`,
    [...ADVISORY],
  );
  return rows;
}

function advisoryRefusal(target: string, h: AdvisoryHolder | undefined): string {
  const who = h?.app?.startsWith("pg-migrate run ")
    ? `run ${h.app.slice("pg-migrate run ".length)}`
    : "another pg-migrate run";
  return `the target ${target} is being migrated by ${who} (its coordinator's session ${h ? `pid ${h.pid} from ${h.addr ?? "a local socket"}, since ${h.since?.toISOString() ?? "?"}` : "holds the target's pg-migrate lock"}): wait for it to end or stop it (Ctrl-C) first`;
}

/**
 * Takes the session advisory lock on the target through the coordinator's own connection (held for the whole
 * run), and names the run in that session's application_name so a refused coordinator can say who holds it.
 */
export async function holdOnTarget(client: pg.Client, target: string): Promise<void> {
  // Advisory locks are per database and coordinators may connect to different ones (--to-db): take ours, then
  // look for the same lock held by another session in any database of the cluster.
  const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1, $2) AS ok", [...ADVISORY]);
  const holders = await advisoryHolders(client);
  if (rows[0]?.ok && !holders.length) return;
  if (rows[0]?.ok) await client.query("SELECT pg_advisory_unlock($1, $2)", [...ADVISORY]);
  throw new PreflightError(advisoryRefusal(target, holders[0]));
}

/**
 * Whether a live run holds this target now, read without taking anything (the preflight): this home's file lock,
 * then the target's advisory lock. The run takes the locks right after, which refuses in the same words.
 */
export async function heldBy(
  home: string,
  key: string,
  client: pg.Client,
  target: string,
): Promise<string | undefined> {
  const file = await readHolder(join(lockDir(home), `target-${key}.json`));
  if (file && !isStale(file)) return refusal(file).message;
  const holders = await advisoryHolders(client);
  return holders.length ? advisoryRefusal(target, holders[0]) : undefined;
}

/** Names the run in the session that holds the target's advisory lock. */
export async function nameRunOnTarget(client: pg.Client, runId: string): Promise<void> {
  await client.query("SELECT set_config('application_name', $1, false)", [`pg-migrate run ${runId}`]);
}

/** Whether a live run holds this target's lock in the runs KV, read without taking it (the preflight). */
export async function heldInKv(kv: KV, key: string): Promise<string | undefined> {
  const k = kvKeys.lock(key);
  const entry = await kv.get(k).catch(() => null);
  const live = entry && liveInKv(entry, k);
  return live ? refusal(live).message : undefined;
}

/**
 * The live holder of a KV lock entry, or undefined (deleted, or its holder stale). Another host's heartbeat is
 * judged by the broker's clock (when the entry was written), not the holder's.
 */
function liveInKv(entry: { operation: string; string(): string; created: Date }, key: string): LockHolder | undefined {
  if (entry.operation !== "PUT") return undefined;
  const current = kvHolder(entry, key);
  return isStale({ ...current, at: entry.created.toISOString() }) ? undefined : current;
}
