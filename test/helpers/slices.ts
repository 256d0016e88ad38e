// Holding a streamed database's slice in the middle (--via stream): once the schema step has created a table on the
// target, the test locks it there, so the next slice that COPYs into it waits — its source snapshot imported, its
// target transaction open — for as long as the test holds the lock.
import pg from "pg";
import type { LocalCluster } from "../../demo/cluster.js";
import { query } from "./cli.js";
import { pidOfClientPort, waitFor } from "./procs.js";

export interface HeldTable {
  /** Ends the lock (and its connection); safe to call twice, and after the target went away. */
  release(): Promise<void>;
}

/** Waits for the table on the target, then locks it (ACCESS EXCLUSIVE) in a transaction the test holds open. */
export async function lockOnTarget(target: LocalCluster, db: string, table: string): Promise<HeldTable> {
  await waitFor(
    `${db}.${table} on the target`,
    async () =>
      (await query(target, "postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [db])).length > 0 &&
      (await query(target, db, "SELECT 1 FROM pg_class WHERE relname = $1", [table]).catch(() => [])).length > 0,
    180_000,
    5,
  );
  const locker = new pg.Client({ ...target, database: db });
  await locker.connect();
  locker.on("error", () => undefined); // the target may go away under it (an outage test)
  await locker.query(`BEGIN; LOCK TABLE ${pg.escapeIdentifier(table)} IN ACCESS EXCLUSIVE MODE`);
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await locker.query("COMMIT").catch(() => undefined);
      await locker.end().catch(() => undefined);
    },
  };
}

/** The client port of a slice's target session waiting on a lock in db (the slice is then surely mid-way). */
export async function sliceWaiting(target: LocalCluster, db: string): Promise<number> {
  return waitFor(
    `a slice of ${db} waiting in its COPY`,
    async () =>
      (
        await query<{ port: number }>(
          target,
          db,
          "SELECT client_port AS port FROM pg_stat_activity WHERE application_name = 'pg-migrate slice' AND wait_event_type = 'Lock' AND datname = current_database()",
        )
      )[0]?.port,
    60_000,
    20,
  );
}

/**
 * A slice of db held on the test's lock, and the process at the client end of its target session: found again
 * until both are seen together (a session seen waiting may be gone by the time its socket is looked up).
 */
export async function heldSlice(target: LocalCluster, db: string): Promise<{ port: number; pid: number }> {
  return waitFor(
    `a slice of ${db} held, and its process`,
    async () => {
      const port = await sliceWaiting(target, db);
      try {
        return { port, pid: pidOfClientPort(port) };
      } catch {
        return undefined;
      }
    },
    60_000,
    50,
  );
}
