// The worker loop: decode → handle → settle. Every message is settled exactly once: ack on success,
// nak(delay) when a retry may help, term when it never will; working() on a timer while a tool runs.
import { hostname } from "node:os";
import { DeliverPolicy, jetstream, type Consumer, type JetStreamClient, type JsMsg } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { consumerName, EVENTS_STREAM, JOBS_STREAM, subjects, WORKERS_BUCKET } from "../shared/contracts/jetstream.js";
import {
  CONTRACT_VERSION,
  decodeEvent,
  decodeJob,
  encode,
  type Progress,
  type Job,
  type JobEvent,
  type JobResult,
} from "../shared/contracts/messages.js";
import { JOB_KINDS, type JobKind } from "../shared/contracts/phases.js";
import { ContractError, errorMessage, PermanentJobError, ToolError } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { retry } from "../shared/retry.js";
import { deterministicFailure, serverUnavailable, withClient } from "../shared/pg/connect.js";
import { serverFor, type Handlers, type WorkerContext } from "./context.js";
import { dump } from "./dump.js";
import { restore } from "./restore.js";
import { verify } from "./verify.js";
import { post, schema, slice, whole } from "./stream.js";

const handlers: Handlers = { dump, restore, verify, schema, slice, post, whole };

export interface WorkerOptions {
  /** Delay before a failed job is offered again. */
  retryDelayMs: number;
  /** Data slices this worker streams at once (each holds one connection to each server). */
  slices: number;
}

const HEARTBEAT_MS = 5_000;
const PRESENCE_EVERY_MS = 5_000;
/** How long a job waits for its server to come back (a restart) before its failure counts as an attempt. */
const SERVER_WAIT_MS = 300_000;
/** A result is worth waiting for: publishing it is retried this long (a broker restart) before the job is given back. */
const RESULT_PUBLISH_MS = 120_000;

export class Worker {
  private readonly stopping = new AbortController();
  private readonly inFlight = new Map<string, { msg: JsMsg; abort: AbortController; settled: Promise<void> }>();
  private readonly js: JetStreamClient;
  private presence: KV | undefined;
  private presenceTimer: NodeJS.Timeout | undefined;
  private jobsDone = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly ctx: WorkerContext,
    private readonly opts: WorkerOptions,
    private readonly log: Logger,
  ) {
    this.js = jetstream(nc);
  }

  async run(): Promise<void> {
    await this.announce();
    // One job of each kind at a time, but as many data slices as the worker was given slots for.
    const loops = JOB_KINDS.flatMap((kind) =>
      Array.from({ length: kind === "slice" ? this.opts.slices : 1 }, () => kind),
    );
    await Promise.all(loops.map((kind) => this.loop(kind)));
  }

  /**
   * Stop pulling and stop the running tools; each job is then handed back (released) for immediate redelivery,
   * without using up an attempt. Waits (up to graceMs) for the tools to exit: SIGTERM lets pg_dump and pg_restore
   * end their own parallel workers, which a SIGKILL of the leader would leave to finish their current table alone,
   * and a job handed back while its tool still writes could be taken by another worker too early.
   */
  async stop(graceMs = 6_000): Promise<void> {
    if (this.stopping.signal.aborted) return;
    this.stopping.abort();
    const settling: Promise<void>[] = [];
    for (const { abort, settled } of this.inFlight.values()) {
      abort.abort();
      settling.push(settled);
    }
    clearInterval(this.presenceTimer);
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(settling), new Promise((r) => (grace = setTimeout(r, graceMs)))]);
    clearTimeout(grace);
    await this.presence?.delete(this.ctx.id).catch(() => undefined);
  }

  /**
   * A job this worker will not finish goes back whole: a "released" event tells the coordinator to publish it again
   * at once, as a new job with the same attempt number, and the message itself is acknowledged, which removes it from
   * the work queue. A nak would count a delivery; a term leaves the message in a work-queue stream on nats-server
   * 2.9, where a resumed coordinator would adopt it. Should the event not get out, a resuming coordinator finds the
   * job gone without a result and publishes it again, also as the same attempt.
   */
  private async release(
    msg: JsMsg,
    job: Job,
    attempt: number,
    maxAttempts: number,
    reason: "stopping" | "server-back" = "stopping",
  ): Promise<void> {
    const event = {
      v: CONTRACT_VERSION,
      type: "job",
      runId: job.runId,
      jobId: job.jobId,
      kind: job.kind,
      db: job.db,
      worker: this.ctx.id,
      attempt,
      maxAttempts,
      status: "released",
      reason,
      at: new Date().toISOString(),
    } as const;
    await this.js
      .publish(subjects.event(job.runId, job.kind, "released"), encode(event), {
        msgID: `${job.jobId}.${attempt}.released`,
        timeout: 3_000,
      })
      .catch((err: unknown) =>
        this.log.warn(
          { job: job.jobId, err: errorMessage(err) },
          "release not published; a resumed coordinator publishes the job again",
        ),
      );
    await msg.ackAck({ timeout: 3_000 }).catch(() => false);
  }

  private async announce(): Promise<void> {
    const kvm = new Kvm(this.nc);
    let waited = false;
    for (;;) {
      try {
        // The coordinator creates the bucket, with the replicas it was told to use; a worker only opens it.
        const kv = await kvm.open(WORKERS_BUCKET);
        await kv.status();
        this.presence = kv;
        break;
      } catch (err) {
        if (this.stopping.signal.aborted) return;
        if (!waited) this.log.info("waiting for a coordinator: no run has used this NATS server yet");
        waited = true;
        this.log.debug(
          { err: errorMessage(err) },
          "no coordinator has created the worker presence bucket yet; waiting",
        );
        await sleep(1000);
      }
    }
    const beat = () =>
      this.presence
        ?.put(
          this.ctx.id,
          encode({
            id: this.ctx.id,
            host: hostname(),
            pid: process.pid,
            jobs: this.jobsDone,
            inFlight: this.inFlight.size,
            at: new Date().toISOString(),
          }),
        )
        .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "presence refresh failed"));
    await beat();
    this.presenceTimer = setInterval(beat, PRESENCE_EVERY_MS);
    this.log.info({ worker: this.ctx.id }, "worker ready");
  }

  private async loop(kind: JobKind): Promise<void> {
    let consumer: Consumer | undefined;
    let maxAttempts = 1;
    let heartbeatMs = HEARTBEAT_MS;
    while (!this.stopping.signal.aborted) {
      try {
        if (!consumer) {
          consumer = await this.js.consumers.get(JOBS_STREAM, consumerName(kind));
          const { config } = await consumer.info();
          maxAttempts = config.max_deliver ?? 1;
          // Well inside the ack wait, so that a live worker never loses its job to a redelivery.
          heartbeatMs = Math.max(500, Math.min(HEARTBEAT_MS, Math.floor((config.ack_wait ?? 30e9) / 1e6 / 3)));
        }
        const msg = await consumer.next({ expires: 5_000 });
        if (msg && this.stopping.signal.aborted) {
          await this.giveBack(msg, maxAttempts);
          break;
        }
        if (msg) await this.handle(kind, msg, maxAttempts, heartbeatMs);
      } catch (err) {
        // The stream may not exist yet (no coordinator has run) or the broker is restarting: wait and retry.
        consumer = undefined;
        if (!this.stopping.signal.aborted) {
          this.log.debug({ kind, err: errorMessage(err) }, "waiting for jobs");
          await sleep(1000);
        }
      }
    }
  }

  /**
   * Waits, with backoff and up to SERVER_WAIT_MS, until the server the job works on takes a connection again (the
   * source for a dump, the target for a restore or a verify). False when it never did, or this worker is stopping.
   */
  private async waitForServer(job: Job, log: Logger): Promise<boolean> {
    // A streamed job (schema, slice, post) works on both servers: it waits for the target, where it writes.
    const [role, conn, db] =
      job.kind === "dump"
        ? (["source", job.source, job.db.name] as const)
        : ([
            "target",
            job.target,
            job.kind === "restore" || job.kind === "schema" || job.kind === "whole" ? job.maintenanceDb : job.db.name,
          ] as const);
    const deadline = Date.now() + SERVER_WAIT_MS;
    for (let attempt = 1; !this.stopping.signal.aborted && Date.now() < deadline; attempt++) {
      try {
        await withClient(serverFor(role, conn, this.ctx), db, async (c) => c.query("SELECT 1"));
        return true;
      } catch (err) {
        if (!serverUnavailable(err)) log.warn({ err: errorMessage(err) }, "waiting for the server");
        await sleep(Math.min(5_000, 250 * 2 ** Math.min(attempt, 5)));
      }
    }
    return false;
  }

  /** A job pulled just as this worker began to stop: released untouched (a malformed one is left to the next worker). */
  private async giveBack(msg: JsMsg, consumerMax: number): Promise<void> {
    try {
      const job = decodeJob(msg.data, msg.subject);
      await this.release(msg, job, attemptOf(job, msg), job.maxAttempts ?? consumerMax);
    } catch {
      msg.nak();
    }
  }

  /** Whether a "done" event of this very job is already in the EVENTS stream (false when that cannot be read). */
  private async resultExists(job: Job): Promise<boolean> {
    return this.findResult(job).catch((err: unknown) => {
      this.log.warn(
        { job: job.jobId, err: errorMessage(err) },
        "could not look for an earlier result; running the job",
      );
      return false;
    });
  }

  private async findResult(job: Job): Promise<boolean> {
    const consumer = await this.js.consumers.get(EVENTS_STREAM, {
      filter_subjects: subjects.event(job.runId, job.kind, "done"),
      deliver_policy: DeliverPolicy.All,
    });
    const pending = (await consumer.info()).num_pending;
    if (pending === 0) return false;
    const batch = await consumer.fetch({ max_messages: pending, expires: 5_000 });
    for await (const m of batch) {
      try {
        const e = decodeEvent(m.data, m.subject);
        if (e.type === "job" && e.jobId === job.jobId) return true;
      } catch {
        // a malformed event proves nothing either way
      }
      if (m.info.pending === 0) break;
    }
    return false;
  }

  private async handle(kind: JobKind, msg: JsMsg, maxAttempts: number, heartbeatMs: number): Promise<void> {
    let job: Job;
    try {
      job = decodeJob(msg.data, msg.subject);
      if (job.kind !== kind) throw new ContractError(`a ${job.kind} job on the ${kind} subject`, msg.subject);
    } catch (err) {
      this.log.error({ subject: msg.subject, err: errorMessage(err) }, "malformed job terminated");
      msg.term(errorMessage(err).slice(0, 200));
      return;
    }
    const attempt = attemptOf(job, msg);
    // The coordinator's --max-deliver of this run, not the consumer's of whichever run this worker saw first.
    maxAttempts = job.maxAttempts ?? maxAttempts;
    const log = this.log.child({ runId: job.runId, db: job.db.name, job: job.jobId, kind });
    const abort = new AbortController();
    let settle!: () => void;
    this.inFlight.set(job.jobId, { msg, abort, settled: new Promise<void>((resolve) => (settle = resolve)) });
    const started = Date.now();
    const base = {
      v: CONTRACT_VERSION,
      type: "job",
      runId: job.runId,
      jobId: job.jobId,
      kind,
      db: job.db,
      worker: this.ctx.id,
      attempt,
      maxAttempts,
    } as const;
    let lastEmit = 0;
    let lastProgress: Progress = { bytes: 0, totalBytes: null };
    const emit = (status: JobEvent["status"], extra: Partial<JobEvent> = {}) => {
      lastEmit = Date.now();
      // A retried claimed/done/failed whose first publish did reach the stream is dropped there as a duplicate.
      const once = status === "progress" ? {} : { msgID: `${job.jobId}.${attempt}.${status}` };
      return this.js.publish(
        subjects.event(job.runId, kind, status),
        encode({ ...base, status, at: new Date().toISOString(), ...extra }),
        once,
      );
    };
    // working() keeps the job ours; a progress event at the same pace tells the coordinator we are alive.
    // Once the handler has returned, no progress may follow: "end" and "done" are the job's last events.
    let finished = false;
    let heartbeat: NodeJS.Timeout | undefined;

    msg.working();
    try {
      if (msg.info.deliveryCount > 1 && (await this.resultExists(job))) {
        // An earlier delivery finished and published its result, but its ack was lost: nothing to do again.
        finished = true;
        log.info(
          { attempt },
          `${kind} ${JSON.stringify(job.db.name)} was already done by an earlier delivery; acknowledged`,
        );
        msg.ack();
        return;
      }
      await emit("claimed");
      // working() keeps the job ours; a progress event at the same pace tells the coordinator we are alive.
      heartbeat = setInterval(() => {
        msg.working();
        if (!finished && Date.now() - lastEmit >= heartbeatMs)
          void emit("progress", { progress: { ...lastProgress, stage: "running" } }).catch(() => undefined);
      }, heartbeatMs);
      await emit("progress", { progress: { bytes: 0, totalBytes: null, stage: "start" } }).catch(() => undefined);
      log.info(
        { attempt, maxAttempts },
        `${kind} ${JSON.stringify(job.db.name)} claimed, attempt ${attempt} of ${maxAttempts}`,
      );
      const result: JobResult = await (handlers[kind] as (j: Job, r: unknown, c: WorkerContext) => Promise<JobResult>)(
        job,
        {
          attempt,
          signal: abort.signal,
          log,
          progress: (p: Omit<Progress, "stage">) => {
            if (finished) return;
            lastProgress = { ...p, stage: "running" };
            void emit("progress", { progress: lastProgress }).catch(() => undefined);
          },
        },
        this.ctx,
      );
      const durationMs = Date.now() - started;
      finished = true;
      await emit("progress", { progress: { ...lastProgress, stage: "end" } }).catch(() => undefined);
      // The result is stored in the EVENTS stream before the job is acked: a crash in between repeats the
      // job, it never loses its result.
      await retrying(() => emit("done", { durationMs, result }), abort.signal);
      // Acked once (a message can be acked only once); if the ack is lost, the redelivery finds the result above.
      await msg
        .ackAck()
        .catch((e: unknown) =>
          log.warn({ err: errorMessage(e) }, "ack not confirmed; a redelivery will find the result"),
        );
      this.jobsDone++;
      log.info(
        { durationMs, attempt },
        `${kind} ${JSON.stringify(job.db.name)} done in ${(durationMs / 1000).toFixed(1)}s, attempt ${attempt} of ${maxAttempts}`,
      );
    } catch (err) {
      finished = true;
      if (this.stopping.signal.aborted) {
        await this.release(msg, job, attempt, maxAttempts);
        log.warn(
          { attempt },
          `${kind} interrupted by shutdown; handed back for redelivery (attempt ${attempt} not used up)`,
        );
        return;
      }
      if (serverUnavailable(err) && !(err instanceof PermanentJobError)) {
        // The server went away under the job (a restart, a failover): no fault of the job's. It waits for the server
        // (still heartbeating), then goes back whole, as the same attempt, for a fresh start.
        log.warn(
          { attempt, err: errorMessage(err) },
          `${kind} ${JSON.stringify(job.db.name)}: its server went away; waiting for it to come back`,
        );
        if (await this.waitForServer(job, log)) {
          await this.release(msg, job, attempt, maxAttempts, "server-back");
          log.info(
            { attempt },
            `${kind} ${JSON.stringify(job.db.name)}: the server is back; handed back (attempt ${attempt} not used up)`,
          );
          return;
        }
      }
      const permanent = err instanceof PermanentJobError || err instanceof ContractError || deterministicFailure(err);
      const final = permanent || attempt >= maxAttempts;
      const stderrTail = err instanceof ToolError ? err.stderrTail.slice(-4000) : "";
      await retrying(
        () =>
          emit("failed", {
            durationMs: Date.now() - started,
            error: { message: errorMessage(err), stderrTail, final },
          }),
        abort.signal,
      ).catch((e: unknown) => log.error({ err: errorMessage(e) }, "could not publish the failure"));
      if (final) msg.term(errorMessage(err).slice(0, 200));
      else msg.nak(this.opts.retryDelayMs);
      log.error(
        { attempt, maxAttempts, final, err: errorMessage(err), stderrTail },
        `${kind} ${JSON.stringify(job.db.name)} failed, attempt ${attempt} of ${maxAttempts}`,
      );
    } finally {
      clearInterval(heartbeat);
      this.inFlight.delete(job.jobId);
      settle();
    }
  }
}

/** This delivery's attempt: the attempts earlier jobs of the step used, plus this message's deliveries. */
function attemptOf(job: Job, msg: JsMsg): number {
  return (job.attemptsBefore ?? 0) + msg.info.deliveryCount;
}

/** Retries a publish while the broker is away (a restart, a cluster node lost), up to RESULT_PUBLISH_MS. */
function retrying<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<T> {
  return retry(fn, { forMs: RESULT_PUBLISH_MS, pauseMs: () => 1000, stop: () => signal.aborted });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
