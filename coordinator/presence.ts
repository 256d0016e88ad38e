// Workers joining and leaving, as events of the run. Presence entries expire by the bucket's TTL when a worker
// dies, and an expiry leaves no marker a watcher could see (NATS 2.9), so the keys are compared on a timer.
import type { JetStreamClient } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { subjects } from "../shared/contracts/jetstream.js";
import { CONTRACT_VERSION, decodePresence, encode, type Presence } from "../shared/contracts/messages.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";

const EVERY_MS = 2_000;

export interface PresenceWatch {
  stop(): void;
}

/** The workers in the presence bucket now, by id, with what their entries say (nothing for another version's). */
export async function readPresence(kv: KV): Promise<Map<string, Partial<Omit<Presence, "id">>>> {
  const present = new Map<string, Partial<Omit<Presence, "id">>>();
  for await (const key of await kv.keys()) {
    const entry = await kv.get(key).catch(() => null);
    if (!entry || entry.operation !== "PUT") continue;
    try {
      const { id: _id, ...p } = decodePresence(entry.value, key);
      present.set(key, p);
    } catch {
      present.set(key, {}); // an entry of another version: the worker is there, its details unknown
    }
  }
  return present;
}

export function watchPresence(kv: KV, js: JetStreamClient, runId: string, log: Logger): PresenceWatch {
  const known = new Map<string, { host?: string; pid?: number }>();
  let busy = false;
  const look = async () => {
    if (busy) return;
    busy = true;
    try {
      const now = new Map<string, { host?: string; pid?: number }>();
      for (const [id, p] of await readPresence(kv))
        now.set(id, {
          ...(p.host !== undefined ? { host: p.host } : {}),
          ...(p.pid !== undefined ? { pid: p.pid } : {}),
        });
      const changes: [string, "joined" | "left", { host?: string; pid?: number }][] = [];
      for (const [id, info] of now) if (!known.has(id)) changes.push([id, "joined", info]);
      for (const [id, info] of known) if (!now.has(id)) changes.push([id, "left", info]);
      known.clear();
      for (const [id, info] of now) known.set(id, info);
      for (const [worker, status, info] of changes) {
        await js
          .publish(
            subjects.event(runId, "worker", status),
            encode({
              v: CONTRACT_VERSION,
              type: "worker",
              runId,
              worker,
              status,
              ...info,
              at: new Date().toISOString(),
            }),
          )
          .catch((err: unknown) => log.warn({ err: errorMessage(err) }, "worker event not published"));
      }
    } catch (err) {
      log.debug({ err: errorMessage(err) }, "presence not read");
    } finally {
      busy = false;
    }
  };
  void look();
  const timer = setInterval(() => void look(), EVERY_MS);
  return { stop: () => clearInterval(timer) };
}
