// What the steps of a run share (run.ts runs them): the configuration, the user's view, the signal that stops the
// run, and what each step found or opened for the ones after it. A step that opens something registers how to
// close it (defer); the run closes them all, newest first, however it ends.
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { jetstream } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type pg from "pg";
import { CONTRACT_VERSION, encode } from "../shared/contracts/messages.js";
import { subjects } from "../shared/contracts/jetstream.js";
import type { StepTiming } from "../shared/contracts/record.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import type { SharedKey } from "../shared/secrets.js";
import type { MigrateConfig } from "./config.js";
import type { EmbeddedNats, LocalWorkers } from "./embedded.js";
import type { TargetLock } from "./lock.js";
import type { Output } from "./output.js";
import type { Preflight } from "./preflight.js";
import type { RunState } from "./state.js";
import type { TargetSession } from "./target-session.js";

export const EXIT = { ok: 0, failed: 1, usage: 2, preflight: 3, interrupted: 130 } as const;

/**
 * What a run would leave behind if the process ended right now: the CLI prints it when a second Ctrl-C forces the
 * process out before the run could put the target back.
 */
export class LeftBehind {
  /** Set while the target is in fast-restore mode: the settings, and the command that reverts them. */
  fastRestore: { settings: string; revert: string } | undefined;
  runId: string | undefined;

  line(): string {
    const resume = this.runId ? `run the same command again to resume run ${this.runId}` : "run the same command again";
    if (!this.fastRestore) return `forced quit: the target's settings are as they were; ${resume}`;
    return `forced quit: the target is still in fast-restore mode (${this.fastRestore.settings}); ${this.fastRestore.revert} puts its settings back, and so does the next run (${resume})`;
  }
}

/** The broker a run publishes to: embedded (started by the run) or given. */
export interface Broker {
  url: string;
  nc: NatsConnection;
  jsm: JetStreamManager;
  runsKv: KV;
  workersKv: KV;
  embedded: EmbeddedNats | undefined;
  /** The key jobs are sealed with: embedded, the run's own; distributed, PGMIGRATE_SECRET's (or none). */
  key: SharedKey | undefined;
}

export interface RunContext {
  /** The configuration, with -j and -m fitted by the preflight once it ran. */
  cfg: MigrateConfig;
  out: Output;
  /** Aborted on the user's signal, and when the run loses the target (TargetSession). */
  signal: AbortSignal;
  stop(): void;
  left: LeftBehind;
  /** ~/.pg-migrate: records, logs, locks, the embedded broker's store. */
  home: string;
  /** A new session on the target's maintenance database (settings are put back through one of their own). */
  openTarget(): Promise<pg.Client>;
  /** The preflight log until the run has a log of its own, then the run's. */
  log: Logger;
  /** Filled by the steps, in order. */
  pf?: Preflight;
  lock?: TargetLock;
  session?: TargetSession;
  broker?: Broker;
  state?: RunState;
  /** --restart: the earlier run whose databases go once the workers are there. */
  abandoned?: RunState;
  workers?: LocalWorkers;
  /** This session's steps, as they end (copied into the record once there is one). */
  steps: Omit<StepTiming, "session">[];
  defer(close: () => Promise<void> | void): void;
}

/** The session that holds the target's lock, as steps after "lock" reach the target. */
export function targetOf(ctx: RunContext): TargetSession {
  if (!ctx.session) throw new Error("the target's session is not open yet");
  return ctx.session;
}

/** The coordinator's current target client (a new one after a reconnect). */
export const targetClient = (ctx: RunContext): pg.Client => targetOf(ctx).client;

export function stateOf(ctx: RunContext): RunState {
  if (!ctx.state) throw new Error("the run has no record yet");
  return ctx.state;
}

export function brokerOf(ctx: RunContext): Broker {
  if (!ctx.broker) throw new Error("the broker is not up yet");
  return ctx.broker;
}

export function preflightOf(ctx: RunContext): Preflight {
  if (!ctx.pf) throw new Error("the preflight has not run");
  return ctx.pf;
}

/** Publishes the run's own event (started, resumed, finished, failed, interrupted); a lost one is logged, not fatal. */
export async function emitRun(
  ctx: RunContext,
  status: "started" | "resumed" | "finished" | "failed" | "interrupted",
  js: JetStreamClient = jetstream(brokerOf(ctx).nc),
): Promise<void> {
  const state = stateOf(ctx);
  const dbs = state.record.databases;
  await js
    .publish(
      subjects.event(state.runId, "run", status),
      encode({
        v: CONTRACT_VERSION,
        type: "run",
        runId: state.runId,
        status,
        at: new Date().toISOString(),
        databases: dbs.length,
        verified: dbs.filter((x) => x.phase === "done").length,
        failed: dbs.filter((x) => x.phase === "failed").length,
      }),
    )
    .then(
      () => undefined,
      (err: unknown) => ctx.log.warn({ err: errorMessage(err) }, "run event not published"),
    );
}

/** The command that puts the target's settings back by hand, with this run's target flags. */
export function revertCommand(cfg: MigrateConfig): string {
  const t = cfg.target;
  const flags = [
    `--to-host ${t.host}`,
    `--to-port ${t.port}`,
    ...(t.user !== "postgres" ? [`--to-user ${t.user}`] : []),
    ...(cfg.targetDb !== "postgres" ? [`--to-db ${cfg.targetDb}`] : []),
  ];
  return `"pg-migrate revert-settings ${flags.join(" ")}"`;
}
