// The streamed databases of a run (--via stream): the coordinator holds each one's snapshot, plans its slices, and
// follows its schema job, its slices and its post job; the scheduler admits the database and decides its end.
//
// The holder: one session per database in flight, opened by the coordinator on the source, in a REPEATABLE READ
// transaction whose exported snapshot every job of the database reads in (pg_dump --snapshot, SET TRANSACTION
// SNAPSHOT), so the target is one consistent image even of a live source. It stays open, idle in its transaction,
// until the post job is done. When it ends first (the source restarted, a network cut, an idle-session timeout),
// the database starts over with a new snapshot: its jobs are withdrawn, the schema job recreates the database, and
// the slices are planned again — at most --max-deliver times. A coordinator that stops ends its holders with it: a
// resumed run starts its unfinished streamed databases over the same way.
import { jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { nanoid } from "nanoid";
import type pg from "pg";
import { JOBS_STREAM, subjects } from "../shared/contracts/jetstream.js";
import { encode, type JobEvent } from "../shared/contracts/messages.js";
import type { SliceState, StreamState } from "../shared/contracts/record.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { connect, serverUnavailable } from "../shared/pg/connect.js";
import { USER_SCHEMAS } from "../shared/pg/catalog.js";
import { literal } from "../shared/pg/quote.js";
import { retry } from "../shared/retry.js";
import type { SharedKey } from "../shared/secrets.js";
import type { MigrateConfig } from "./config.js";
import { followNames, holdSlot } from "./follow.js";
import { BUILD } from "./jobs.js";
import { bytes, plural, seconds, type Output } from "./output.js";
import { planSlices, SPLIT_FROM_VERSION, type PlannedSlice, type StreamTable } from "./slices.js";
import type { DbState, RunState } from "./state.js";

/** What the streamed databases ask of the scheduler. */
export interface StreamHost {
  /** Publishes the database's schema or post job, as the scheduler publishes every database-level job. */
  publish(db: DbState, kind: "schema" | "post" | "whole", resumed: boolean): Promise<void>;
  /** The database has failed, for this reason. */
  fail(db: DbState, reason: string): Promise<void>;
  /** The database goes on with its slices (its schema was restored in an earlier session). */
  copying(db: DbState): Promise<void>;
}

interface Snapshot {
  snapshot: string;
  txids: string;
  num: number;
  tables: StreamTable[];
}

interface Holder {
  client: pg.Client;
  /** Set before the holder is ended on purpose: its end is then no loss. */
  closing: boolean;
}

/** A database's tables as the slices carry them: in the snapshot, ordinary tables and partitions, not extensions'. */
const STREAM_TABLES_SQL = `
  SELECT n.nspname AS schema, c.relname AS name,
         pg_relation_size(c.oid) AS heap,
         coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast,
         pg_relation_size(c.oid) / current_setting('block_size')::int AS pages,
         ARRAY(SELECT a.attname::text FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                ORDER BY a.attnum) AS columns,
         ARRAY(SELECT a.attname::text FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS "hashColumns",
         NOT EXISTS (
           SELECT 1 FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
             LEFT JOIN pg_type b ON b.oid = t.typbasetype AND t.typtype = 'd'
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              AND (t.typsend::oid = 0 OR t.typreceive::oid = 0 OR t.typtype = 'c'
                   OR e.typsend::oid = 0 OR e.typreceive::oid = 0 OR e.typtype = 'c'
                   OR b.typsend::oid = 0 OR b.typreceive::oid = 0 OR b.typtype IN ('c', 'd'))) AS binary
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND ${USER_SCHEMAS}
     AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`;

/** How long a database whose holder ended waits for the source to take a connection again before it fails. */
const SOURCE_WAIT_MS = 300_000;

export class StreamDatabases {
  private readonly holders = new Map<string, Holder>();
  /** Each database's slices as planned, by slice id: their columns and pages are not kept in the run record. */
  private readonly plans = new Map<string, Map<string, PlannedSlice>>();
  /** Bytes each running slice has reported so far, by job id. */
  private readonly running = new Map<string, number>();
  private stopped = false;
  /** How often each database's holder ended under it in this session. */
  private readonly losses = new Map<string, number>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly state: RunState,
    private readonly cfg: MigrateConfig,
    private readonly key: SharedKey | undefined,
    private readonly log: Logger,
    private readonly out: Output,
    private readonly host: StreamHost,
  ) {}

  /**
   * Opens the database's holder, plans its slices in the holder's snapshot and publishes its schema job.
   * resumed: the target database may hold an earlier attempt's or session's writes (the schema job recreates it).
   */
  private async begin(db: DbState, resumed: boolean, because?: string): Promise<void> {
    const { snapshot, txids, num, tables } = this.cfg.follow ? await this.holdSlot(db) : await this.holdSnapshot(db);
    const previous = db.stream;
    const kept = resumed && previous ? this.keepable(previous, txids, tables) : undefined;
    if (previous && kept) {
      // Nothing changed on the source since the earlier snapshot: what the finished slices copied is what this one
      // shows. They stay; the others run again (one that committed unseen finds its marker and says so).
      this.plans.set(db.key, new Map(kept.map((s) => [s.id, s])));
      const done = previous.slices.filter((s) => s.phase === "done").length;
      for (const s of previous.slices) {
        if (s.phase === "done") continue;
        s.phase = "planned";
        s.jobId = undefined;
        s.jobSeq = undefined;
      }
      db.stream = {
        ...previous,
        snapshot,
        txids,
        keptSlices: done,
        restartedBecause: `${because ?? "its snapshot ended with the earlier session"}, but the source had not changed since (its transaction snapshot ${txids} is the same): ${plural(done, "finished slice")} kept, the other ${plural(previous.slices.length - done, "slice")} copied under a new snapshot`,
      };
      this.out.line(`${JSON.stringify(db.name)}: ${db.stream.restartedBecause}`);
      await this.host.copying(db);
      await this.next(db);
      return;
    }
    const slices = planSlices(tables, { jobs: this.cfg.jobs, canSplit: num >= SPLIT_FROM_VERSION });
    this.plans.set(db.key, new Map(slices.map((s) => [s.id, s])));
    const restarts = previous ? previous.restarts + 1 : 0;
    db.via = "stream";
    db.stream = {
      snapshot,
      txids,
      markerSchema: `_pg_migrate_${this.state.runId.replace(/-/g, "_")}_${restarts + 1}`,
      streamed: tables.map((t) => ({ schema: t.schema, name: t.name })),
      slices: slices.map((s) => ({
        id: s.id,
        tables: s.tables.map((t) => ({ schema: t.schema, name: t.name })),
        ...(s.part ? { part: s.part } : {}),
        bytes: s.bytes,
        phase: "planned",
        attempts: 0,
      })),
      restarts,
      ...(previous
        ? {
            restartedBecause: `${because ?? "its snapshot ended with the earlier session"}, and ${
              previous.txids !== txids
                ? `the source had changed since (transaction snapshot ${previous.txids}, now ${txids})`
                : "its schema was not restored yet, or its post-data had begun"
            }: copied again under a new snapshot`,
          }
        : {}),
    };
    if (previous && db.stream.restartedBecause)
      this.out.line(`${JSON.stringify(db.name)}: ${db.stream.restartedBecause}`);
    const split = slices.filter((s) => s.part?.n === 1);
    this.log.info(
      { db: db.name, snapshot, slices: slices.length, split: split.length },
      `${db.name}: snapshot ${snapshot} held; ${slices.length} slices`,
    );
    // One slice or none: schema, data and post-data in one job, from one archive, on one worker.
    await this.host.publish(db, slices.length <= 1 ? "whole" : "schema", resumed || previous !== undefined);
  }

  /** Keeps the holder in the map, and starts the database over when it ends before its time. */
  private hold(db: DbState, client: pg.Client): void {
    const holder: Holder = { client, closing: false };
    this.holders.set(db.key, holder);
    const lost = (why: string) => {
      if (holder.closing || this.stopped || this.holders.get(db.key) !== holder) return;
      holder.closing = true;
      void this.startOver(db, `its snapshot holder session on the source ended (${why})`);
    };
    client.on("error", (err) => lost(errorMessage(err)));
    client.on("end", () => lost("the connection closed"));
  }

  /** The holder's own REPEATABLE READ transaction, its exported snapshot, and the tables read in it. */
  private async holdSnapshot(db: DbState): Promise<Snapshot> {
    const client = await connect(this.cfg.source, db.name, "pg-migrate snapshot holder");
    this.hold(db, client);
    // The holder sits idle in its transaction for as long as the database's slices run.
    await client.query("SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0");
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    // txid_current_snapshot(): pg_current_snapshot() arrived in 13, and 12 is a supported source.
    const { rows } = await client.query<{ id: string; snap: string; num: number }>(
      `SELECT pg_export_snapshot() AS id, current_setting('server_version_num')::int AS num,
              txid_current_snapshot()::text AS snap`,
    );
    const { id: snapshot, snap: txids, num } = rows[0]!;
    return { snapshot, txids, num, tables: await this.tables(client) };
  }

  /**
   * --follow: the holder is the replication connection that made the database's logical slot, and the snapshot the
   * slot's; it runs nothing else, so the tables are read by a second session that imports the snapshot.
   */
  private async holdSlot(db: DbState): Promise<Snapshot> {
    const index = this.state.record.databases.indexOf(db);
    db.follow ??= followNames(this.state.runId, index);
    db.follow.subscribed = false;
    await this.state.save(); // recorded before it is made: a crash in between leaves nothing unnamed
    const held = await holdSlot(this.cfg.source, db.name, db.follow, this.cfg.replicaIdentityFull);
    this.hold(db, held.client);
    db.follow.startLsn = held.lsn;
    const reader = await connect(this.cfg.source, db.name, "pg-migrate snapshot reader");
    try {
      await reader.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      await reader.query(`SET TRANSACTION SNAPSHOT ${literal(held.snapshot)}`);
      const { rows } = await reader.query<{ snap: string; num: number }>(
        "SELECT current_setting('server_version_num')::int AS num, txid_current_snapshot()::text AS snap",
      );
      const tables = await this.tables(reader);
      await reader.query("COMMIT");
      return { snapshot: held.snapshot, txids: rows[0]!.snap, num: rows[0]!.num, tables };
    } finally {
      await reader.end().catch(() => undefined);
    }
  }

  /**
   * The earlier plan again, when its finished slices may stay: the schema was restored, the source's transaction
   * snapshot is the same as the earlier one's, and every table of the plan is still there. undefined: start over.
   */
  private keepable(previous: StreamState, txids: string, tables: StreamTable[]): PlannedSlice[] | undefined {
    if (!previous.schemaDone || previous.txids !== txids) return undefined;
    const byName = new Map(tables.map((t) => [JSON.stringify([t.schema, t.name]), t]));
    const plan: PlannedSlice[] = [];
    for (const s of previous.slices) {
      const found = s.tables.map((t) => byName.get(JSON.stringify([t.schema, t.name])));
      if (found.some((t) => t === undefined)) return undefined;
      plan.push({ id: s.id, tables: found as StreamTable[], ...(s.part ? { part: s.part } : {}), bytes: s.bytes });
    }
    return plan;
  }

  private async tables(client: pg.Client): Promise<StreamTable[]> {
    const sameMajor = parseInt(this.state.record.source.version, 10) === parseInt(this.state.record.target.version, 10);
    const { rows } = await client.query<{
      schema: string;
      name: string;
      heap: string;
      toast: string;
      pages: string;
      columns: string[];
      hashColumns: string[];
      binary: boolean;
    }>(STREAM_TABLES_SQL);
    return rows.map((r) => ({
      schema: r.schema,
      name: r.name,
      columns: r.columns,
      hashColumns: r.hashColumns,
      // Binary COPY across majors is not promised to read back alike: text there, binary within one major.
      binary: r.binary && sameMajor,
      heapBytes: Number(r.heap),
      toastBytes: Number(r.toast),
      pages: Number(r.pages),
    }));
  }

  /** The schema job is done: the slices go, -j of them at a time. */
  async schemaDone(db: DbState): Promise<void> {
    db.stream!.copyStartedAt = new Date().toISOString();
    db.stream!.schemaDone = true;
    this.out.line(
      `schema ${JSON.stringify(db.name)} done: ${plural(db.stream!.slices.length, "slice")} of ${plural(db.stream!.streamed.length, "table")} to stream`,
    );
    await this.next(db);
  }

  /** Publishes planned slices while fewer than -j run; after the last one, the post job. */
  private async next(db: DbState): Promise<void> {
    const stream = db.stream;
    if (!stream || this.stopped || db.phase !== "copying") return;
    const slices = stream.slices;
    let running = slices.filter((s) => s.phase === "running").length;
    for (const s of slices) {
      if (running >= this.cfg.jobs) break;
      if (s.phase !== "planned") continue;
      running++;
      await this.publishSlice(db, s, 0);
    }
    if (slices.every((s) => s.phase === "done")) {
      const started = stream.copyStartedAt ? Date.parse(stream.copyStartedAt) : Date.now();
      db.timings.copy = Date.now() - started;
      const rows = slices.reduce((n, s) => n + (s.counts ?? []).reduce((m, c) => m + c.copied, 0), 0);
      const by = [...new Set(slices.map((s) => s.worker).filter(Boolean))];
      this.out.line(
        `copy ${JSON.stringify(db.name)} done in ${seconds(db.timings.copy)}: ${plural(slices.length, "slice")}, ${plural(rows, "row")}, ${bytes(slices.reduce((n, s) => n + s.bytes, 0))} by ${by.join(", ")}`,
      );
      db.rows = rows;
      db.tables = stream.streamed.length;
      await this.host.publish(db, "post", false);
    }
  }

  private async publishSlice(db: DbState, slice: SliceState, attemptsBefore: number): Promise<void> {
    const planned = this.plans.get(db.key)?.get(slice.id);
    if (!planned) return this.host.fail(db, `slice ${slice.id} has no plan in this session`);
    const jobId = `slice-${nanoid(12)}`;
    const job = BUILD.slice(db, {
      cfg: this.cfg,
      key: this.key,
      runId: this.state.runId,
      jobId,
      attemptsBefore,
      recreate: false,
      slice: planned,
    });
    slice.jobId = jobId;
    slice.jobSeq = undefined;
    slice.phase = "running";
    slice.attempts = attemptsBefore;
    await this.state.save();
    const ack = await retry(
      () => this.js.publish(subjects.job("slice", this.state.runId, jobId), encode(job), { msgID: jobId }),
      { forMs: 120_000, pauseMs: (n) => Math.min(5000, 250 * n), stop: () => this.stopped },
    );
    slice.jobSeq = ack.seq;
  }

  /** An event of one of the run's slice jobs. */
  async onSliceEvent(e: JobEvent, replayed: boolean): Promise<void> {
    const db = this.state.db(e.db.key);
    const slice = db?.stream?.slices.find((s) => s.jobId === e.jobId);
    if (!db || !slice || slice.phase !== "running" || db.phase !== "copying") return; // stale
    const what = `slice ${slice.id} of ${JSON.stringify(db.name)} (${describe(slice)})`;
    switch (e.status) {
      case "claimed":
        slice.attempts = Math.max(slice.attempts, e.attempt);
        slice.worker = e.worker;
        this.log.info({ db: db.name, slice: slice.id, worker: e.worker, attempt: e.attempt }, `${what} claimed`);
        return;
      case "progress":
        if (e.progress) {
          this.running.set(e.jobId, e.progress.bytes);
          this.showProgress(db);
        }
        return;
      case "released":
        // A job of an earlier session handed back (or replayed) before this session took its snapshot: the new
        // snapshot plans the slice again, or keeps it.
        if (this.stopped || !this.plans.has(db.key)) return;
        this.running.delete(e.jobId);
        this.out.line(
          `${what}: ${e.worker} handed it back; offered again at once (attempt ${e.attempt} was not used up)`,
        );
        await this.publishSlice(db, slice, e.attempt - 1);
        return;
      case "failed": {
        const error = e.error!;
        if (!error.final) {
          this.out.warn(`${what} failed on attempt ${e.attempt} of ${e.maxAttempts}, will retry: ${error.message}`);
          return;
        }
        slice.phase = "failed";
        this.running.delete(e.jobId);
        if (error.stderrTail) db.stderrTail = error.stderrTail;
        await this.host.fail(db, `${what} failed after ${plural(e.attempt, "attempt")}: ${error.message}`);
        return;
      }
      case "done": {
        const r = e.result;
        if (r?.kind !== "slice") return;
        this.running.delete(e.jobId);
        slice.phase = "done";
        slice.ms = e.durationMs;
        slice.worker = e.worker;
        slice.counts = r.tables;
        if (r.alreadyCommitted) slice.alreadyCommitted = true;
        db.timings.slice = e.durationMs;
        const differ = r.tables.find((t) => t.sent !== t.copied);
        if (differ) {
          await this.host.fail(
            db,
            `${what}: the source sent ${differ.sent} rows of ${differ.schema}.${differ.name} but the target took ${differ.copied}`,
          );
          return;
        }
        if (!replayed) this.showProgress(db);
        void this.state.save().catch(() => undefined);
        await this.next(db);
        return;
      }
    }
  }

  /** Rows are not known until a slice ends; bytes are: done slices' planned size plus what the running ones sent. */
  private showProgress(db: DbState): void {
    const stream = db.stream!;
    let sent = 0;
    for (const s of stream.slices) {
      if (s.phase === "done") sent += s.bytes;
      else if (s.phase === "running" && s.jobId) sent += this.running.get(s.jobId) ?? 0;
    }
    const total = stream.slices.reduce((n, s) => n + s.bytes, 0);
    this.out.progress(db.name, "copy", sent, total || null);
    db.progress = {
      kind: "slice",
      jobId: db.key,
      bytes: sent,
      totalBytes: total || null,
      startedAt: stream.copyStartedAt ?? new Date().toISOString(),
      at: new Date().toISOString(),
    };
  }

  /** A database's only slice, for its "whole" job (undefined: it has no table to stream). */
  onlySlice(db: DbState): PlannedSlice | undefined {
    const plan = this.plans.get(db.key);
    return plan && plan.size === 1 ? [...plan.values()][0] : undefined;
  }

  /** A database's "whole" job is done: its one slice's counts recorded, its holder ended. */
  async wholeDone(db: DbState, counts: NonNullable<SliceState["counts"]>, worker: string, ms: number): Promise<void> {
    const slice = db.stream?.slices[0];
    if (slice) {
      slice.phase = "done";
      slice.counts = counts;
      slice.worker = worker;
      slice.ms = ms;
      slice.attempts = Math.max(1, slice.attempts);
    }
    db.rows = counts.reduce((n, c) => n + c.copied, 0);
    db.tables = db.stream?.streamed.length ?? 0;
    await this.end(db);
  }

  /** The slice whose job has this JOBS stream sequence (a max-deliveries advisory names only that). */
  sliceBySeq(seq: number): { db: DbState; slice: SliceState } | undefined {
    for (const db of this.state.record.databases) {
      const slice = db.stream?.slices.find((s) => s.phase === "running" && s.jobSeq === seq);
      if (slice) return { db, slice };
    }
    return undefined;
  }

  /** The holder ended early: every job of the database is withdrawn and it starts over with a new snapshot. */
  private async startOver(db: DbState, because: string): Promise<void> {
    const stream = db.stream;
    if (!stream || this.stopped || (db.phase !== "copying" && db.phase !== "restoring")) return;
    await this.end(db);
    const losses = (this.losses.get(db.key) ?? 0) + 1;
    this.losses.set(db.key, losses);
    if (losses >= this.cfg.maxDeliver) {
      await this.host.fail(db, `${because}, ${plural(losses, "time")}: given up`);
      return;
    }
    this.out.warn(`${JSON.stringify(db.name)}: ${because}; taking a new snapshot`);
    db.jobId = undefined;
    await this.start(db, true, because);
  }

  /**
   * The database's snapshot taken and its first job published (begin), a source that went away (a restart, a
   * failover) waited for up to SOURCE_WAIT_MS as workers wait for their servers — whether the database is admitted
   * or takes a new snapshot after its holder ended. Never throws: a database whose snapshot cannot be had fails.
   */
  async start(db: DbState, resumed: boolean, because?: string): Promise<void> {
    const deadline = Date.now() + SOURCE_WAIT_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.begin(db, resumed, because);
        return;
      } catch (err) {
        await this.endHolder(db);
        if (this.stopped) return;
        if (!serverUnavailable(err) || Date.now() > deadline) {
          await this.host.fail(
            db,
            because
              ? `${because}, and a new snapshot could not be taken: ${errorMessage(err)}`
              : `its snapshot could not be taken on the source: ${errorMessage(err)}`,
          );
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(5_000, 250 * 2 ** Math.min(attempt, 5))));
      }
    }
  }

  /** Ends the database's holder on purpose (its end is then no loss). */
  private async endHolder(db: DbState): Promise<void> {
    const holder = this.holders.get(db.key);
    this.holders.delete(db.key);
    if (!holder) return;
    holder.closing = true;
    await holder.client.end().catch(() => undefined);
  }

  /** Ends the database's holder and withdraws its queued slice jobs (its end, failed or done; or a new snapshot). */
  async end(db: DbState): Promise<void> {
    await this.endHolder(db);
    const jsm = await jetstreamManager(this.nc).catch(() => undefined);
    for (const s of db.stream?.slices ?? []) {
      if (s.jobId) this.running.delete(s.jobId);
      if (s.phase !== "running" || !s.jobId) continue;
      await jsm?.streams
        .purge(JOBS_STREAM, { filter: subjects.job("slice", this.state.runId, s.jobId) })
        .catch(() => undefined);
      s.phase = "planned";
      s.jobId = undefined;
    }
  }

  /** The coordinator stops: every holder ends (a resumed run starts its streamed databases over). */
  async close(): Promise<void> {
    this.stopped = true;
    await Promise.all(
      this.state.record.databases.filter((db) => this.holders.has(db.key)).map((db) => this.endHolder(db)),
    );
  }
}

/** A slice in words: its part of a table, or its tables. */
export function describe(s: Pick<SliceState, "tables" | "part">): string {
  const first = s.tables[0]!;
  const name = `${first.schema}.${first.name}`;
  if (s.part) return `${name} part ${s.part.n} of ${s.part.of}`;
  return s.tables.length === 1 ? name : `${name} and ${plural(s.tables.length - 1, "other table")}`;
}
