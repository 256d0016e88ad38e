// The scheduler admits databases (largest first), publishes each one's next job, and advances it on the results
// the workers publish. Dumps and restores are pipelined: at most --max-parallel restores run at once, and dumps
// run ahead of them by up to --max-parallel databases (dumping, or dumped and waiting for a restore slot), so the
// dump of the next database overlaps the restore of the last one instead of waiting for it to be verified.
// Results are matched by job id, so a stale result from a job an earlier coordinator published is ignored.
// The events are read by events-reader.ts and silent jobs judged by watchdog.ts; what becomes of a database is
// decided here.
//
// Resuming: the events of the run are read again from the last one the run record had processed, so a result
// published while no coordinator was alive is not lost; in distributed mode a job still in the JOBS stream is
// adopted (a worker has it or will get it); a job that is gone without a result is published again with a fresh id,
// as the same attempt. In embedded mode every worker of the earlier session died with it, so a job it left in the
// stream would only come back after the ack wait, as another attempt: it is published again at once instead.
import { jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { nanoid } from "nanoid";
import { JOBS_STREAM, subjects } from "../shared/contracts/jetstream.js";
import {
  CONTRACT_VERSION,
  encode,
  type JobEvent,
  type JobResult,
  type VerifyTable,
} from "../shared/contracts/messages.js";
import type { MaxDeliveries } from "../shared/contracts/record.js";
import {
  isStreamKind,
  isTerminal,
  JOB_PHASES,
  nextJobFor,
  type DbPhase,
  type JobKind,
} from "../shared/contracts/phases.js";
import { errorMessage } from "../shared/errors.js";
import { retry } from "../shared/retry.js";
import type { Logger } from "../shared/log.js";
import type { SharedKey } from "../shared/secrets.js";
import type { MigrateConfig } from "./config.js";
import { EventsReader } from "./events-reader.js";
import { BUILD, sliceSums } from "./jobs.js";
import { bytes, plural, seconds, type Output } from "./output.js";
import type { DbState, RunState } from "./state.js";
import { Watchdog } from "./watchdog.js";
import { describe, StreamDatabases } from "./stream.js";

/** What the scheduler asks of the target's databases: each resolves to why it failed, or says what it did. */
export interface TargetDatabases {
  /** Creates a database on the target (nothing when this run created it already); resolves to why it failed. */
  create(db: DbState): Promise<string | undefined>;
  /** Drops a database this run created and restored nothing into; resolves to whether there was one to drop. */
  dropUnrestored(db: DbState): Promise<boolean>;
}

/** How long the replay of earlier events may take before undecided jobs are published again anyway. */
const REPLAY_LIMIT_MS = 15_000;

export class Scheduler {
  /** Every database between its first job and its end: dumping, waiting for a restore slot, restoring, verifying. */
  private readonly inFlight = new Set<string>();
  /** Not dumped yet, largest first. */
  private queue: DbState[] = [];
  /** Dumped and waiting for a restore slot, largest first. */
  private restoreQueue: DbState[] = [];
  /** Each database's CREATE DATABASE, started with its dump and awaited before its restore. */
  private readonly creating = new Map<string, Promise<string | undefined>>();
  /** Databases being failed: fail() runs once for each, whoever else saw its job end. */
  private readonly failing = new Set<string>();
  /** Streamed databases admitted whose first job (schema or whole) is not published yet: nothing restored in them. */
  private readonly planning = new Set<string>();
  private stopped = false;
  private settle: (() => void) | undefined;
  private jsm: JetStreamManager | undefined;
  private readonly watchdog: Watchdog;
  /** The streamed databases' holders, slices and their events (--via stream). */
  private readonly streams: StreamDatabases;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly state: RunState,
    private readonly cfg: MigrateConfig,
    private readonly key: SharedKey | undefined,
    private readonly log: Logger,
    private readonly out: Output,
    /** Creates and drops the run's databases on the target. */
    private readonly targetDatabases: TargetDatabases,
  ) {
    this.watchdog = new Watchdog(cfg, state.runId, {
      inFlight: () => this.inFlightDatabases(),
      lastDeliveryLost: (db, kind) =>
        this.fail(
          db,
          `its ${kind} job went silent on its last delivery (${db.attempts[kind]} of ${this.cfg.maxDeliver}): the worker died or lost its connection`,
        ),
      lost: async (db, kind) => {
        if (this.stopped) return;
        this.out.warn(
          `${kind} ${JSON.stringify(db.name)}: its job ended without a result reaching the coordinator; doing it again`,
        );
        await this.publish(db, kind, true, unfinishedAttempts(db, kind));
      },
    });
    this.streams = new StreamDatabases(nc, js, state, cfg, key, log, out, {
      publish: (db, kind, resumed) => this.publish(db, kind, resumed),
      fail: (db, reason) => this.fail(db, reason),
      copying: (db) => (db.phase === "copying" ? Promise.resolve() : this.setPhase(db, "copying")),
    });
  }

  async run(signal: AbortSignal): Promise<void> {
    const runId = this.state.runId;
    const record = this.state.record;
    this.jsm = await jetstreamManager(this.nc);
    const reader = new EventsReader(this.nc, this.js, runId, record, this.log, {
      onJobEvent: (e, replayed) => this.onJobEvent(e, replayed),
      onMaxDeliveries: (a) => this.onMaxDeliveries(a),
    });
    await reader.markReplayEnd(this.jsm);

    // Every unfinished database: queue it, adopt its live job, or publish its next step.
    const adopted = new Set<string>();
    const undecided: { db: DbState; kind: JobKind; jobId: string }[] = [];
    const next: { db: DbState; kind: JobKind }[] = [];
    for (const db of record.databases) {
      if (isTerminal(db.phase)) continue;
      if (db.via === "stream" && db.phase !== "planned") {
        // Its snapshot ended with the earlier session's holder: it takes a new one when admitted, and keeps its
        // finished slices only if the source did not change meanwhile (stream.ts). A post job that had begun may
        // have restored part of the post-data: that database starts over.
        if (db.phase === "restoring" && db.stream) db.stream.schemaDone = false;
        db.phase = "planned";
        db.jobId = undefined;
      }
      if (db.phase === "planned") {
        this.queue.push(db);
        continue;
      }
      this.inFlight.add(db.key);
      if (db.phase === "dumped") {
        this.restoreQueue.push(db); // waits for a restore slot like any other dumped database
        continue;
      }
      const kind = nextJobFor(db.phase)!;
      if (db.phase !== JOB_PHASES[kind].running || !db.jobId) {
        next.push({ db, kind });
        continue;
      }
      const subject = subjects.job(kind, runId, db.jobId);
      const live = this.cfg.natsUrl
        ? await this.jsm.streams.getMessage(JOBS_STREAM, { last_by_subj: subject }).catch(() => null)
        : null;
      if (live) {
        adopted.add(subject);
        db.jobSeq = live.seq;
        this.watchdog.heard(db.key);
        this.out.line(`${kind} ${JSON.stringify(db.name)}: adopting its job from the earlier session (${db.jobId})`);
      } else undecided.push({ db, kind, jobId: db.jobId });
    }
    // Whatever else of this run is still queued belongs to nobody now.
    const info = await this.jsm.streams.info(JOBS_STREAM, { subjects_filter: subjects.jobsOfRun(runId) });
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      if (!adopted.has(subject)) await this.jsm.streams.purge(JOBS_STREAM, { filter: subject });
    }
    // Steps whose previous job finished and was recorded: published before the events are read again, so that
    // the fresh job id makes the replayed result of the previous job stale.
    for (const { db, kind } of next) await this.publish(db, kind, true);

    const done = new Promise<void>((resolve) => (this.settle = resolve));
    const onAbort = () => {
      this.stopped = true;
      reader.stop();
      this.settle?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    reader.start();

    try {
      let limit: NodeJS.Timeout | undefined;
      await Promise.race([reader.caughtUp, new Promise((r) => (limit = setTimeout(r, REPLAY_LIMIT_MS)))]);
      clearTimeout(limit);
      // Only now: silence is judged on events as they arrive, not on old ones read again.
      this.watchdog.start(this.jsm, this.inFlight);

      for (const { db, kind, jobId } of undecided) {
        // Settled by the replayed events: a new job, or the step done. A dump found done keeps its job id while it
        // waits in the restore queue, so the phase is what tells: republishing then would restore it twice.
        if (this.stopped || db.jobId !== jobId || db.phase !== JOB_PHASES[kind].running) continue;
        const attempt = unfinishedAttempts(db, kind) + 1;
        this.out.line(
          this.cfg.natsUrl
            ? `${kind} ${JSON.stringify(db.name)}: its job from the earlier session is gone without a result; doing it again (attempt ${attempt})`
            : `${kind} ${JSON.stringify(db.name)}: its job ended unfinished with the earlier session's workers; offered again at once (attempt ${attempt})`,
        );
        await this.publish(db, kind, true, attempt - 1);
      }
      this.queue.sort(largestFirst);
      this.restoreQueue.sort(largestFirst);
      this.out.startRun(record.databases.length, record.databases.filter((d) => isTerminal(d.phase)).length);
      await this.admit();
      this.checkFinished();
      await done;
    } finally {
      this.stopped = true;
      this.watchdog.stop();
      await this.streams.close();
      signal.removeEventListener("abort", onAbort);
      await reader.close();
    }
  }

  /**
   * Restores first (the target is the scarce side), then new databases, largest first. Through the volume a
   * database dumps while fewer than --max-parallel are dumping or dumped and waiting: the dump volume never holds
   * more than that many dumps nobody is restoring yet. A streamed one holds a snapshot and -j slices from its first
   * job to its last, so it takes a restore slot and a dump slot for all that time.
   */
  private async admit(): Promise<void> {
    const m = this.cfg.maxParallel;
    while (!this.stopped && this.restoreQueue.length && this.running("restoring") + this.streaming() < m) {
      const db = this.restoreQueue.shift()!;
      const failed = await this.created(db);
      if (failed) await this.fail(db, failed);
      else await this.publish(db, "restore", false);
    }
    while (!this.stopped && this.queue.length) {
      const db = this.queue[0]!;
      if (db.via === "stream") {
        if (this.streaming() + this.running("restoring") >= m) break;
        this.queue.shift();
        this.inFlight.add(db.key);
        const failed = await this.created(db);
        if (failed) {
          await this.fail(db, failed);
          continue;
        }
        // Copying from now on, as status shows it: its snapshot's planning may wait (on a lock, on a source away).
        // Until its first job is published nothing was restored into it (fail() drops the empty database).
        this.planning.add(db.key);
        await this.setPhase(db, "copying");
        // Not awaited: a source that is away is waited for there, and the events of the others go on meanwhile.
        void this.streams.start(db, db.created && this.state.record.resumedAt.length > 0);
      } else {
        if (this.running("dumping") + this.restoreQueue.length + this.streaming() >= m) break;
        this.queue.shift();
        this.inFlight.add(db.key);
        void this.created(db); // created on the target while its dump runs
        await this.publish(db, "dump", false);
      }
    }
  }

  /** The database's creation on the target, started once; resolves to why it failed, or undefined. */
  private created(db: DbState): Promise<string | undefined> {
    let p = this.creating.get(db.key);
    if (!p) {
      p = this.targetDatabases.create(db).catch((err: unknown) => `CREATE DATABASE failed: ${errorMessage(err)}`);
      this.creating.set(db.key, p);
    }
    return p;
  }

  private *inFlightDatabases(): Iterable<DbState> {
    for (const db of this.state.record.databases) if (this.inFlight.has(db.key)) yield db;
  }

  /** Databases in flight through the volume at this phase. */
  private running(phase: DbPhase): number {
    let n = 0;
    for (const db of this.inFlightDatabases()) if (db.via !== "stream" && db.phase === phase) n++;
    return n;
  }

  /** Streamed databases in flight, whatever their phase. */
  private streaming(): number {
    let n = 0;
    for (const db of this.inFlightDatabases()) if (db.via === "stream") n++;
    return n;
  }

  private checkFinished(): void {
    if (this.inFlight.size === 0 && this.queue.length === 0) this.settle?.();
  }

  /**
   * Publishes the database's next job. attemptsBefore: attempts of this step that earlier jobs used up (0 for a new
   * step; a job handed back unfinished is published again with the count it had, so it is not an attempt lost).
   */
  private async publish(db: DbState, kind: JobKind, resumed: boolean, attemptsBefore = 0): Promise<void> {
    const runId = this.state.runId;
    const jobId = `${kind}-${nanoid(12)}`;
    const slice = kind === "whole" ? this.streams.onlySlice(db) : undefined;
    const job = BUILD[kind](db, {
      cfg: this.cfg,
      key: this.key,
      runId,
      jobId,
      attemptsBefore,
      // A database from an earlier session of this run may hold a partial restore.
      recreate: resumed || this.state.record.resumedAt.length > 0,
      ...(slice ? { slice } : {}),
    });
    // The intent is saved first: a coordinator that dies right after publishing finds the job by its id.
    db.jobId = jobId;
    db.jobKind = kind;
    db.jobSeq = undefined;
    db.attempts[kind] = attemptsBefore;
    const was = db.phase;
    db.phase = JOB_PHASES[kind].running;
    this.watchdog.forget(db.key);
    await this.state.save();
    const ack = await this.withRetry(`publish ${kind} job`, () =>
      this.js.publish(subjects.job(kind, runId, jobId), encode(job), { msgID: jobId }),
    );
    db.jobSeq = ack.seq;
    if (isStreamKind(kind)) this.planning.delete(db.key);
    // A phase event says the phase changed: not again for a job published anew in the same phase (a retry, a
    // streamed database's schema job after its admission) — but again on resume, in case the earlier session died
    // between saving the phase and publishing its event.
    if (was !== db.phase || resumed) await this.setPhase(db, db.phase);
    else this.saveSoon();
  }

  /** Saves the run record without waiting for the write (a failed write is logged; the next save carries it). */
  private saveSoon(): void {
    void this.state.save().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, "run record not saved"));
  }

  /**
   * A phase reached is saved without waiting for the write: a resumed run reads the results again from the EVENTS
   * stream, from the last event a saved record had handled, so nothing is lost; what must be on disk before it
   * happens — the intent to publish a job — is saved, and waited for, in publish().
   */
  private async setPhase(db: DbState, phase: DbPhase, error?: string): Promise<void> {
    db.phase = phase;
    if (error !== undefined) db.error = error;
    this.saveSoon();
    await this.js
      .publish(
        subjects.event(this.state.runId, "db", phase),
        encode({
          v: CONTRACT_VERSION,
          type: "db",
          runId: this.state.runId,
          db: { name: db.name, key: db.key },
          phase,
          at: new Date().toISOString(),
          ...(error ? { error } : {}),
        }),
      )
      .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "phase event not published"));
  }

  /** replayed: the event was published before this coordinator started, and is read again. */
  private async onJobEvent(e: JobEvent, replayed: boolean): Promise<void> {
    if (e.kind === "slice") return this.streams.onSliceEvent(e, replayed);
    const db = this.state.db(e.db.key);
    if (!db || db.jobId !== e.jobId) return; // stale: from a job this coordinator no longer waits for
    // Handled already: a resumed run reads again the events after the last one its saved record had handled, and a
    // database found dumped keeps its dump's job id while it waits for a restore slot.
    if (e.status === "done" && db.phase !== JOB_PHASES[e.kind].running) return;
    const name = JSON.stringify(db.name);
    const log = this.log.child({ db: db.name, job: e.jobId, worker: e.worker });
    this.watchdog.heard(db.key);
    switch (e.status) {
      case "claimed":
        db.attempts[e.kind] = Math.max(db.attempts[e.kind] ?? 0, e.attempt);
        db.workers[e.kind] = e.worker;
        if (!replayed)
          this.out.line(`${e.kind} ${name} started on ${e.worker} (attempt ${e.attempt} of ${e.maxAttempts})`);
        log.info({ kind: e.kind, attempt: e.attempt }, `${e.kind} claimed`);
        this.out.progress(db.name, e.kind, 0, null);
        return;
      case "progress":
        if (e.progress) {
          this.out.progress(db.name, e.kind, e.progress.bytes, e.progress.totalBytes);
          db.progress = {
            kind: e.kind,
            bytes: e.progress.bytes,
            totalBytes: e.progress.totalBytes,
            startedAt: db.progress?.kind === e.kind && db.progress.jobId === e.jobId ? db.progress.startedAt : e.at,
            at: e.at,
            jobId: e.jobId,
          };
          void this.state.save().catch(() => undefined);
        }
        return;
      case "released":
        // A stopping worker gave it back unfinished: offered again at once, as the same attempt.
        if (this.stopped || db.phase !== JOB_PHASES[e.kind].running) return;
        const how =
          e.reason === "server-back"
            ? "handed it back once its server, which had gone away, was back"
            : `stopped and handed it back${replayed ? " as the earlier session ended" : ""}`;
        this.out.line(
          `${e.kind} ${name}: ${e.worker} ${how}; offered again at once (attempt ${e.attempt} was not used up)`,
        );
        log.info({ kind: e.kind, attempt: e.attempt }, `${e.kind} released`);
        await this.publish(db, e.kind, true, e.attempt - 1);
        return;
      case "failed": {
        const error = e.error!;
        if (error.stderrTail) db.stderrTail = error.stderrTail;
        log.warn(
          { attempt: e.attempt, final: error.final, stderrTail: error.stderrTail },
          `${e.kind} ${name} failed: ${error.message}`,
        );
        if (!error.final) {
          this.out.warn(
            `${e.kind} ${name} failed on attempt ${e.attempt} of ${e.maxAttempts}, will retry: ${error.message}`,
          );
          return;
        }
        await this.fail(
          db,
          `${e.kind} failed after ${plural(e.attempt, "attempt")}${e.attempt < e.maxAttempts ? ", not retried (no retry can mend it)" : ""}: ${error.message}`,
        );
        return;
      }
      case "done":
        break;
    }
    const r = e.result!;
    db.timings[e.kind] = e.durationMs;
    log.info({ kind: e.kind, attempt: e.attempt, durationMs: e.durationMs, result: r }, `${e.kind} done`);
    if (r.kind === "dump") {
      db.dumpPath = r.attemptPath;
      db.dumpBytes = r.bytes;
      db.tables = r.tables;
      db.rows = r.rows;
      this.out.line(
        `dump ${name} done in ${seconds(e.durationMs)}: ${plural(r.tables, "table")}, ${plural(r.rows, "row")}, ${bytes(r.bytes)}${r.compression === undefined ? "" : r.compression === "0" ? " uncompressed" : ` (--compress ${r.compression})`}`,
      );
      await this.setPhase(db, "dumped");
      if (!this.restoreQueue.includes(db)) this.restoreQueue.push(db);
      this.restoreQueue.sort(largestFirst);
      await this.admit();
    } else if (r.kind === "restore") {
      db.timings.analyze = r.analyzeMs;
      this.out.line(`restore ${name} done in ${seconds(e.durationMs)} (ANALYZE ${seconds(r.analyzeMs)})`);
      await this.setPhase(db, "restored");
      // Verifying does not hold a restore slot: the next restore starts now.
      await this.publish(db, "verify", false);
      await this.admit();
    } else if (r.kind === "schema") {
      db.jobId = undefined; // the database's job is now its slices
      await this.streams.schemaDone(db);
    } else if (r.kind === "post") {
      db.timings.analyze = r.analyzeMs;
      await this.streams.end(db);
      db.tableCounts = tableCounts(db, r);
      this.out.line(
        `post ${JSON.stringify(db.name)} done in ${seconds(e.durationMs)} (post-data ${seconds(r.restoreMs)}, ANALYZE ${seconds(r.analyzeMs)})`,
      );
      await this.verified(db, r);
    } else if (r.kind === "whole") {
      db.timings.analyze = r.analyzeMs;
      await this.streams.wholeDone(db, r.copied, e.worker, e.durationMs ?? 0);
      db.tableCounts = tableCounts(db, r);
      this.out.line(
        `copy ${JSON.stringify(db.name)} done in ${seconds(e.durationMs)}: schema, ${plural(db.rows ?? 0, "row")} and post-data in one job on ${e.worker}`,
      );
      await this.verified(db, r);
    } else if (r.kind === "verify") {
      await this.verified(db, r);
    }
  }

  /** A verification's outcome (the verify job's, or a streamed database's post job's): done, or failed and why. */
  private async verified(db: DbState, r: Extract<JobResult, { kind: "verify" | "post" | "whole" }>): Promise<void> {
    const name = JSON.stringify(db.name);
    db.verifiedRows = r.rows;
    db.sequences = r.sequences;
    db.mismatches = r.mismatches;
    db.warnings = r.warnings ?? [];
    if (r.properties) db.properties = r.properties;
    if (r.kind === "verify") db.detailPath = r.detailPath;
    for (const w of db.warnings) {
      this.out.warn(
        `${name}: ${w.what} ${w.object} (source ${w.source ?? "none"}, target ${w.target ?? "none"}): ${w.note}`,
      );
    }
    if (r.properties && !r.properties.applied && r.properties.why)
      this.out.warn(`${name}: its own properties were not applied: ${r.properties.why}`);
    if (r.properties?.skipped?.length) {
      this.out.warn(
        `${name}: left out ${plural(r.properties.skipped.length, "setting")} the target does not know (the rest applied): ${r.properties.skipped.join(" ")}`,
      );
    }
    if (r.ok) {
      const warned = db.warnings.length ? `, ${plural(db.warnings.length, "warning")} (not failures)` : "";
      this.out.line(`verify ${name} done: ${plural(r.tables, "table")} and ${plural(r.rows, "row")} match${warned}`);
      db.jobId = undefined;
      await this.setPhase(db, "done");
      await this.release(db);
    } else {
      const first = r.mismatches
        .slice(0, 3)
        .map((m) => `${m.what} ${m.object} (source ${m.source ?? "none"}, target ${m.target ?? "none"})`);
      await this.fail(db, `verification found ${plural(r.mismatches.length, "difference")}: ${first.join("; ")}`);
    }
  }

  private async onMaxDeliveries(a: MaxDeliveries): Promise<void> {
    if (a.stream !== JOBS_STREAM) return;
    const sliced = this.streams.sliceBySeq(a.stream_seq);
    if (sliced) {
      await this.jsm?.streams.deleteMessage(JOBS_STREAM, a.stream_seq).catch(() => undefined);
      await this.fail(
        sliced.db,
        `slice ${sliced.slice.id} (${describe(sliced.slice)}) was delivered ${a.deliveries} times without finishing (workers died or stopped heartbeating)`,
      );
      return;
    }
    const db = this.state.record.databases.find((d) => d.jobSeq === a.stream_seq && d.jobId);
    if (!db) return;
    const jobId = db.jobId;
    await this.jsm?.streams.deleteMessage(JOBS_STREAM, a.stream_seq).catch(() => undefined);
    if (db.jobId !== jobId) return; // a result arrived meanwhile
    await this.fail(
      db,
      `its job was delivered ${a.deliveries} times without finishing (workers died or stopped heartbeating)`,
    );
  }

  private async fail(db: DbState, reason: string): Promise<void> {
    if (this.failing.has(db.key) || db.phase === "failed") return; // two callers saw the same job end
    this.failing.add(db.key);
    // Before anything else: a late result of the job is stale from here on.
    db.jobId = undefined;
    if (db.via === "stream") await this.streams.end(db);
    // Before any restore was published, the database this run created on the target is empty: it goes again.
    const creating = this.creating.get(db.key);
    const unpublished = this.planning.delete(db.key); // a streamed database admitted, its first job not yet out
    if (
      creating &&
      (unpublished ||
        db.phase === "planned" ||
        db.phase === JOB_PHASES.dump.running ||
        db.phase === JOB_PHASES.dump.finished)
    ) {
      await creating;
      try {
        if (await this.targetDatabases.dropUnrestored(db))
          reason += "; no restore had begun, so the empty database this run created was dropped from the target";
      } catch (err) {
        reason += `; its empty database stays on the target (dropping it failed: ${errorMessage(err)})`;
      }
    }
    this.out.warn(`${JSON.stringify(db.name)} failed: ${reason}`);
    await this.setPhase(db, "failed", reason);
    await this.release(db);
  }

  private async release(db: DbState): Promise<void> {
    this.inFlight.delete(db.key);
    this.restoreQueue = this.restoreQueue.filter((d) => d.key !== db.key);
    const all = this.state.record.databases;
    this.out.finished(db.name, all.filter((d) => isTerminal(d.phase)).length, all.length);
    await this.admit();
    this.checkFinished();
  }

  private withRetry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    return retry(fn, {
      forMs: 120_000,
      pauseMs: (attempt) => Math.min(5000, 250 * attempt),
      stop: () => this.stopped,
      onRetry: (attempt, err) => this.log.warn({ attempt, err: errorMessage(err) }, `${what} failed; retrying`),
    });
  }
}

const largestFirst = (a: DbState, b: DbState) => b.sizeBytes - a.sizeBytes;

/** A job gone without a result: its last claim was interrupted, not failed, so that attempt is offered again. */
const unfinishedAttempts = (db: DbState, kind: JobKind): number => Math.max(0, (db.attempts[kind] ?? 0) - 1);

/**
 * A streamed database's table counts for the report: each streamed table's rows as the source sent them and as the
 * target's COPY took them (summed over its slices), and the other tables as the post job counted them.
 */
function tableCounts(db: DbState, r: Extract<JobResult, { kind: "post" | "whole" }>): VerifyTable[] {
  const targetSums = new Map((r.targetChecksums ?? []).map((t) => [JSON.stringify([t.schema, t.name]), t.checksum]));
  const streamed = sliceSums(db).map((t) => ({
    schema: t.schema,
    name: t.name,
    source: t.sent,
    target: t.copied,
    ...(t.checksum !== undefined ? { sourceChecksum: t.checksum, targetChecksum: targetSums.get(t.key) ?? null } : {}),
  }));
  return [...streamed, ...r.others];
}
