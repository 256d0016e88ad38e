// `pg-migrate cutover` and `pg-migrate abort`: the end of an online migration (--follow), for the whole cluster in
// one command, over SQL to both servers; the run's record under ~/.pg-migrate says what the run made.
//
// cutover: the writes stop (every migrated source database made read-only by default_transaction_read_only and the
// sessions in it ended — or, with --writes-stopped, the user says the applications are stopped), every
// subscription applies up to the source's WAL position at that moment, every sequence's value is copied (logical
// replication carries none), every table's exact count is compared, then the subscriptions, slots, publications
// and the replication role are dropped. The window from the block to the dropped subscriptions is reported. Each
// step is recorded and can be done again: a cutover interrupted half-way is run again and ends in the same state.
// A table whose counts differ stops it there, writes still blocked: the target is not the one to write to yet.
//
// abort: drops what the run made on both servers (and lifts a cutover's block); the copied databases stay.
import { join } from "node:path";
import type pg from "pg";
import type { RunRecord } from "../shared/contracts/record.js";
import { errorMessage, InterruptedError, PreflightError } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { appDir } from "../shared/paths.js";
import { countRows, listTables, sequenceValues } from "../shared/pg/catalog.js";
import { describe, withClient, type ServerSpec } from "../shared/pg/connect.js";
import { ident, literal, qualified } from "../shared/pg/quote.js";
import { inspect, pairKey as pairKeyOf } from "./checks.js";
import { dropFollowObjects, noteLag, readLag } from "./follow.js";
import { holdOnTarget, TargetLock, targetLockKey } from "./lock.js";
import { plural, seconds, type Output } from "./output.js";
import { RunState } from "./state.js";

export interface EndServers {
  source: ServerSpec;
  sourceDb: string;
  target: ServerSpec;
  targetDb: string;
}

export interface CutoverOptions {
  /** The user has stopped the applications: nothing is blocked, the cutover only waits, copies and verifies. */
  writesStopped: boolean;
  /** How long the subscriptions may take to catch up before the cutover stops (writes still blocked). */
  timeoutMs: number;
  /** Only say each database's lag now; change nothing. */
  lagOnly: boolean;
}

/** Opens both servers, finds the run's record, holds the target's lock, runs fn, and lets everything go. */
async function withRun<T>(
  servers: EndServers,
  command: string,
  wanted: (r: RunRecord) => boolean,
  none: string,
  fn: (run: RunState, src: pg.Client) => Promise<T>,
): Promise<T> {
  const home = appDir();
  const log = createLogger({ level: "info", file: join(home, "logs", `${command}.log`) });
  const src = await inspect(servers.source, servers.sourceDb);
  let tgt: Awaited<ReturnType<typeof inspect>> | undefined;
  let lock: TargetLock | undefined;
  try {
    tgt = await inspect(servers.target, servers.targetDb);
    const pair = pairKeyOf(src.info, tgt.info);
    const run = (await RunState.all(home, log)).find((s) => s.record.pairKey === pair && wanted(s.record));
    if (!run)
      throw new PreflightError(
        `${none} between the ${describe(servers.source)} and the ${describe(servers.target)} under ${home}`,
      );
    const where = `${servers.target.host}:${servers.target.port}`;
    lock = await TargetLock.acquire(
      home,
      targetLockKey(tgt.info.systemId, servers.target.host, servers.target.port),
      where,
      log,
    );
    await holdOnTarget(tgt.client, where);
    // Our own sessions write on a source made read-only by a cutover that stopped half-way.
    await src.client.query("SET default_transaction_read_only = off");
    return await fn(run, src.client);
  } finally {
    await lock?.release().catch(() => undefined);
    await tgt?.client.end().catch(() => undefined);
    await src.client.end().catch(() => undefined);
  }
}

export async function cutover(
  servers: EndServers,
  opts: CutoverOptions,
  out: Output,
  signal: AbortSignal,
): Promise<number> {
  const stop = () => {
    if (signal.aborted) throw new InterruptedError("interrupted");
  };
  return withRun(
    servers,
    "cutover",
    (r) => r.status === "following",
    "no online migration (a run with --follow) is following",
    async (run, src) => {
      const record = run.record;
      const follow = record.follow!;
      const dbs = record.databases.filter((d) => d.follow);
      if (opts.lagOnly) {
        out.line(`run ${run.runId}, lag: ${await noteLag(src, record)}`);
        await run.save();
        return 0;
      }
      const names = dbs.map((d) => d.name);
      const cut = (follow.cutover ??= { readOnly: [] });
      if (!opts.writesStopped) {
        cut.blockedAt ??= new Date().toISOString();
        for (const name of names) {
          if (cut.readOnly.includes(name)) continue;
          cut.readOnly.push(name); // recorded first: abort lifts it even after a crash in between
          await run.save();
          await src.query(`ALTER DATABASE ${ident(name)} SET default_transaction_read_only = on`);
        }
        const { rows } = await src.query<{ n: number }>(
          `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
            WHERE datname = ANY($1) AND backend_type = 'client backend' AND pid <> pg_backend_pid()`,
          [names],
        );
        out.line(
          `writes stopped: ${plural(names.length, "source database")} read-only (default_transaction_read_only), ${plural(rows[0]!.n, "session")} in them ended`,
        );
      } else {
        cut.blockedAt ??= new Date().toISOString();
        out.line("--writes-stopped: the applications are stopped, so nothing is blocked");
      }
      await run.save();
      stop();

      // Every subscription applies up to the source's WAL position once nothing more can commit.
      const lsn = (await src.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")).rows[0]!.lsn;
      cut.lsn = lsn;
      const following = dbs.filter((d) => d.follow!.subscribed);
      const deadline = Date.now() + opts.timeoutMs;
      for (;;) {
        const { rows } = await src.query<{ slot: string; ok: boolean }>(
          "SELECT slot_name AS slot, confirmed_flush_lsn >= $2::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = ANY($1)",
          [following.map((d) => d.follow!.slot), lsn],
        );
        const behind = following.filter((d) => !rows.some((r) => r.slot === d.follow!.slot && r.ok));
        if (!behind.length) break;
        stop();
        if (Date.now() > deadline) {
          const lag = await readLag(src, record);
          throw new Error(
            `${behind.map((d) => `${JSON.stringify(d.name)} (${lag.get(d.name)?.bytes ?? "?"} bytes behind${lag.get(d.name)?.active === false ? ", its subscription is not connected" : ""})`).join(", ")} did not catch up with the source's ${lsn} within ${seconds(opts.timeoutMs)}: the writes stay blocked; run cutover again, or "pg-migrate abort" to make the source writable again`,
          );
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      out.line(`the target has applied everything the source committed (up to ${lsn})`);

      // Sequences (not carried by logical replication), then every table's exact count on both sides.
      let sequences = 0;
      let verifiedRows = 0;
      const differ: string[] = [];
      const warnings: string[] = [];
      for (const d of dbs) {
        stop();
        await withClient(servers.source, d.name, async (s) => {
          await withClient(servers.target, d.name, async (t) => {
            for (const q of await sequenceValues(s)) {
              if (q.lastValue === null) continue;
              await t.query(`SELECT setval(${literal(qualified(q.schema, q.name))}, $1, $2)`, [
                q.lastValue,
                q.isCalled,
              ]);
              sequences++;
            }
            const [a, b] = await Promise.all([s, t].map(async (c) => countRows(c, await listTables(c))));
            const there = new Map(b!.map((x) => [`${x.schema}.${x.name}`, x]));
            for (const x of a!) {
              const y = there.get(`${x.schema}.${x.name}`);
              const name = `${JSON.stringify(d.name)} ${qualified(x.schema, x.name)}`;
              if (x.matview) {
                if (y?.rows !== x.rows)
                  warnings.push(
                    `materialized view ${name}: ${x.rows} rows on the source, ${y?.rows ?? "none"} on the target (logical replication does not refresh it): REFRESH MATERIALIZED VIEW it on the target`,
                  );
                continue;
              }
              if (!y || y.rows !== x.rows) differ.push(`${name}: source ${x.rows}, target ${y?.rows ?? "missing"}`);
              else verifiedRows += x.rows;
            }
          });
        });
      }
      for (const w of warnings) out.warn(w);
      if (differ.length)
        throw new Error(
          `after catching up, ${plural(differ.length, "table")} differ: ${differ.join("; ")}; the writes stay blocked and the subscriptions stay: look into it, then run cutover again or "pg-migrate abort"`,
        );
      cut.sequences = sequences;
      cut.verifiedRows = verifiedRows;
      await run.save();
      out.line(
        `copied ${plural(sequences, "sequence value")}; every table's count is equal on both sides (${plural(verifiedRows, "row")})`,
      );

      // The subscriptions go first: from here the target is the one to write to.
      stop();
      const dropped = await dropFollowObjects(record, servers, () => run.save());
      cut.doneAt ??= new Date().toISOString();
      cut.windowMs ??= Date.parse(cut.doneAt) - Date.parse(cut.blockedAt);
      record.status = "finished";
      await run.save();
      out.line(
        `cut over: ${plural(dbs.length, "database")}, writes blocked for ${seconds(cut.windowMs)} (${cut.windowMs} ms); dropped ${plural(dropped.subscriptions, "subscription")} on the target and the slots, publications and replication role ${JSON.stringify(follow.role)} on the source`,
      );
      if (cut.readOnly.length)
        out.line(
          `point the applications at the target now; the source's databases stay read-only (ALTER DATABASE … RESET default_transaction_read_only undoes it): ${cut.readOnly.map((n) => JSON.stringify(n)).join(", ")}`,
        );
      return 0;
    },
  );
}

export async function abort(servers: EndServers, out: Output): Promise<number> {
  return withRun(
    servers,
    "abort",
    (r) => r.follow !== undefined || r.databases.some((d) => d.follow),
    "no online migration (a run with --follow) was started",
    async (run, src) => {
      const record = run.record;
      const dropped = await dropFollowObjects(record, servers, () => run.save());
      const lifted = record.follow?.cutover?.readOnly ?? [];
      for (const name of lifted) {
        await src
          .query(`ALTER DATABASE ${ident(name)} RESET default_transaction_read_only`)
          .catch((err: unknown) =>
            out.warn(`could not make ${JSON.stringify(name)} writable again: ${errorMessage(err)}`),
          );
      }
      if (record.follow) {
        record.follow.aborted = true;
        if (record.follow.cutover) record.follow.cutover.readOnly = [];
      }
      if (record.status === "following") record.status = "abandoned";
      await run.save();
      const created = record.databases.filter((d) => d.created).map((d) => JSON.stringify(d.name));
      out.line(
        `run ${run.runId} aborted: dropped ${plural(dropped.subscriptions, "subscription")} on the target, ${plural(dropped.slots, "replication slot")} and the run's publications and replication role on the source${lifted.length ? `; ${plural(lifted.length, "source database")} writable again` : ""}${created.length ? `; the copied databases stay on the target (${created.join(", ")}): drop them there before migrating again` : ""}`,
      );
      return 0;
    },
  );
}
