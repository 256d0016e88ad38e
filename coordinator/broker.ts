// The broker and the workers of a run. Embedded (no --nats-url): a local nats-server with its store per pair of
// servers, and local worker processes; given: the NATS the preflight reached, and whoever's workers are there.
// Either way the run's streams and buckets are made sure of, the target's lock is taken in the runs KV too, and the
// run waits for its workers before anything changes on the target.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { join } from "node:path";
import {
  ensureJetStream,
  openOrCreateKv,
  RUNS_BUCKET,
  WORKER_TTL_MS,
  WORKERS_BUCKET,
} from "../shared/contracts/jetstream.js";
import { InterruptedError, PreflightError } from "../shared/errors.js";
import { closeNats, connectNats, withoutCredentials } from "../shared/nats.js";
import { generateSecret, keyFrom, sharedKeyFromEnv } from "../shared/secrets.js";
import { LocalWorkers, startEmbeddedNats } from "./embedded.js";
import { leaveRunRoles } from "./memberships.js";
import { plural } from "./output.js";
import { watchPresence } from "./presence.js";
import { abandon } from "./resume.js";
import { brokerOf, emitRun, preflightOf, stateOf, type RunContext } from "./run-context.js";

/** The "broker" step: NATS up, the run's streams and buckets there, the target's lock held in the runs KV. */
export async function openBroker(ctx: RunContext): Promise<void> {
  const { cfg, out } = ctx;
  const pf = preflightOf(ctx);
  let embedded;
  let nc;
  if (pf.broker.embedded) {
    embedded = await startEmbeddedNats(
      join(ctx.home, "nats", pf.pairKey),
      join(ctx.home, "logs", `nats-${pf.pairKey}.log`),
      ctx.log,
      (line) => out.warn(line),
    );
    ctx.defer(() => embedded!.stop());
    if (ctx.signal.aborted) throw new InterruptedError("interrupted");
    nc = await connectNats(embedded.url, "pg-migrate-coordinator");
  } else nc = pf.broker.nc; // the preflight's connection, closed with it
  ctx.defer(() => closeNats(nc));
  const key = pf.broker.embedded ? undefined : sharedKeyFromEnv();
  if (!pf.broker.embedded && !key)
    out.warn(
      "no PGMIGRATE_SECRET: jobs carry no passwords, so workers need their own (PGMIGRATE_FROM_PASS / PGMIGRATE_TO_PASS or ~/.pgpass)",
    );
  const jsm = await jetstreamManager(nc);
  await ensureJetStream(jsm, { replicas: cfg.natsReplicas, ackWaitMs: cfg.ackWaitMs, maxDeliver: cfg.maxDeliver });
  const kvm = new Kvm(nc);
  const runsKv = await openOrCreateKv(kvm, RUNS_BUCKET, { history: 1, replicas: cfg.natsReplicas });
  const workersKv = await openOrCreateKv(kvm, WORKERS_BUCKET, {
    ttl: WORKER_TTL_MS,
    history: 1,
    replicas: cfg.natsReplicas,
  });
  await ctx.lock!.holdInKv(runsKv, pf.lockKey);
  ctx.defer(() => ctx.lock!.release()); // the KV entry goes while the connection is still up
  ctx.broker = {
    url: pf.broker.embedded ? embedded!.url : pf.broker.url,
    nc,
    jsm,
    runsKv,
    workersKv,
    embedded,
    key,
  };
}

/**
 * The "workers" step: embedded, the run's own workers start; either way the run waits for them (embedded: all of
 * them, which start in well under a second; distributed: whoever is there). With --restart, the old run's
 * databases go now that workers are known to be there. The run's started (or resumed) event ends it.
 */
export async function awaitWorkers(ctx: RunContext): Promise<void> {
  const { cfg, out, signal } = ctx;
  const broker = brokerOf(ctx);
  const state = stateOf(ctx);
  if (broker.embedded) {
    // The run's own key, kept beside its local record: jobs adopted on resume were sealed with it.
    const secret = await state.embeddedSecret(generateSecret);
    const workers = new LocalWorkers(
      {
        natsUrl: broker.url,
        dumpRoot: cfg.dumpRoot,
        secret,
        logDir: join(ctx.home, "logs", state.runId),
        retryDelayS: Math.max(1, Math.round(cfg.retryDelayMs / 1000)),
        // Enough for every database in flight to keep -j slices going, spread over the local workers.
        slices: Math.max(1, Math.ceil((cfg.maxParallel * cfg.jobs) / cfg.workers)),
        pgBin: cfg.pgBin,
      },
      ctx.log,
      signal,
    );
    ctx.workers = workers;
    ctx.defer(() => workers.stop());
    await workers.start(cfg.workers);
    broker.key = keyFrom(secret);
  }
  const present = await waitForWorkers(broker.workersKv, broker.embedded ? cfg.workers : 1, cfg.workerWaitMs, signal);
  if (present === 0) {
    throw new PreflightError(
      `no pg-migrate worker joined within ${Math.round(cfg.workerWaitMs / 1000)}s: start workers with "pg-migrate worker --nats-url ${withoutCredentials(broker.url)} --dump-root <shared dump root>"`,
    );
  }
  out.line(broker.embedded ? `${plural(present, "local worker")} ready` : `${plural(present, "worker")} present`);
  if (ctx.abandoned) {
    await abandon(ctx.abandoned, cfg, {
      tgtClient: ctx.session!.client,
      jsm: broker.jsm,
      out,
      targetMajor: preflightOf(ctx).target.major,
    });
    await leaveRunRoles(ctx.abandoned, ctx.openTarget, out);
  }
  const presence = watchPresence(broker.workersKv, jetstream(broker.nc), state.runId, ctx.log);
  ctx.defer(() => presence.stop());
  await emitRun(ctx, state.record.resumedAt.length ? "resumed" : "started");
}

/** Waits for `wanted` workers, or (after a few seconds) whoever has come, or none when the time is up; returns how many are there. */
async function waitForWorkers(kv: KV, wanted: number, timeoutMs: number, signal: AbortSignal): Promise<number> {
  const started = Date.now();
  while (!signal.aborted) {
    const keys = await kv.keys();
    let n = 0;
    for await (const _ of keys) n++;
    const waited = Date.now() - started;
    if (n >= wanted || (n > 0 && waited > 5_000) || waited > timeoutMs) return n;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new InterruptedError("interrupted while waiting for workers");
}
