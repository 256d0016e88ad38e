// Fast-restore mode: reloadable settings only, never one that needs a restart. The original values are saved
// in the run record before the first change, and put back exactly — an ALTER SYSTEM value the target already
// had is set again, anything else is RESET. They are also written onto the target itself, before the first fast
// value, as the custom setting pg_migrate.fast_restore in its postgresql.auto.conf: a coordinator from any home or
// host finds them there (a crashed run's record may be on another machine, or gone with a container's volume),
// takes them as the originals instead of the fast values it would read, and reverts with them. Revert rewrites
// every original and removes the record in the same reload, so values a crash left unreloaded in the file are
// overwritten before they could ever take effect. Then what the mode risked is made durable: after `full` (fsync off)
// a CHECKPOINT; after `safe` only the commits made with synchronous_commit=off were not yet on disk, and one
// synchronous commit flushes the WAL up to it — no checkpoint, whose writing of every restored page the bench
// showed to cost more than the mode saved.
import type pg from "pg";
import { errorMessage } from "../shared/errors.js";
import { serverUnavailable } from "../shared/pg/connect.js";
import { ident, literal } from "../shared/pg/quote.js";
import type { FastRestoreMode } from "./config.js";
import { decodeTargetRecord, type SavedSetting, type TargetRecord } from "../shared/contracts/record.js";

/** Settings that cannot corrupt the cluster if the target crashes mid-run. */
const SAFE: Record<string, string> = {
  synchronous_commit: "off",
  autovacuum: "off",
  checkpoint_timeout: "30min",
  max_wal_size: "4GB",
  maintenance_work_mem: "256MB",
};
/** The original pg-migrate's mode: also fsync and full_page_writes off. A crash of the target during the run can corrupt it. */
const FULL: Record<string, string> = { ...SAFE, fsync: "off", full_page_writes: "off" };

export function settingsFor(mode: FastRestoreMode): Record<string, string> {
  return mode === "full" ? FULL : mode === "safe" ? SAFE : {};
}

export async function saveSettings(client: pg.Client, names: string[]): Promise<SavedSetting[]> {
  const { rows } = await client.query<{ name: string; setting: string; unit: string | null }>(
    "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1) ORDER BY name",
    [names],
  );
  const { rows: auto } = await client.query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_file_settings
      WHERE sourcefile LIKE '%/postgresql.auto.conf' AND name = ANY($1) AND error IS NULL ORDER BY seqno`,
    [names],
  );
  const autoConf = new Map(auto.map((a) => [a.name, a.setting]));
  return rows.map((r) => ({ name: r.name, setting: r.setting, autoConf: autoConf.get(r.name) ?? null }));
}

/** The custom setting that carries, on the target itself, what a run changed there and the values to put back. */
export const TARGET_RECORD = "pg_migrate.fast_restore";

export type { TargetRecord };

/**
 * The record in the target's postgresql.auto.conf, read from the file as it is now (pg_file_settings), so that
 * one a crash left unreloaded is found too. Undefined when there is none, or when this user cannot read it.
 */
export async function readTargetRecord(client: pg.Client): Promise<TargetRecord | undefined> {
  const { rows } = await client
    .query<{ setting: string }>(
      `SELECT setting FROM pg_file_settings WHERE sourcefile LIKE '%/postgresql.auto.conf' AND name = $1 AND error IS NULL ORDER BY seqno DESC LIMIT 1`,
      [TARGET_RECORD],
    )
    .catch(() => ({ rows: [] as { setting: string }[] }));
  if (!rows[0]) return undefined;
  try {
    return decodeTargetRecord(rows[0].setting);
  } catch {
    return undefined; // not one of ours: nothing a revert could use
  }
}

/** The record first, then the fast values, then one reload: there is never a fast value on the target without it. */
export async function applySettings(
  client: pg.Client,
  values: Record<string, string>,
  record: Omit<TargetRecord, "v" | "at">,
): Promise<void> {
  // ALTER SYSTEM takes a custom setting only once this session knows the name (a placeholder, from PostgreSQL 15).
  await client.query(`SET ${TARGET_RECORD} = ''`);
  const carried: TargetRecord = { v: 1, ...record, at: new Date().toISOString() };
  await client.query(`ALTER SYSTEM SET ${TARGET_RECORD} = ${literal(JSON.stringify(carried))}`);
  for (const [name, value] of Object.entries(values)) {
    await client.query(`ALTER SYSTEM SET ${ident(name)} = ${literal(value)}`);
  }
  await client.query("SELECT pg_reload_conf()");
}

/** Whether reverting these settings must end with a CHECKPOINT: data files were written without fsync. */
export const needsCheckpoint = (saved: SavedSetting[]): boolean =>
  saved.some((s) => s.name === "fsync" || s.name === "full_page_writes");

/**
 * Puts every saved setting back, reloads, waits until a new session sees the original values, and makes the
 * run's writes durable (see the top of this file). Returns the names that still differ (empty when all is well).
 */
export async function revertSettings(openClient: () => Promise<pg.Client>, saved: SavedSetting[]): Promise<string[]> {
  const client = await openClient();
  try {
    for (const s of saved) {
      if (s.autoConf === null) await client.query(`ALTER SYSTEM RESET ${ident(s.name)}`);
      else await client.query(`ALTER SYSTEM SET ${ident(s.name)} = ${literal(s.autoConf)}`);
    }
    // The record goes with the same reload; should this revert be cut short before, the next one finds it again.
    await client.query(`SET ${TARGET_RECORD} = ''`);
    await client.query(`ALTER SYSTEM RESET ${TARGET_RECORD}`);
    await client.query("SELECT pg_reload_conf()");
  } finally {
    await client.end().catch(() => undefined);
  }
  // pg_reload_conf() only signals the postmaster; new sessions see the result once it has re-read the files.
  let differing: string[] = saved.map((s) => s.name);
  for (let i = 0; i < 50 && differing.length; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const c = await openClient();
    try {
      const now = await saveSettings(
        c,
        saved.map((s) => s.name),
      );
      const byName = new Map(now.map((n) => [n.name, n.setting]));
      differing = saved.filter((s) => byName.get(s.name) !== s.setting).map((s) => s.name);
      if (!differing.length) await makeDurable(c, saved);
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  return differing;
}

/**
 * revertSettings, waiting for a target that is away for now (restarting, in recovery) with backoff for up to boundMs,
 * saying so once: a revert tried once against a server that says "starting up" would leave it in fast mode.
 */
export async function revertWhenBack(
  openClient: () => Promise<pg.Client>,
  saved: SavedSetting[],
  say: (line: string) => void,
  boundMs = 180_000,
): Promise<string[]> {
  const deadline = Date.now() + boundMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await revertSettings(openClient, saved);
    } catch (err) {
      if (!serverUnavailable(err) || Date.now() > deadline) throw err;
      if (attempt === 1)
        say(
          `the target is not answering (${errorMessage(err)}); trying again to put its settings back, for up to ${Math.round(boundMs / 1000)}s`,
        );
      await new Promise((r) => setTimeout(r, Math.min(5_000, 250 * 2 ** Math.min(attempt, 5))));
    }
  }
}

/**
 * Files written while fsync was off become durable only through a checkpoint (and an OS sync). Otherwise only
 * asynchronous commits were at risk, and a synchronous commit waits for the WAL up to its own record, which
 * follows every earlier one.
 */
async function makeDurable(c: pg.Client, saved: SavedSetting[]): Promise<void> {
  const [sql, what] = needsCheckpoint(saved)
    ? ["CHECKPOINT", "CHECKPOINT"]
    : ["BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT", "flushing the WAL"];
  await c.query(sql).catch((err: unknown) => {
    throw new Error(`${what} after reverting failed: ${errorMessage(err)}`);
  });
}
