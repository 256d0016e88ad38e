// --follow, an online migration: what the run makes on both servers so that the target keeps up with the source
// after the copy, and what cutover and abort drop again.
//
// Per database, before its copy: a publication FOR ALL TABLES on the source, then a logical slot (pgoutput) made
// on a replication connection whose exported snapshot is the one every job of the copy reads in — the slot's
// stream starts exactly where the snapshot ends, no gap and no overlap. That connection is the database's snapshot
// holder (stream.ts). After the database is copied and verified: a subscription on the target, on that slot,
// without an initial copy. The subscriptions log in to the source as a temporary role the run creates (LOGIN
// REPLICATION, a random password sent to the source only as a SCRAM verifier): that password is the only one the
// target's catalog ever holds. Every name is the run's own (pgm_<run id>_<n>), recorded before it is made.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import type pg from "pg";
import type { Follow, FollowDb, RunRecord } from "../shared/contracts/record.js";
import { errorMessage } from "../shared/errors.js";
import { USER_SCHEMAS } from "../shared/pg/catalog.js";
import { connect, withClient, type ServerSpec } from "../shared/pg/connect.js";
import { ident, literal } from "../shared/pg/quote.js";
import type { ServerInfo } from "./checks.js";
import type { MigrateConfig } from "./config.js";
import { bytes, plural } from "./output.js";

const sqlName = (runId: string) => runId.toLowerCase().replace(/[^a-z0-9]/g, "_");

/** The publication, slot and subscription of the run's index-th database: one name, the run's own. */
export function followNames(runId: string, index: number): FollowDb {
  const name = `pgm_${sqlName(runId)}_${index + 1}`;
  return { publication: name, slot: name, subscription: name, subscribed: false };
}

export const followRole = (runId: string): string => `pgm_follow_${sqlName(runId)}`;

/** A SCRAM-SHA-256 verifier of the password, as pg_authid keeps it: the source never sees the password itself. */
export function scramVerifier(password: string, iterations = 4096): string {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password, salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}

/** A libpq connection-string value, quoted. */
const conninfoValue = (v: string): string => `'${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;

/** The subscription's connection string: the temporary role, never the migration user. */
export function subscriptionConninfo(
  publisher: Follow["publisher"],
  db: string,
  role: string,
  password: string,
  sslmode: string | undefined,
): string {
  return [
    `host=${conninfoValue(publisher.host)}`,
    `port=${publisher.port}`,
    `dbname=${conninfoValue(db)}`,
    `user=${conninfoValue(role)}`,
    `password=${conninfoValue(password)}`,
    `sslmode=${conninfoValue(sslmode && !sslmode.startsWith("verify") ? sslmode : "prefer")}`,
    "connect_timeout=10",
  ].join(" ");
}

/** Tables that logical replication cannot UPDATE or DELETE in: no primary key and no replica identity. */
const WITHOUT_IDENTITY_SQL = `
  SELECT format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND ${USER_SCHEMAS}
     AND (c.relreplident = 'n'
          OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
     AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
   ORDER BY 1`;

/**
 * What --follow needs, read and nothing changed: logical WAL, room for a slot and a WAL sender per database on the
 * source and an apply worker per subscription on the target, superusers on both sides, no large objects, every
 * table able to carry its UPDATEs and DELETEs, and the target server's own way to the source.
 */
export async function followChecks(
  cfg: MigrateConfig,
  src: pg.Client,
  tgt: pg.Client,
  source: ServerInfo,
  target: ServerInfo,
  databases: string[],
): Promise<{ refusals: string[]; warnings: string[]; notes: string[] }> {
  const refusals: string[] = [];
  const warnings: string[] = [];
  const notes: string[] = [];
  const n = databases.length;
  const setting = async (c: pg.Client, name: string) =>
    (await c.query<{ v: string }>("SELECT current_setting($1) AS v", [name])).rows[0]!.v;
  const walLevel = await setting(src, "wal_level");
  if (walLevel !== "logical")
    refusals.push(
      `--follow needs wal_level=logical on the source, which has ${walLevel}: run ALTER SYSTEM SET wal_level = logical there, then restart the source (wal_level changes only at a restart)`,
    );
  if (!source.superuser)
    refusals.push(
      `--follow needs a source superuser (a publication FOR ALL TABLES, a replication role): ${JSON.stringify(cfg.source.user)} is not one`,
    );
  if (!target.superuser)
    refusals.push(
      `--follow needs a target superuser (CREATE SUBSCRIPTION): ${JSON.stringify(cfg.target.user)} is not one`,
    );
  const { rows: srcRoom } = await src.query<{ slots: number; senders: number }>(`
    SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int AS slots,
           current_setting('max_wal_senders')::int
             - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int AS senders`);
  const room = srcRoom[0]!;
  if (room.slots < n)
    refusals.push(
      `--follow needs a replication slot per database (${n}) on the source, which has room for ${room.slots}: raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = …, then restart the source)`,
    );
  if (room.senders < n)
    refusals.push(
      `--follow needs a WAL sender per database (${n}) on the source, which has ${room.senders} free: raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = …, then restart the source)`,
    );
  const { rows: tgtRoom } = await tgt.query<{ workers: number; origins: number; subs: number }>(`
    SELECT current_setting('max_logical_replication_workers')::int AS workers,
           current_setting('max_replication_slots')::int AS origins,
           (SELECT count(*) FROM pg_subscription WHERE subenabled)::int AS subs`);
  const t = tgtRoom[0]!;
  for (const [have, name] of [
    [t.workers, "max_logical_replication_workers"],
    [t.origins, "max_replication_slots"],
  ] as const) {
    if (have - t.subs < n)
      refusals.push(
        `--follow needs an apply worker per database (${n}) on the target, whose ${name} is ${have}${t.subs ? ` with ${t.subs} subscriptions of its own` : ""}: ALTER SYSTEM SET ${name} = ${n + t.subs} on the target, then restart it`,
      );
  }
  for (const db of databases) {
    await withClient(cfg.source, db, async (c) => {
      const lo = await c.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_largeobject_metadata");
      if (lo.rows[0]!.n > 0)
        refusals.push(
          `${JSON.stringify(db)} holds ${plural(lo.rows[0]!.n, "large object")}, which logical replication does not carry: --follow cannot keep them current (migrate this cluster without --follow, or move the large objects into bytea columns)`,
        );
      const missing = (await c.query<{ name: string }>(WITHOUT_IDENTITY_SQL)).rows.map((r) => r.name);
      if (missing.length && !cfg.replicaIdentityFull)
        refusals.push(
          `${JSON.stringify(db)} has ${plural(missing.length, "table")} with neither a primary key nor a replica identity, whose UPDATEs and DELETEs the source would refuse once published: ${missing.join(", ")}; give them a primary key, or let --replica-identity-full set REPLICA IDENTITY FULL on them on the source`,
        );
      else if (missing.length)
        notes.push(
          `--replica-identity-full: ${JSON.stringify(db)}: REPLICA IDENTITY FULL will be set on the source for ${missing.join(", ")}`,
        );
      const unlogged = await c.query<{ name: string }>(
        `SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND c.relpersistence = 'u' AND ${USER_SCHEMAS} ORDER BY 1`,
      );
      if (unlogged.rowCount)
        warnings.push(
          `${JSON.stringify(db)}: unlogged tables are copied but not followed (logical replication reads only the WAL): ${unlogged.rows.map((r) => r.name).join(", ")}`,
        );
    });
  }
  // Only a superuser may make the probe's subscription (refused above otherwise).
  if (target.superuser) {
    const reach = await targetReachesSource(tgt, cfg.followSource ?? { host: cfg.source.host, port: cfg.source.port });
    if (reach) refusals.push(reach);
  }
  return { refusals, warnings, notes };
}

/**
 * Whether the target server itself reaches the source: a subscription that connects, made and rolled back in one
 * transaction, logging in as a role that does not exist and with no password. A refused login proves the way
 * there; only a connection that never reached the source's server is a refusal. Nothing is kept; no secret sent.
 */
async function targetReachesSource(tgt: pg.Client, publisher: Follow["publisher"]): Promise<string | undefined> {
  const conninfo = `host=${conninfoValue(publisher.host)} port=${publisher.port} dbname=postgres user=pg_migrate_reachability_probe connect_timeout=5`;
  await tgt.query("BEGIN");
  try {
    await tgt.query(
      `CREATE SUBSCRIPTION pg_migrate_reachability_probe CONNECTION ${literal(conninfo)} PUBLICATION pg_migrate_probe WITH (connect = true, create_slot = false, enabled = false, slot_name = NONE)`,
    );
    return undefined;
  } catch (err) {
    const m = errorMessage(err);
    if (/password|authentication|no pg_hba\.conf entry|does not exist|SSL/i.test(m)) return undefined;
    return `the target server cannot reach the source at ${publisher.host}:${publisher.port}, which its subscriptions must (${m}): --follow-source HOST:PORT gives the address it reaches the source at`;
  } finally {
    await tgt.query("ROLLBACK").catch(() => undefined);
  }
}

/**
 * The database's publication (made once) and a new logical slot, on a replication connection that exports the
 * slot's snapshot: that connection is returned as the holder, and must run no other command while the snapshot is
 * read. A slot of an earlier session (its snapshot went with it) is dropped first.
 */
export async function holdSlot(
  source: ServerSpec,
  db: string,
  f: FollowDb,
  replicaIdentityFull: boolean,
): Promise<{ client: pg.Client; snapshot: string; lsn: string }> {
  await withClient(source, db, async (c) => {
    await c.query("SET default_transaction_read_only = off");
    if (replicaIdentityFull) {
      const { rows } = await c.query<{ name: string }>(WITHOUT_IDENTITY_SQL);
      for (const r of rows) await c.query(`ALTER TABLE ${r.name} REPLICA IDENTITY FULL`);
    }
    const pub = await c.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [f.publication]);
    if (!pub.rowCount) await c.query(`CREATE PUBLICATION ${ident(f.publication)} FOR ALL TABLES`);
    await dropSlot(c, f.slot);
  });
  const client = await connect(source, db, "pg-migrate snapshot holder", { replication: "database" });
  try {
    // The pre-15 spelling, which every supported major (12 and up) still takes.
    const { rows } = await client.query<{ snapshot_name: string; consistent_point: string }>(
      `CREATE_REPLICATION_SLOT ${ident(f.slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`,
    );
    return { client, snapshot: rows[0]!.snapshot_name, lsn: rows[0]!.consistent_point };
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
}

/** Drops the slot if it is there, once its session has let go of it (up to 15 s). */
async function dropSlot(c: pg.Client, slot: string): Promise<boolean> {
  for (let i = 0; ; i++) {
    const { rows } = await c.query<{ active: boolean }>(
      "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
      [slot],
    );
    if (!rows.length) return false;
    if (!rows[0]!.active || i >= 150) {
      await c.query("SELECT pg_drop_replication_slot($1)", [slot]);
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The run's temporary replication role on the source, with a new password (its verifier only). */
export async function setFollowRole(src: pg.Client, role: string, password: string): Promise<void> {
  const exists = await src.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]);
  await src.query(
    `${exists.rowCount ? "ALTER" : "CREATE"} ROLE ${ident(role)} WITH LOGIN REPLICATION PASSWORD ${literal(scramVerifier(password))}`,
  );
}

const SUBSCRIPTION_SQL =
  "SELECT s.subenabled AS enabled FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = $1 AND d.datname = current_database()";

/** The database's subscription on the target, from its slot, without an initial copy; its connection renewed if there. */
export async function subscribe(tgt: pg.Client, f: FollowDb, conninfo: string): Promise<void> {
  const found = await tgt.query(SUBSCRIPTION_SQL, [f.subscription]);
  if (found.rowCount) {
    await tgt.query(`ALTER SUBSCRIPTION ${ident(f.subscription)} CONNECTION ${literal(conninfo)}`);
    return;
  }
  await tgt.query(
    `CREATE SUBSCRIPTION ${ident(f.subscription)} CONNECTION ${literal(conninfo)} PUBLICATION ${ident(f.publication)} WITH (create_slot = false, slot_name = ${literal(f.slot)}, copy_data = false)`,
  );
}

/** Drops the database's subscription on the target, leaving its slot to the source side (dropped by the caller). */
export async function unsubscribe(tgt: pg.Client, f: FollowDb): Promise<void> {
  const found = await tgt.query(SUBSCRIPTION_SQL, [f.subscription]);
  if (!found.rowCount) return;
  const sub = ident(f.subscription);
  await tgt.query(`ALTER SUBSCRIPTION ${sub} DISABLE`);
  await tgt.query(`ALTER SUBSCRIPTION ${sub} SET (slot_name = NONE)`);
  await tgt.query(`DROP SUBSCRIPTION ${sub}`);
}

/** Drops the database's slot and publication on the source, if there. */
export async function dropSourceSide(source: ServerSpec, db: string, f: FollowDb): Promise<void> {
  await withClient(source, db, async (c) => {
    await c.query("SET default_transaction_read_only = off");
    await dropSlot(c, f.slot);
    await c.query(`DROP PUBLICATION IF EXISTS ${ident(f.publication)}`);
  });
}

export async function dropFollowRole(src: pg.Client, role: string): Promise<void> {
  await src.query("SET default_transaction_read_only = off");
  await src.query(`DROP ROLE IF EXISTS ${ident(role)}`);
}

/** Each followed database's lag: source WAL its slot has not had confirmed, and the WAL sender's replay lag. */
export async function readLag(
  src: pg.Client,
  record: RunRecord,
): Promise<Map<string, { bytes: number; seconds: number | null; active: boolean; retained: number }>> {
  const dbs = record.databases.filter((d) => d.follow);
  const { rows } = await src.query<{
    slot: string;
    bytes: string | null;
    retained: string | null;
    active: boolean;
    seconds: number | null;
  }>(
    `SELECT s.slot_name AS slot, s.active,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS bytes,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained,
            extract(epoch FROM r.replay_lag)::float8 AS seconds
       FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
      WHERE s.slot_name = ANY($1)`,
    [dbs.map((d) => d.follow!.slot)],
  );
  const bySlot = new Map(rows.map((r) => [r.slot, r]));
  const out = new Map<string, { bytes: number; seconds: number | null; active: boolean; retained: number }>();
  for (const d of dbs) {
    const r = bySlot.get(d.follow!.slot);
    if (!r) continue;
    const b = Math.max(0, Number(r.bytes ?? 0));
    out.set(d.name, {
      bytes: b,
      seconds: b === 0 ? 0 : r.seconds,
      active: r.active,
      retained: Math.max(0, Number(r.retained ?? 0)),
    });
  }
  return out;
}

/** Reads the lag into the record (status shows it) and says it in one line. */
export async function noteLag(src: pg.Client, record: RunRecord): Promise<string> {
  const lag = await readLag(src, record);
  const at = new Date().toISOString();
  const parts: string[] = [];
  for (const d of record.databases) {
    const l = lag.get(d.name);
    if (!l || !d.follow) continue;
    d.follow.lag = { bytes: l.bytes, seconds: l.seconds, at };
    parts.push(
      `${JSON.stringify(d.name)} ${bytes(l.bytes)}${l.seconds === null ? "" : ` / ${l.seconds.toFixed(1)} s`}${l.active ? "" : " (slot inactive)"}`,
    );
  }
  return parts.join(", ");
}

/** The tables of a database the subscriptions follow, as `schema.name`: every ordinary, permanent one. */
export const FOLLOWED_TABLES_SQL = `
  SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND ${USER_SCHEMAS} ORDER BY 1, 2`;

/**
 * The end of a --follow run's copy: every verified database gets its subscription (the temporary role made, or
 * given a new password that every subscription of the run is told). Then one lag reading.
 */
export async function startFollowing(
  cfg: MigrateConfig,
  state: { record: RunRecord; save(): Promise<void> },
  src: pg.Client,
  say: (line: string) => void,
): Promise<void> {
  const record = state.record;
  const ready = record.databases.filter((d) => d.phase === "done" && d.follow);
  if (!ready.length) return;
  const follow = (record.follow ??= {
    role: followRole(record.runId),
    roleCreated: false,
    publisher: cfg.followSource ?? { host: cfg.source.host, port: cfg.source.port },
  });
  // Recorded before it is made; a new password each session, so none outlives the session that knew it.
  follow.roleCreated = true;
  await state.save();
  const password = randomBytes(24).toString("base64url");
  await setFollowRole(src, follow.role, password);
  for (const d of ready) {
    const f = d.follow!;
    await withClient(cfg.target, d.name, (c) =>
      subscribe(c, f, subscriptionConninfo(follow.publisher, d.name, follow.role, password, cfg.source.sslmode)),
    );
    f.subscribed = true;
    await state.save();
  }
  say(
    `following ${plural(ready.length, "database")}: a subscription on the target applies what the source commits (lag: ${await noteLag(src, record)})`,
  );
  await state.save();
}

/**
 * What a --follow session that did not get to following leaves: no slot (one without a subscription only holds
 * WAL back) and no publication, and no temporary role when no subscription uses it. A resumed run makes new ones.
 */
export async function dropUnfollowed(
  cfg: MigrateConfig,
  state: { record: RunRecord; save(): Promise<void> },
  src: pg.Client,
): Promise<void> {
  const record = state.record;
  for (const d of record.databases) {
    if (!d.follow || d.follow.subscribed) continue;
    await dropSourceSide(cfg.source, d.name, d.follow).catch((err: unknown) => {
      throw new Error(
        `could not drop slot ${d.follow!.slot} of ${JSON.stringify(d.name)} on the source: ${errorMessage(err)}`,
      );
    });
  }
  if (record.follow?.roleCreated && !record.databases.some((d) => d.follow?.subscribed)) {
    await dropFollowRole(src, record.follow.role);
    record.follow.roleCreated = false;
  }
  await state.save();
}

/** A database that is gone (3D000) holds nothing of the run any more. */
function unlessGone(err: unknown): void {
  if ((err as { code?: string }).code !== "3D000") throw err;
}

/**
 * Everything a --follow run made on both servers, dropped (cutover at its end, abort, --restart): subscriptions on
 * the target first (each stops reading its slot), then slots and publications on the source, then the role.
 * Each step is recorded, and each is a no-op when already done: run again after an interruption, it finishes.
 */
export async function dropFollowObjects(
  record: RunRecord,
  servers: { source: ServerSpec; sourceDb: string; target: ServerSpec },
  save: () => Promise<void>,
): Promise<{ subscriptions: number; slots: number }> {
  let subscriptions = 0;
  let slots = 0;
  for (const d of record.databases) {
    const f = d.follow;
    if (!f) continue;
    if (f.subscribed) {
      await withClient(servers.target, d.name, (c) => unsubscribe(c, f)).catch(unlessGone);
      f.subscribed = false;
      subscriptions++;
      await save();
    }
    await withClient(servers.source, d.name, async (c) => {
      await c.query("SET default_transaction_read_only = off");
      if (await dropSlot(c, f.slot)) slots++;
      await c.query(`DROP PUBLICATION IF EXISTS ${ident(f.publication)}`);
    }).catch(unlessGone);
  }
  if (record.follow?.roleCreated) {
    await withClient(servers.source, servers.sourceDb, (c) => dropFollowRole(c, record.follow!.role));
    record.follow.roleCreated = false;
    await save();
  }
  return { subscriptions, slots };
}
