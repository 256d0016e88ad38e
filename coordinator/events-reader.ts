// Reads the run's events for the scheduler, from just after the last one the run record had handled, and JetStream's
// max-deliveries advisories. It says whether an event was published before this coordinator started (read again,
// not new) and when the replay of those has caught up; what an event does to a database is the scheduler's to say.
import {
  DeliverPolicy,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { EVENTS_STREAM, subjects } from "../shared/contracts/jetstream.js";
import { decodeEvent, type JobEvent } from "../shared/contracts/messages.js";
import { decodeMaxDeliveries, type MaxDeliveries } from "../shared/contracts/record.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import type { RunRecord } from "./state.js";

/** What the reader hands the scheduler: each call is awaited before the next event (or advisory) is handled. */
export interface EventHandlers {
  /** replayed: the event was published before this coordinator started. */
  onJobEvent(e: JobEvent, replayed: boolean): Promise<void>;
  onMaxDeliveries(a: MaxDeliveries): Promise<void>;
}

/** Pulls expire every 4 s and heartbeat at half that: this long without either means the consumer is lost. */
const EVENTS_SILENCE_MS = 12_000;
/** Consumer notifications that are not a sign of a working consumer. */
const TROUBLE = new Set([
  "heartbeats_missed",
  "no_responders",
  "consumer_not_found",
  "stream_not_found",
  "consumer_deleted",
  "reset",
]);

export class EventsReader {
  /** Resolves once the events published before this coordinator started are handled, or the reader stops. */
  readonly caughtUp: Promise<void>;
  private markCaughtUp!: () => void;
  private stopped = false;
  /** The events stream's last sequence when this coordinator started: an event up to it is read again, not new. */
  private replayUpTo = 0;
  private events: ConsumerMessages | undefined;
  private advisories: Subscription | undefined;
  private reading: Promise<void> | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly runId: string,
    /** Where reading resumes: the reader moves it on past each event it handled. */
    private readonly record: Pick<RunRecord, "eventsSeq">,
    private readonly log: Logger,
    private readonly handlers: EventHandlers,
  ) {
    this.caughtUp = new Promise<void>((resolve) => (this.markCaughtUp = resolve));
  }

  /** Takes note of where the events of earlier sessions end: before this coordinator publishes anything. */
  async markReplayEnd(jsm: JetStreamManager): Promise<void> {
    this.replayUpTo = (await jsm.streams.info(EVENTS_STREAM)).state.last_seq;
  }

  start(): void {
    const advisories = (this.advisories = this.nc.subscribe(subjects.maxDeliveriesAdvisory));
    this.reading = this.readEvents();
    void (async () => {
      for await (const m of advisories) {
        try {
          await this.handlers.onMaxDeliveries(decodeMaxDeliveries(m.string()));
        } catch (err) {
          this.log.warn({ err: errorMessage(err) }, "advisory ignored");
        }
      }
    })();
  }

  /** Stops at once (on abort): the run no longer waits for the replay, and the consumer is closed. */
  stop(): void {
    this.stopped = true;
    this.markCaughtUp();
    void this.events?.close().catch(() => undefined);
  }

  /** Stops, and returns once the event being handled is. */
  async close(): Promise<void> {
    this.stopped = true;
    await this.events?.close().catch(() => undefined);
    await this.reading;
    this.advisories?.unsubscribe();
  }

  /**
   * Reads the run's events from just after the last one handled, for as long as the run goes on. The consumer is
   * an ephemeral one on the broker: when a broker restart or a lost cluster node ends it, a new one starts where
   * the handled events end, so nothing is skipped and nothing is lost.
   */
  private async readEvents(): Promise<void> {
    const record = this.record;
    while (!this.stopped) {
      try {
        const from = record.eventsSeq ?? 0;
        const consumer = await this.js.consumers.get(EVENTS_STREAM, {
          filter_subjects: subjects.eventsOfRun(this.runId),
          ...(from > 0
            ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from + 1 }
            : { deliver_policy: DeliverPolicy.All }),
        });
        // Short pulls: a lost consumer is noticed through missed heartbeats, half the pull's expiry.
        this.events = await consumer.consume({ expires: 4_000 });
        // Stopped while the consumer was being made: close() closed the one before, so this one is closed here.
        if (this.stopped) {
          await this.events.close().catch(() => undefined);
          break;
        }
        // Caught up when nothing of the run is left to deliver and what was delivered has been handled.
        // (Without the consumer's info, the pending count of the messages themselves decides, or the time limit.)
        const ci = await consumer.info().catch(() => undefined);
        let replayTo: number | undefined;
        if (ci && ci.num_pending === 0) {
          const upTo = ci.delivered.stream_seq;
          if (upTo <= (record.eventsSeq ?? 0)) this.markCaughtUp();
          else replayTo = upTo;
        }
        // A consumer that neither delivers nor heartbeats for a while is gone for good (seen when a cluster node
        // holding it died): closed here, so that the loop starts a new one.
        const events = this.events;
        let lastSign = Date.now();
        void (async () => {
          for await (const n of events.status()) if (!TROUBLE.has(n.type)) lastSign = Date.now();
        })().catch(() => undefined);
        const silence = setInterval(() => {
          if (Date.now() - lastSign > EVENTS_SILENCE_MS) {
            this.log.warn("the events consumer went silent; starting a new one");
            void events.close().catch(() => undefined);
          }
        }, 1000);
        try {
          for await (const m of events) {
            lastSign = Date.now();
            await this.onEventMessage(m);
            if (m.info.pending === 0 || (replayTo !== undefined && m.seq >= replayTo)) this.markCaughtUp();
            if (this.stopped) break;
          }
        } finally {
          clearInterval(silence);
        }
      } catch (err) {
        this.log.warn(
          { err: errorMessage(err) },
          "reading the run's events failed; starting again from the last handled one",
        );
      }
      if (!this.stopped) await new Promise((r) => setTimeout(r, 1000));
    }
  }

  private async onEventMessage(m: JsMsg): Promise<void> {
    try {
      const e = decodeEvent(m.data, m.subject);
      if (e.type === "job") await this.handlers.onJobEvent(e, m.seq <= this.replayUpTo);
    } catch (err) {
      this.log.warn({ subject: m.subject, err: errorMessage(err) }, "event ignored");
    }
    // Saved with the next write of the record: a resume reads again from here, and handling twice is harmless.
    this.record.eventsSeq = m.seq;
  }
}
