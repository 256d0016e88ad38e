// The coordinator's own session on the target, for the whole run. It holds the one-run-per-target advisory lock and
// names the run; when the server drops it (a restart, pg_terminate_backend, a session timeout) it is opened again at
// once, with backoff, and the lock is taken again before anything else is sent on it. A lock another coordinator took
// in the meantime means this run no longer owns the target: it is said, and the run stops without touching it.
import type pg from "pg";
import { errorMessage } from "../shared/errors.js";
import { serverUnavailable } from "../shared/pg/connect.js";
import type { Logger } from "../shared/log.js";
import { holdOnTarget, nameRunOnTarget } from "./lock.js";

/** How long a dropped session is tried again before the run gives the target up. */
const RECONNECT_FOR_MS = 120_000;

/** An error that says the session itself is gone (the server away, or the session ended), not that the statement was wrong. */
export function sessionLost(err: unknown): boolean {
  const code = (err as { code?: string }).code ?? "";
  return (
    serverUnavailable(err) ||
    /^57P0[45]/.test(code) ||
    /not queryable|Connection terminated|terminating connection/i.test(errorMessage(err))
  );
}

export class TargetSession {
  private current: pg.Client;
  private reconnecting: Promise<void> | undefined;
  private runId: string | undefined;
  private closed = false;
  /** Why the run lost the target (its lock taken by another coordinator, or the target gone for too long). */
  lost: string | undefined;

  constructor(
    client: pg.Client,
    private readonly open: () => Promise<pg.Client>,
    private readonly target: string,
    private readonly log: Logger,
    private readonly onLost: (why: string) => void,
    private readonly say: (line: string) => void,
  ) {
    this.current = client;
    this.watch(client);
  }

  /** The live client (after a reconnect, the new one). */
  get client(): pg.Client {
    return this.current;
  }

  /** Resolves once the session is up (at once, unless it is being opened again). */
  async ready(): Promise<void> {
    await this.reconnecting;
    if (this.lost) throw new Error(this.lost);
  }

  /** The run's name in the session, set again after every reconnect. */
  async name(runId: string): Promise<void> {
    this.runId = runId;
    await nameRunOnTarget(this.current, runId);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.reconnecting?.catch(() => undefined);
    await this.current.end().catch(() => undefined);
  }

  private watch(client: pg.Client): void {
    client.once("end", () => {
      if (this.closed || client !== this.current || this.lost) return;
      this.reconnecting ??= this.reconnect().finally(() => (this.reconnecting = undefined));
    });
  }

  private async reconnect(): Promise<void> {
    const deadline = Date.now() + RECONNECT_FOR_MS;
    this.say(`the coordinator's session on the target ${this.target} was closed by the server; opening it again`);
    for (let attempt = 1; !this.closed; attempt++) {
      try {
        const client = await this.open();
        try {
          // The lock first: nothing of this run is sent on a session that does not hold it.
          await holdOnTarget(client, this.target);
        } catch (err) {
          await client.end().catch(() => undefined);
          // Our own old session, not quite gone yet, still shows as the holder: it lets go in a moment.
          if (this.runId && errorMessage(err).includes(`by run ${this.runId} `) && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 200));
            continue;
          }
          this.lose(
            `while this coordinator's session on the target was away, ${errorMessage(err)
              .replace(/^the target \S+ is being migrated by /, "")
              .replace(/ \(its coordinator's.*$/, "")} took the target: this run stops without touching it`,
          );
          return;
        }
        if (this.runId) await nameRunOnTarget(client, this.runId);
        this.current = client;
        this.watch(client);
        this.log.info({ attempt }, "target session opened again, its lock taken again");
        this.say(`the coordinator's session on the target is back, with the run's lock (attempt ${attempt})`);
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          this.lose(
            `the target ${this.target} could not be reached again for ${RECONNECT_FOR_MS / 1000}s: ${errorMessage(err)}`,
          );
          return;
        }
        this.log.warn({ attempt, err: errorMessage(err) }, "target session not opened again yet");
        await new Promise((r) => setTimeout(r, Math.min(5_000, 250 * 2 ** Math.min(attempt, 5))));
      }
    }
  }

  private lose(why: string): void {
    this.lost = why;
    this.onLost(why);
  }
}
