// The worker loop: decode → handle → settle. Every message is settled exactly once: ack on success,
// nak(delay) when a retry may help, term when it never will; working() on a timer while a tool runs.
import { hostname } from "node:os";
import { jetstream, type Consumer, type JetStreamClient, type JsMsg } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { consumerName, JOBS_STREAM, subjects, WORKER_TTL_MS, WORKERS_BUCKET } from "../shared/contracts/jetstream.js";
import { CONTRACT_VERSION, decodeJob, encode, type Job, type JobEvent, type JobResult } from "../shared/contracts/messages.js";
import { JOB_KINDS, type JobKind } from "../shared/contracts/phases.js";
import { ContractError, errorMessage, ToolError } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { PermanentJobError, type Handlers, type WorkerContext } from "./context.js";
import { dump } from "./dump.js";
import { restore } from "./restore.js";
import { verify } from "./verify.js";

const handlers: Handlers = { dump, restore, verify };

export interface WorkerOptions {
  /** Delay before a failed job is offered again. */
  retryDelayMs: number;
}

const HEARTBEAT_MS = 5_000;
const PRESENCE_EVERY_MS = 5_000;

export class Worker {
  private readonly stopping = new AbortController();
  private readonly inFlight = new Map<string, { msg: JsMsg; abort: AbortController }>();
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
    await Promise.all(JOB_KINDS.map((kind) => this.loop(kind)));
  }

  /** Stop pulling, stop the running tools, hand their jobs back for immediate redelivery. */
  async stop(): Promise<void> {
    if (this.stopping.signal.aborted) return;
    this.stopping.abort();
    for (const { msg, abort } of this.inFlight.values()) {
      abort.abort();
      msg.nak();
    }
    clearInterval(this.presenceTimer);
    await this.presence?.delete(this.ctx.id).catch(() => undefined);
  }

  private async announce(): Promise<void> {
    const kvm = new Kvm(this.nc);
    for (;;) {
      try {
        this.presence = await kvm.create(WORKERS_BUCKET, { ttl: WORKER_TTL_MS, history: 1 });
        break;
      } catch (err) {
        if (this.stopping.signal.aborted) return;
        this.log.warn({ err: errorMessage(err) }, "cannot open the worker presence bucket yet; retrying");
        await sleep(1000);
      }
    }
    const beat = () =>
      this.presence
        ?.put(this.ctx.id, JSON.stringify({ id: this.ctx.id, host: hostname(), pid: process.pid, jobs: this.jobsDone, inFlight: this.inFlight.size, at: new Date().toISOString() }))
        .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "presence refresh failed"));
    await beat();
    this.presenceTimer = setInterval(beat, PRESENCE_EVERY_MS);
    this.log.info({ worker: this.ctx.id }, "worker ready");
  }

  private async loop(kind: JobKind): Promise<void> {
    let consumer: Consumer | undefined;
    let maxAttempts = 1;
    while (!this.stopping.signal.aborted) {
      try {
        if (!consumer) {
          consumer = await this.js.consumers.get(JOBS_STREAM, consumerName(kind));
          maxAttempts = (await consumer.info()).config.max_deliver ?? 1;
        }
        const msg = await consumer.next({ expires: 5_000 });
        if (msg && this.stopping.signal.aborted) {
          msg.nak();
          break;
        }
        if (msg) await this.handle(kind, msg, maxAttempts);
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

  private async handle(kind: JobKind, msg: JsMsg, maxAttempts: number): Promise<void> {
    let job: Job;
    try {
      job = decodeJob(msg.data, msg.subject);
      if (job.kind !== kind) throw new ContractError(`a ${job.kind} job on the ${kind} subject`, msg.subject);
    } catch (err) {
      this.log.error({ subject: msg.subject, err: errorMessage(err) }, "malformed job terminated");
      msg.term(errorMessage(err).slice(0, 200));
      return;
    }
    const attempt = msg.info.deliveryCount;
    const log = this.log.child({ runId: job.runId, db: job.db.name, job: job.jobId, kind });
    const abort = new AbortController();
    this.inFlight.set(job.jobId, { msg, abort });
    const heartbeat = setInterval(() => msg.working(), HEARTBEAT_MS);
    const started = Date.now();
    const base = { v: CONTRACT_VERSION, type: "job", runId: job.runId, jobId: job.jobId, kind, db: job.db, worker: this.ctx.id, attempt, maxAttempts } as const;
    const emit = (status: JobEvent["status"], extra: Partial<JobEvent> = {}) =>
      this.js.publish(subjects.event(job.runId, kind, status), encode({ ...base, status, at: new Date().toISOString(), ...extra }));

    try {
      await emit("claimed");
      log.info({ attempt, maxAttempts }, `${kind} ${JSON.stringify(job.db.name)} claimed, attempt ${attempt} of ${maxAttempts}`);
      const result: JobResult = await (handlers[kind] as (j: Job, r: unknown, c: WorkerContext) => Promise<JobResult>)(
        job,
        {
          attempt,
          signal: abort.signal,
          log,
          progress: (bytes: number, totalBytes: number | null) => void emit("progress", { progress: { bytes, totalBytes } }).catch(() => undefined),
        },
        this.ctx,
      );
      const durationMs = Date.now() - started;
      // The result is stored in the EVENTS stream before the job is acked: a crash in between repeats the
      // job, it never loses its result.
      await emit("done", { durationMs, result });
      msg.ack();
      this.jobsDone++;
      log.info({ durationMs, attempt }, `${kind} ${JSON.stringify(job.db.name)} done in ${(durationMs / 1000).toFixed(1)}s, attempt ${attempt} of ${maxAttempts}`);
    } catch (err) {
      if (this.stopping.signal.aborted) {
        log.warn({ attempt }, `${kind} interrupted by shutdown; handed back for redelivery`);
        return; // stop() already nak'ed it
      }
      const permanent = err instanceof PermanentJobError || err instanceof ContractError;
      const final = permanent || attempt >= maxAttempts;
      const stderrTail = err instanceof ToolError ? err.stderrTail.slice(-4000) : "";
      await emit("failed", { durationMs: Date.now() - started, error: { message: errorMessage(err), stderrTail, final } }).catch((e: unknown) =>
        log.error({ err: errorMessage(e) }, "could not publish the failure"),
      );
      if (final) msg.term(errorMessage(err).slice(0, 200));
      else msg.nak(this.opts.retryDelayMs);
      log.error({ attempt, maxAttempts, final, err: errorMessage(err), stderrTail }, `${kind} ${JSON.stringify(job.db.name)} failed, attempt ${attempt} of ${maxAttempts}`);
    } finally {
      clearInterval(heartbeat);
      this.inFlight.delete(job.jobId);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
