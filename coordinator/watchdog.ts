// The scheduler's watchdog: it judges the jobs that have gone silent, from when each database last heard of its job
// and from what the JOBS stream still holds, and tells the scheduler, which decides what becomes of the database.
import type { JetStreamManager } from "@nats-io/jetstream";
import { JOBS_STREAM, subjects } from "../shared/contracts/jetstream.js";
import { JOB_PHASES, nextJobFor, type JobKind } from "../shared/contracts/phases.js";
import type { MigrateConfig } from "./config.js";
import type { DbState } from "./state.js";

/** What the watchdog asks of the scheduler and tells it. */
export interface Watched {
  /** The databases between their first job and their end, read as the watchdog goes. */
  inFlight(): Iterable<DbState>;
  /** The job went silent on its last delivery, and is deleted from the JOBS stream: it will never run again. */
  lastDeliveryLost(db: DbState, kind: JobKind): Promise<void>;
  /** The job went silent and is no longer in the JOBS stream: it ended without a result anyone received. */
  lost(db: DbState, kind: JobKind): Promise<void>;
}

export class Watchdog {
  /** When the newest event of each database's current job was published: the watchdog's input. */
  private readonly lastEventAt = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private watching = false;

  constructor(
    private readonly cfg: Pick<MigrateConfig, "ackWaitMs" | "maxDeliver">,
    private readonly runId: string,
    private readonly watched: Watched,
  ) {}

  /** The database's job was heard of (an event, or found still queued). */
  heard(key: string): void {
    this.lastEventAt.set(key, Date.now());
  }

  /** The database has a new job, not heard of yet. */
  forget(key: string): void {
    this.lastEventAt.delete(key);
  }

  /** Starts judging; silence of the databases in flight counts from now at the earliest. */
  start(jsm: JetStreamManager, inFlight: Iterable<string>): void {
    for (const key of inFlight) this.lastEventAt.set(key, Math.max(this.lastEventAt.get(key) ?? 0, Date.now()));
    this.timer = setInterval(() => void this.watch(jsm), Math.max(1000, Math.floor(this.cfg.ackWaitMs / 4)));
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /**
   * Silence is the evidence the broker cannot give us after the fact. A job on its last delivery whose worker
   * has gone silent for longer than the ack wait will never be delivered again (JetStream says so with an
   * advisory, but advisories are not stored: one sent while this coordinator was away is gone): its database
   * fails. A job silent for that long that is no longer in the JOBS stream at all ended without a result anyone
   * received (its result could not be published): it is done again with a fresh job.
   */
  private async watch(jsm: JetStreamManager): Promise<void> {
    if (this.watching) return;
    this.watching = true;
    try {
      const limit = this.cfg.ackWaitMs + 10_000;
      for (const db of this.watched.inFlight()) {
        const jobId = db.jobId;
        const kind = db.jobKind ?? nextJobFor(db.phase);
        const seen = this.lastEventAt.get(db.key);
        if (!jobId || !kind || db.phase !== JOB_PHASES[kind].running) continue;
        if (seen === undefined || Date.now() - seen < limit) continue;
        if ((db.attempts[kind] ?? 0) >= this.cfg.maxDeliver) {
          if (db.jobSeq !== undefined) await jsm.streams.deleteMessage(JOBS_STREAM, db.jobSeq).catch(() => undefined);
          if (db.jobId !== jobId) continue; // a result arrived meanwhile
          await this.watched.lastDeliveryLost(db, kind);
          continue;
        }
        const live = await jsm.streams
          .getMessage(JOBS_STREAM, { last_by_subj: subjects.job(kind, this.runId, jobId) })
          .catch(() => undefined);
        if (live === null && db.jobId === jobId) await this.watched.lost(db, kind);
        else if (live) this.heard(db.key); // still queued (workers busy): look again later
      }
    } finally {
      this.watching = false;
    }
  }
}
