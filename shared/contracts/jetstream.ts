// Every stream, consumer, bucket and subject of pg-migrate, declared once.
// Database names never appear in a subject: runs and jobs are addressed by ids we generate.
import { AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { KV, KvOptions, Kvm } from "@nats-io/kv";
import { JOB_KINDS, type JobKind } from "./phases.js";
import { ContractError } from "../errors.js";

export const JOBS_STREAM = "PGMIGRATE_JOBS";
export const EVENTS_STREAM = "PGMIGRATE_EVENTS";
export const RUNS_BUCKET = "pgmigrate-runs";
export const WORKERS_BUCKET = "pgmigrate-workers";

/** How long a worker may stay silent on a job before JetStream hands it to another worker. */
export const DEFAULT_ACK_WAIT_MS = 60_000;
export const DEFAULT_MAX_DELIVER = 3;
/** Worker presence entries expire when a worker stops refreshing them. */
export const WORKER_TTL_MS = 15_000;
export const EVENTS_MAX_AGE_MS = 14 * 24 * 3600 * 1000;

const TOKEN = /^[A-Za-z0-9_-]+$/;
function token(value: string, what: string): string {
  if (!TOKEN.test(value)) throw new ContractError(`${what} ${JSON.stringify(value)} is not a safe subject token`);
  return value;
}

export const subjects = {
  allJobs: "pgmigrate.jobs.>",
  jobsOfKind: (kind: JobKind) => `pgmigrate.jobs.${kind}.>`,
  /** One subject per job, so that a resuming coordinator can look a job up (last_by_subj) and adopt it. */
  job: (kind: JobKind, runId: string, jobId: string) =>
    `pgmigrate.jobs.${kind}.${token(runId, "run id")}.${token(jobId, "job id")}`,
  jobsOfRun: (runId: string) => `pgmigrate.jobs.*.${token(runId, "run id")}.*`,
  allEvents: "pgmigrate.events.>",
  eventsOfRun: (runId: string) => `pgmigrate.events.${token(runId, "run id")}.>`,
  /** topic: run | db | dump | restore | verify | globals; status: what happened. */
  event: (runId: string, topic: string, status: string) =>
    `pgmigrate.events.${token(runId, "run id")}.${token(topic, "topic")}.${token(status, "status")}`,
  maxDeliveriesAdvisory: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${JOBS_STREAM}.*`,
} as const;

export const consumerName = (kind: JobKind) => `pgmigrate-${kind}`;

/** Keys of the runs bucket. Run ids and target/pair keys are generated tokens. */
export const kvKeys = {
  run: (runId: string) => `run.${token(runId, "run id")}`,
  allRuns: "run.*",
  /** The unfinished run between two servers. */
  pair: (pairKey: string) => `pair.${token(pairKey, "pair key")}`,
  /** The live run on a target. */
  lock: (targetKey: string) => `lock.${token(targetKey, "target key")}`,
  allLocks: "lock.*",
} as const;

export interface JetStreamLayout {
  replicas: number;
  ackWaitMs: number;
  maxDeliver: number;
}

const nanos = (ms: number) => ms * 1_000_000;

/** Creates (or updates) the streams and the durable pull consumers. Idempotent. */
export async function ensureJetStream(jsm: JetStreamManager, layout: JetStreamLayout): Promise<void> {
  await upsertStream(jsm, {
    name: JOBS_STREAM,
    subjects: [subjects.allJobs],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    num_replicas: layout.replicas,
    discard: DiscardPolicy.Old,
  });
  await upsertStream(jsm, {
    name: EVENTS_STREAM,
    subjects: [subjects.allEvents],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: layout.replicas,
    max_age: nanos(EVENTS_MAX_AGE_MS),
  });
  for (const kind of JOB_KINDS) {
    const config = {
      durable_name: consumerName(kind),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: subjects.jobsOfKind(kind),
      ack_wait: nanos(layout.ackWaitMs),
      max_deliver: layout.maxDeliver,
      // A worker holds at most one job of a kind at a time; more waiting pulls are allowed for many workers.
      max_ack_pending: 1000,
      num_replicas: layout.replicas,
    };
    try {
      await jsm.consumers.add(JOBS_STREAM, config);
    } catch {
      await jsm.consumers.update(JOBS_STREAM, config.durable_name, {
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: config.max_ack_pending,
      });
    }
  }
}

type StreamConfigInput = Parameters<JetStreamManager["streams"]["add"]>[0];

async function upsertStream(jsm: JetStreamManager, config: StreamConfigInput): Promise<void> {
  try {
    await jsm.streams.info(config.name!);
    await jsm.streams.update(config.name!, config);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    await jsm.streams.add(config);
  }
}

function isNotFound(err: unknown): boolean {
  return err instanceof Error && /not found/i.test(err.message);
}

/** The bucket if it exists; undefined on a broker no run has used yet (Kvm.open itself does not check). */
export async function openExistingKv(kvm: Kvm, name: string): Promise<KV | undefined> {
  const kv = await kvm.open(name);
  try {
    await kv.status();
    return kv;
  } catch (err) {
    if (/stream not found/i.test(err instanceof Error ? err.message : String(err))) return undefined;
    throw err;
  }
}

/** A bucket as it already is (whatever replicas an earlier run gave it), or created with these options. */
export async function openOrCreateKv(kvm: Kvm, name: string, opts: Partial<KvOptions>): Promise<KV> {
  try {
    const kv = await kvm.open(name);
    await kv.status();
    return kv;
  } catch {
    return kvm.create(name, opts);
  }
}
