// What each source database asks of the source server beyond a connection, checked by plan and by the run alike
// before anything changes: room in the source's lock table for its dump, and, for a source user that is not a
// superuser, the right to read every table pg_dump reads.
import type pg from "pg";
import { USER_SCHEMAS } from "../shared/pg/catalog.js";
import { withClient, type ServerSpec } from "../shared/pg/connect.js";
import { plural } from "./output.js";

/** The user's relations: not the system's, TOAST's or temporary ones (`n` is pg_namespace, `c` pg_class). */
const USER_RELATIONS = `${USER_SCHEMAS} AND c.relpersistence <> 't'`;

/**
 * How many relation locks a database's dump holds at once. pg_dump takes ACCESS SHARE on every table it dumps and
 * keeps it to its end (its parallel workers lock each table they dump again, to their end too), and reads every
 * sequence; the worker's count, in the same snapshot and so in one transaction held as long, locks each counted
 * table and, through the planner, every index of it, and reads every sequence's value. A second holder of a lock
 * takes a slot of its own.
 */
const LOCKS_SQL = `
  SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p', 'm', 'f')) AS dumped,
         count(*) FILTER (WHERE c.relkind IN ('r', 'm')) AS counted,
         count(*) FILTER (WHERE c.relkind = 'S') AS sequences,
         (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'm') AND ${USER_RELATIONS}) AS indexes
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE ${USER_RELATIONS}`;

/**
 * What pg_dump cannot read as this user: a table or sequence without SELECT, or a table whose row-level security
 * applies to the user (pg_dump turns row_security off and then refuses such a table; the count would see fewer rows).
 */
const UNREADABLE_SQL = `
  SELECT format('%I.%I', n.nspname, c.relname) AS name,
         CASE WHEN NOT has_table_privilege(c.oid, 'SELECT') THEN 'no SELECT' ELSE 'row-level security applies to it' END AS why
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'm', 'S') AND ${USER_RELATIONS}
     AND (NOT has_table_privilege(c.oid, 'SELECT')
          OR (c.relkind IN ('r', 'p') AND c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
              AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)))
   ORDER BY 1`;

/**
 * The locks PostgreSQL sizes its shared lock table for: max_locks_per_transaction for each server process (client
 * backends, autovacuum workers and their launcher, background workers, WAL senders) and prepared transaction.
 */
export interface LockRoom {
  perTransaction: number;
  slots: number;
  room: number;
}

/**
 * Past its nominal size the lock table borrows spare shared memory, shared by every session: measured on this
 * project's machines, it held 1.7 to 2.4 times its size. Above this many times, a dump surely cannot fit.
 */
export const LOCK_ROOM_SPARE = 3;

export async function lockRoom(client: pg.Client): Promise<LockRoom> {
  const { rows } = await client.query<{ per: string; slots: string }>(`
    SELECT current_setting('max_locks_per_transaction') AS per,
           current_setting('max_connections')::int + coalesce(current_setting('autovacuum_worker_slots', true), current_setting('autovacuum_max_workers'))::int + 1
             + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int
             + current_setting('max_prepared_transactions')::int AS slots`);
  const perTransaction = Number(rows[0]!.per);
  const slots = Number(rows[0]!.slots);
  return { perTransaction, slots, room: perTransaction * slots };
}

export interface DatabaseNeeds {
  db: string;
  /** Tables pg_dump locks. */
  dumped: number;
  /** Tables counted in the dump's snapshot, and their indexes. */
  counted: number;
  indexes: number;
  /** Sequences: read by pg_dump and by the count. */
  sequences: number;
  /** Whether pg_dump runs parallel workers (-j above 1), which lock the tables they dump again. */
  parallel: boolean;
  /** Relations the source user cannot read, each with why. */
  unreadable: { name: string; why: string }[];
}

export async function databaseNeeds(
  spec: ServerSpec,
  db: string,
  superuser: boolean,
  parallel: boolean,
): Promise<DatabaseNeeds> {
  return withClient(spec, db, async (c) => {
    const { rows } = await c.query<{ dumped: string; counted: string; indexes: string; sequences: string }>(LOCKS_SQL);
    const r = rows[0]!;
    const unreadable = superuser ? [] : (await c.query<{ name: string; why: string }>(UNREADABLE_SQL)).rows;
    return {
      db,
      dumped: Number(r.dumped),
      counted: Number(r.counted),
      indexes: Number(r.indexes),
      sequences: Number(r.sequences),
      parallel,
      unreadable,
    };
  });
}

export const locksNeeded = (n: DatabaseNeeds): number =>
  n.dumped * (n.parallel ? 2 : 1) + n.counted + n.indexes + 2 * n.sequences;

/** What the run refuses on and what it warns of, each naming the database, the numbers and the fix. */
export function sourceVerdicts(
  needs: DatabaseNeeds[],
  lock: LockRoom,
  user: string,
): { refusals: string[]; warnings: string[] } {
  const refusals: string[] = [];
  const warnings: string[] = [];
  for (const n of needs) {
    const name = JSON.stringify(n.db);
    if (n.unreadable.length) {
      const shown = n.unreadable
        .slice(0, 10)
        .map((u) => `${u.name} (${u.why})`)
        .join(", ");
      const more = n.unreadable.length > 10 ? ` and ${n.unreadable.length - 10} more` : "";
      refusals.push(
        `the source user ${JSON.stringify(user)} cannot read ${plural(n.unreadable.length, "relation")} of ${name} that pg_dump reads: ${shown}${more}; grant it SELECT (and BYPASSRLS for row-level security), migrate as a superuser, or leave the database out with --exclude-db`,
      );
    }
    const need = locksNeeded(n);
    if (need <= lock.room) continue;
    const seqs = n.sequences ? `, and ${plural(n.sequences, "sequence")} by both` : "";
    const what = `${name} holds about ${need} locks at once while it is dumped (${plural(n.dumped, "table")} locked by pg_dump${n.parallel ? " and again by its parallel workers" : ""}; ${plural(n.counted, "table")} and ${plural(n.indexes, "index", "indexes")} by the count in the same snapshot${seqs})`;
    const sized = `the source's lock table is sized for ${lock.room} (max_locks_per_transaction ${lock.perTransaction} × ${lock.slots} server processes and prepared transactions)`;
    const fix = `set max_locks_per_transaction to at least ${Math.ceil(need / lock.slots)} on the source (it takes a restart)`;
    if (need > LOCK_ROOM_SPARE * lock.room) {
      refusals.push(
        `${what}, more than ${LOCK_ROOM_SPARE} times what ${sized}: its dump would fail with "out of shared memory"; ${fix}, or leave the database out with --exclude-db`,
      );
    } else {
      warnings.push(
        `${what}, more than ${sized}; the spare room beyond that is shared with every other session, so the dump may fail with "out of shared memory": to be sure, ${fix}`,
      );
    }
  }
  return { refusals, warnings };
}

/**
 * Reads every selected database's needs (one connection at a time) and judges them against the source's lock table;
 * `jobs` is pg_dump's -j at the most.
 */
export async function checkSourceDatabases(
  spec: ServerSpec,
  client: pg.Client,
  dbs: string[],
  superuser: boolean,
  jobs: number,
): Promise<{ refusals: string[]; warnings: string[] }> {
  const lock = await lockRoom(client);
  const needs: DatabaseNeeds[] = [];
  for (const db of dbs) needs.push(await databaseNeeds(spec, db, superuser, jobs > 1));
  return sourceVerdicts(needs, lock, spec.user);
}
