// The scheduler admits databases (largest first, at most --max-parallel in flight), publishes each one's next
// job, and advances it on the results the workers publish. Results are matched by job id, so a stale result
// from a job an earlier coordinator published is ignored.
import { posix } from "node:path";
import { DeliverPolicy, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { nanoid } from "nanoid";
import { EVENTS_STREAM, JOBS_STREAM, subjects } from "../shared/contracts/jetstream.js";
import { CONTRACT_VERSION, decodeEvent, encode, type ConnSpec, type Job, type JobEvent } from "../shared/contracts/messages.js";
import { JOB_PHASES, nextJobFor, type DbPhase, type JobKind } from "../shared/contracts/phases.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { seal, type SharedKey } from "../shared/secrets.js";
import type { MigrateConfig } from "./config.js";
import { bytes, seconds, type Output } from "./output.js";
import type { DbState, RunState } from "./state.js";

export class Scheduler {
  private readonly inFlight = new Set<string>();
  private queue: DbState[] = [];
  private stopped = false;
  private settle: (() => void) | undefined;
  private jsm: JetStreamManager | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly state: RunState,
    private readonly cfg: MigrateConfig,
    private readonly key: SharedKey | undefined,
    private readonly log: Logger,
    private readonly out: Output,
  ) {}

  async run(signal: AbortSignal): Promise<void> {
    const runId = this.state.runId;
    this.jsm = await jetstreamManager(this.nc);
    // Jobs an earlier coordinator of this run left unclaimed are replaced by fresh ones below.
    await this.jsm.streams.purge(JOBS_STREAM, { filter: subjects.jobsOfRun(runId) });

    const consumer = await this.js.consumers.get(EVENTS_STREAM, {
      filter_subjects: subjects.eventsOfRun(runId),
      deliver_policy: DeliverPolicy.New,
    });
    const events = await consumer.consume();
    const advisories = this.nc.subscribe(subjects.maxDeliveriesAdvisory);
    const done = new Promise<void>((resolve) => (this.settle = resolve));
    const onAbort = () => {
      this.stopped = true;
      this.settle?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });

    void (async () => {
      for await (const m of events) {
        try {
          const e = decodeEvent(m.data, m.subject);
          if (e.type === "job") await this.onJobEvent(e);
        } catch (err) {
          this.log.warn({ subject: m.subject, err: errorMessage(err) }, "event ignored");
        }
      }
    })();
    void (async () => {
      for await (const m of advisories) {
        try {
          await this.onMaxDeliveries(m.json<{ stream: string; stream_seq: number; deliveries: number }>());
        } catch (err) {
          this.log.warn({ err: errorMessage(err) }, "advisory ignored");
        }
      }
    })();

    try {
      for (const db of this.state.record.databases) {
        if (db.phase === "done" || db.phase === "failed") continue;
        if (db.phase === "planned") this.queue.push(db);
        else {
          // Interrupted mid-way by an earlier coordinator: redo its current step cleanly.
          this.inFlight.add(db.key);
          const kind = nextJobFor(db.phase)!;
          await this.publish(db, kind, true);
        }
      }
      this.queue.sort((a, b) => b.sizeBytes - a.sizeBytes);
      await this.admit();
      this.checkFinished();
      await done;
    } finally {
      signal.removeEventListener("abort", onAbort);
      await events.close().catch(() => undefined);
      advisories.unsubscribe();
    }
  }

  private async admit(): Promise<void> {
    while (!this.stopped && this.inFlight.size < this.cfg.maxParallel && this.queue.length) {
      const db = this.queue.shift()!;
      this.inFlight.add(db.key);
      await this.publish(db, "dump", false);
    }
  }

  private checkFinished(): void {
    if (this.inFlight.size === 0 && this.queue.length === 0) this.settle?.();
  }

  private conn(s: ServerSpec): ConnSpec {
    return {
      host: s.host,
      port: s.port,
      user: s.user,
      ...(s.sslmode ? { sslmode: s.sslmode } : {}),
      ...(this.key && s.password !== undefined ? { password: seal(this.key, s.password) } : {}),
    };
  }

  private async publish(db: DbState, kind: JobKind, resumed: boolean): Promise<void> {
    const runId = this.state.runId;
    const jobId = `${kind}-${nanoid(12)}`;
    const ref = { name: db.name, key: db.key };
    let job: Job;
    if (kind === "dump") {
      job = {
        v: CONTRACT_VERSION, kind, runId, jobId, db: ref,
        dumpPath: posix.join(runId, db.key, jobId),
        source: this.conn(this.cfg.source), jobs: this.cfg.jobs, compress: this.cfg.compress,
      };
    } else if (kind === "restore") {
      job = {
        v: CONTRACT_VERSION, kind, runId, jobId, db: ref, dumpPath: db.dumpPath!,
        target: this.conn(this.cfg.target), jobs: this.cfg.jobs, create: db.create,
        maintenanceDb: this.cfg.targetDb,
        // A database from an earlier session of this run may hold a partial restore.
        recreate: resumed || this.state.record.resumedAt.length > 0,
      };
    } else {
      job = { v: CONTRACT_VERSION, kind, runId, jobId, db: ref, dumpPath: db.dumpPath!, target: this.conn(this.cfg.target) };
    }
    db.jobId = jobId;
    const ack = await this.withRetry(`publish ${kind} job`, () => this.js.publish(subjects.job(kind, runId), encode(job), { msgID: jobId }));
    db.jobSeq = ack.seq;
    db.attempts[kind] = 0;
    await this.setPhase(db, JOB_PHASES[kind].running);
  }

  private async setPhase(db: DbState, phase: DbPhase, error?: string): Promise<void> {
    db.phase = phase;
    if (error !== undefined) db.error = error;
    await this.state.save();
    await this.js
      .publish(
        subjects.event(this.state.runId, "db", phase),
        encode({ v: CONTRACT_VERSION, type: "db", runId: this.state.runId, db: { name: db.name, key: db.key }, phase, at: new Date().toISOString(), ...(error ? { error } : {}) }),
      )
      .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "phase event not published"));
  }

  private async onJobEvent(e: JobEvent): Promise<void> {
    const db = this.state.db(e.db.key);
    if (!db || db.jobId !== e.jobId) return; // stale: from a job this coordinator no longer waits for
    const name = JSON.stringify(db.name);
    const log = this.log.child({ db: db.name, job: e.jobId, worker: e.worker });
    switch (e.status) {
      case "claimed":
        db.attempts[e.kind] = e.attempt;
        db.workers[e.kind] = e.worker;
        this.out.line(`${e.kind} ${name} started on ${e.worker} (attempt ${e.attempt} of ${e.maxAttempts})`);
        return;
      case "progress":
        return;
      case "failed": {
        const error = e.error!;
        log.warn({ attempt: e.attempt, final: error.final, stderrTail: error.stderrTail }, `${e.kind} ${name} failed: ${error.message}`);
        if (!error.final) {
          this.out.warn(`${e.kind} ${name} failed on attempt ${e.attempt} of ${e.maxAttempts}, will retry: ${error.message}`);
          return;
        }
        await this.fail(db, `${e.kind} failed after ${e.attempt} attempt(s): ${error.message}`);
        return;
      }
      case "done":
        break;
    }
    const r = e.result!;
    db.timings[e.kind] = e.durationMs;
    if (r.kind === "dump") {
      db.dumpPath = r.attemptPath;
      db.dumpBytes = r.bytes;
      db.tables = r.tables;
      db.rows = r.rows;
      this.out.line(`dump ${name} done in ${seconds(e.durationMs)}: ${r.tables} tables, ${r.rows} rows, ${bytes(r.bytes)}`);
      await this.setPhase(db, "dumped");
      await this.publish(db, "restore", false);
    } else if (r.kind === "restore") {
      db.timings.analyze = r.analyzeMs;
      this.out.line(`restore ${name} done in ${seconds(e.durationMs)} (ANALYZE ${seconds(r.analyzeMs)})`);
      await this.setPhase(db, "restored");
      await this.publish(db, "verify", false);
    } else {
      db.verifiedRows = r.rows;
      db.sequences = r.sequences;
      db.mismatches = r.mismatches;
      db.detailPath = r.detailPath;
      if (r.ok) {
        this.out.line(`verify ${name} done: ${r.tables} tables and ${r.rows} rows match`);
        db.jobId = undefined;
        await this.setPhase(db, "done");
        await this.release(db);
      } else {
        const first = r.mismatches.slice(0, 3).map((m) => `${m.what} ${m.object} (source ${m.source ?? "none"}, target ${m.target ?? "none"})`);
        await this.fail(db, `verification found ${r.mismatches.length} difference(s): ${first.join("; ")}`);
      }
    }
  }

  private async onMaxDeliveries(a: { stream: string; stream_seq: number; deliveries: number }): Promise<void> {
    if (a.stream !== JOBS_STREAM) return;
    const db = this.state.record.databases.find((d) => d.jobSeq === a.stream_seq && d.jobId);
    if (!db) return;
    await this.jsm?.streams.deleteMessage(JOBS_STREAM, a.stream_seq).catch(() => undefined);
    await this.fail(db, `its job was delivered ${a.deliveries} times without finishing (workers died or stopped heartbeating)`);
  }

  private async fail(db: DbState, reason: string): Promise<void> {
    this.out.warn(`${JSON.stringify(db.name)} failed: ${reason}`);
    db.jobId = undefined;
    await this.setPhase(db, "failed", reason);
    await this.release(db);
  }

  private async release(db: DbState): Promise<void> {
    this.inFlight.delete(db.key);
    await this.admit();
    this.checkFinished();
  }

  private async withRetry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (this.stopped || attempt >= 30) throw err;
        this.log.warn({ attempt, err: errorMessage(err) }, `${what} failed; retrying`);
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * attempt)));
      }
    }
  }
}
