// NATS connections that survive a broker restart and fail their first connect with a sentence a user can act on.
import { hostname } from "node:os";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { errorMessage } from "./errors.js";

/** NATS URLs as they may be stored, logged and shown: any user:password@ part removed. */
export function withoutCredentials(urls: string): string {
  return urls.split(",").map((u) => u.trim().replace(/\/\/[^@/]*@/, "//")).join(",");
}

export class NatsConnectError extends Error {
  override name = "NatsConnectError";
}

export async function connectNats(url: string, name: string): Promise<NatsConnection> {
  try {
    return await connect({
      servers: url.split(",").map((s) => s.trim()).filter(Boolean),
      name,
      // A long migration outlives a broker restart: keep trying rather than giving up on the run.
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      timeout: 10_000,
    });
  } catch (err) {
    const msg = errorMessage(err);
    const hint = /CONNECTION_REFUSED|ECONNREFUSED/i.test(msg) ? "connection refused (is nats-server running there with -js?)" : msg;
    throw new NatsConnectError(`cannot connect to NATS at ${withoutCredentials(url)}: ${hint}`, { cause: err });
  }
}

/** A name for this process in NATS and in worker ids: host and pid. */
export function processTag(prefix: string): string {
  return `${prefix}-${hostname().replace(/[^A-Za-z0-9_-]/g, "_")}-${process.pid}`;
}
