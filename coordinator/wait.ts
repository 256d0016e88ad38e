// --wait: before the preflight, keep trying the source, the target and NATS until each has answered once. For
// servers that start alongside the coordinator (a compose stack), where "connection refused" means "not yet";
// an answer that waiting cannot change (a wrong password) ends the wait at once.
import { setTimeout as sleep } from "node:timers/promises";
import { ConnectError, errorMessage, InterruptedError, NatsConnectError, PreflightError } from "../shared/errors.js";
import { connectNats, withoutCredentials, type NatsAuth } from "../shared/nats.js";
import { connect, describe, type ServerSpec } from "../shared/pg/connect.js";

export interface Service {
  /** Named in the messages: "source db:5432/postgres as postgres". */
  name: string;
  /** Resolves once the service answered; its rejection is the reason to keep waiting. */
  probe: () => Promise<void>;
  /** Errors no amount of waiting fixes. */
  final?: (err: unknown) => boolean;
}

const RETRY_MS = 1000;

/** Authentication and a missing database are answers, not silence. */
const PG_FINAL_CODES = new Set(["28P01", "28000", "3D000"]);

export function postgresService(server: ServerSpec, db: string): Service {
  return {
    name: describe(server, db),
    probe: async () => {
      const client = await connect(server, db, "pg-migrate wait");
      await client.end().catch(() => undefined);
    },
    final: (err) =>
      err instanceof ConnectError && PG_FINAL_CODES.has(String((err.cause as { code?: unknown } | undefined)?.code)),
  };
}

export function natsService(url: string, auth: NatsAuth): Service {
  return {
    name: `NATS at ${withoutCredentials(url)}`,
    probe: async () => {
      const nc = await connectNats(url, "pg-migrate-wait", auth);
      await nc.close();
    },
    // Refused credentials or an untrusted certificate: an answer, not silence.
    final: (err) => err instanceof NatsConnectError && /refused our credentials|not signed by a CA/.test(err.message),
  };
}

/**
 * Tries every service once a second (all at once) until each has answered, for at most timeoutMs. Throws a
 * PreflightError naming those that never answered with their last error; a final error is thrown as it is.
 */
export async function waitForServices(services: Service[], timeoutMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const lastError = new Map<Service, string>();
  let pending = services;
  for (;;) {
    if (signal.aborted) throw new InterruptedError("interrupted while waiting for the servers");
    const left = Math.max(0, deadline - Date.now());
    const outcomes = await Promise.all(
      pending.map(async (s) => {
        try {
          // A probe stuck in its own connect timeout must not carry the wait past its deadline.
          await Promise.race([
            s.probe(),
            sleep(left + 100, undefined, { ref: false }).then(() => Promise.reject(new Error("no answer yet"))),
          ]);
          return undefined;
        } catch (err) {
          if (s.final?.(err)) throw err;
          // Connect errors already name their server; anything else gets the name in front.
          lastError.set(
            s,
            err instanceof ConnectError || err instanceof NatsConnectError
              ? errorMessage(err)
              : `${s.name}: ${errorMessage(err)}`,
          );
          return s;
        }
      }),
    );
    pending = outcomes.filter((s): s is Service => s !== undefined);
    if (pending.length === 0) return;
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    await sleep(Math.min(RETRY_MS, remaining), undefined, { signal }).catch(() => undefined);
  }
  const seconds = Math.round(timeoutMs / 1000);
  throw new PreflightError(
    `waited ${seconds}s (--wait), and ${pending.map((s) => s.name).join(", ")} never answered; last: ${pending.map((s) => lastError.get(s)).join("; ")}`,
  );
}
