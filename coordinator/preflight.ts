// The preflight: one function reads everything a run depends on — both servers and the client tools, the source's
// databases, what the target already holds, the parallelism both servers' connections allow, an unfinished earlier
// run, a run that holds the target now, the dump volume and the broker — and returns it as one value with every
// refusal and warning it found. It changes nothing: not on either server, not under HOME, not on the broker.
// `plan` renders that value; a run refuses on it, or goes on with what it found.
import type { KV } from "@nats-io/kv";
import { Kvm } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type pg from "pg";
import { RUNS_BUCKET } from "../shared/contracts/jetstream.js";
import type { TargetRecord } from "../shared/contracts/record.js";
import { chooseCompression, type Compression } from "../shared/compression.js";
import { ConfigError, errorMessage, PreflightError } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { closeNats, connectNats } from "../shared/nats.js";
import { resolveTools, type Toolset } from "../shared/tools.js";
import {
  checkServers,
  extensionProblem,
  inspect,
  pairKey as pairKeyOf,
  probeVolume,
  sameServer,
  sessionTimeoutWarning,
  volumeVerdict,
  type ServerInfo,
  type VolumeProbe,
} from "./checks.js";
import type { MigrateConfig } from "./config.js";
import { existingDatabases, MAINTENANCE_DB, subscriptionsOf } from "./discovery.js";
import { findNatsServer } from "./embedded.js";
import { readTargetRecord } from "./fast-restore.js";
import { heldBy, heldInKv, targetLockKey } from "./lock.js";
import { chooseVia, type DbVia } from "./via.js";
import { followChecks } from "./follow.js";
import { connectionsNeeded, FREE_CONNECTIONS_SQL, fitConnections, type Parallelism } from "./parallelism.js";
import { checkSourceDatabases } from "./source-check.js";
import { RunState } from "./state.js";
import { plural } from "./output.js";
import { maintenanceClash, survey, type Survey } from "./survey.js";

export interface Preflight {
  tools: Toolset;
  source: ServerInfo;
  target: ServerInfo;
  /** The coordinator's sessions on both servers: a run keeps them (the target's holds its lock). */
  src: pg.Client;
  tgt: pg.Client;
  pairKey: string;
  lockKey: string;
  survey: Survey;
  /** The databases the target has now. */
  onTarget: Set<string>;
  /** The unfinished run between these servers (this home's record, else the broker's), which a run resumes. */
  previous: RunState | undefined;
  /** The databases the target has that `previous` created: not conflicts. */
  ours: Set<string>;
  /** -j and -m fitted to both servers' free connections, with what each server has and what the run needs. */
  parallelism: Parallelism;
  connections: { source: number; target: number; needed: number; formula: string };
  /** sourceBytes: the databases that go through the volume (a streamed one needs no room for its data). */
  volume: VolumeProbe & { sourceBytes: number };
  /** Each selected database's path (--via; auto decides per database). */
  vias: Map<string, DbVia>;
  /** What --compress comes to on this volume (undefined when the volume cannot be written). */
  compression: Compression | undefined;
  /** Embedded: the nats-server to start; given: the connection the preflight opened, and the runs bucket if any. */
  broker:
    { embedded: true; bin: string } | { embedded: false; url: string; nc: NatsConnection; runsKv: KV | undefined };
  /** Fast-restore settings the target still carries from a run that never put them back (a run reverts them first). */
  carried: TargetRecord | undefined;
  /** Where the preflight logged (the run's log until it has its own). */
  log: Logger;
  /** The source's subscriptions: they arrive disabled, which the end of the run says. */
  subscriptions: { name: string; db: string }[];
  /** The source's roles (not the pg_ ones). */
  sourceRoles: string[];
  /** What a run does about an unfinished earlier one, in the words plan and run both print. */
  previousLine: string | undefined;
  /** Lines both print: tablespaces, settings an earlier run left. */
  notes: string[];
  warnings: string[];
  /** Why a run would not start; empty when it would. */
  refusals: string[];
  /** Ends both sessions and the broker connection (plan; a run that refuses). */
  close(): Promise<void>;
}

/** The unfinished run between these servers: this home's record, else the one in the given broker's runs KV. */
export async function findPrevious(
  home: string,
  pairKey: string,
  log: Logger,
  runsKv: KV | undefined,
): Promise<RunState | undefined> {
  return (
    (await RunState.findUnfinished(home, pairKey, log)) ??
    (runsKv ? await RunState.fromKv(runsKv, home, pairKey, log) : undefined)
  );
}

/** The one line a refused run ends with, and plan prints after "a run would be refused: ". */
export const refusalLine = (refusals: string[]): string => `${refusals.join("; ")}; nothing was changed`;

/**
 * What --restart drops of the earlier run: the databases it created that are still on the target (one someone
 * dropped since is no question), named as "the N database(s) (…)"; undefined when there are none.
 */
function droppedByRestart(previous: RunState, onTarget: Set<string>): string | undefined {
  const created = previous.record.databases.filter((x) => x.created && onTarget.has(x.name)).map((x) => x.name);
  if (!created.length) return undefined;
  return `the ${plural(created.length, "database")} run ${previous.runId} created on the target (${created.map((n) => JSON.stringify(n)).join(", ")})`;
}

/** What --restart would drop of the earlier run's databases, as a question; undefined when nothing of it is there. */
export function restartQuestion(previous: RunState, onTarget: Set<string>): string | undefined {
  const dropped = droppedByRestart(previous, onTarget);
  return dropped && `--restart drops ${dropped}`;
}

/** The preflight's words for an unfinished earlier run: resumed, or with --restart abandoned. */
function previousLineFor(previous: RunState, restart: boolean, onTarget: Set<string>): string {
  if (!restart) return `resuming run ${previous.runId} (started ${previous.record.startedAt}); --restart starts over`;
  const dropped = droppedByRestart(previous, onTarget);
  return `--restart: run ${previous.runId} (started ${previous.record.startedAt}) is abandoned${dropped ? `, dropping ${dropped}` : ""}`;
}

/** `logFor` gives the log for this pair of servers (the run's preflight log; plan's is silent). */
export async function preflight(
  cfg: MigrateConfig,
  home: string,
  logFor: (pairKey: string) => Logger,
): Promise<Preflight> {
  const tools = await resolveTools(cfg.pgBin);
  try {
    chooseCompression(cfg.compress, tools.major, undefined); // lz4 or zstd with a pg_dump older than 16: bad input
  } catch (err) {
    throw new ConfigError(errorMessage(err), "--compress");
  }
  const bin = cfg.natsUrl ? undefined : await findNatsServer();
  const src = await inspect(cfg.source, cfg.sourceDb);
  const opened: { clients: pg.Client[]; nc: NatsConnection | undefined } = { clients: [src.client], nc: undefined };
  const close = async () => {
    await closeNats(opened.nc);
    await Promise.all(opened.clients.map((c) => c.end().catch(() => undefined)));
  };
  try {
    const tgt = await inspect(cfg.target, cfg.targetDb);
    opened.clients.push(tgt.client);
    const base = {
      tools,
      source: src.info,
      target: tgt.info,
      src: src.client,
      tgt: tgt.client,
      pairKey: pairKeyOf(src.info, tgt.info),
      lockKey: targetLockKey(tgt.info.systemId, cfg.target.host, cfg.target.port),
      close,
    };
    const log = logFor(base.pairKey);
    const same = sameServer(src.info, tgt.info);
    if (same) throw new PreflightError(same); // every other check would only repeat it
    const { refusals, warnings } = checkServers(src.info, tgt.info, tools, {
      globals: cfg.migrateGlobals,
      rolePasswords: cfg.rolePasswords,
    });
    const notes: string[] = [];
    for (const [c, role, user] of [
      [src.client, "source", cfg.source.user],
      [tgt.client, "target", cfg.target.user],
    ] as const) {
      const w = await sessionTimeoutWarning(c, role, user);
      if (w) warnings.push(w);
    }

    // -j and -m against the connections both servers have left: a default shrinks, a given value that cannot fit is refused.
    const [srcFree, tgtFree] = await Promise.all(
      [src.client, tgt.client].map(async (c) => (await c.query<{ free: number }>(FREE_CONNECTIONS_SQL)).rows[0]!.free),
    );
    const free = { source: srcFree!, target: tgtFree! };
    let parallelism: Parallelism = { jobs: cfg.jobs, maxParallel: cfg.maxParallel };
    try {
      const fitted = fitConnections(parallelism, free, cfg.parallelismGiven);
      if (fitted.note) warnings.push(fitted.note);
      parallelism = { jobs: fitted.jobs, maxParallel: fitted.maxParallel };
    } catch (err) {
      if (!(err instanceof PreflightError)) throw err;
      refusals.push(err.message);
    }
    const connections = {
      ...free,
      needed: connectionsNeeded(parallelism),
      formula: `max-parallel × (jobs + 2) = ${parallelism.maxParallel} × (${parallelism.jobs} + 2)`,
    };

    // A live run on this target: this home's lock file, the target's advisory lock (and the broker's, below).
    const target = `${cfg.target.host}:${cfg.target.port}`;
    const held = await heldBy(home, base.lockKey, tgt.client, target);
    if (held) refusals.push(held);

    // The broker: embedded needs its nats-server (found above); a given one must answer with JetStream on.
    let broker: Preflight["broker"];
    if (bin) broker = { embedded: true, bin };
    else {
      opened.nc = await connectNats(cfg.natsUrl!, "pg-migrate-coordinator", cfg.natsAuth);
      await jetstreamManager(opened.nc); // refuses a server without JetStream
      const runsKv = await new Kvm(opened.nc)
        .open(RUNS_BUCKET)
        .then(async (kv) => (await kv.status(), kv))
        .catch(() => undefined); // no bucket yet: no run has used this broker
      broker = { embedded: false, url: cfg.natsUrl!, nc: opened.nc, runsKv };
      const heldThere = runsKv && !held ? await heldInKv(runsKv, base.lockKey) : undefined;
      if (heldThere) refusals.push(heldThere);
    }

    // Discovery, and what the target already holds.
    const surveyed = await survey(cfg, src.client, src.info.versionNum, tgt.client, tgt.info.versionNum);
    for (const closed of surveyed.closed)
      warnings.push(`source database ${JSON.stringify(closed.name)} ${closed.reason}`);
    notes.push(...surveyed.tablespaces.lines);
    for (const [db, names] of surveyed.missingExtensions)
      warnings.push(
        `${JSON.stringify(db)} ${extensionProblem(names)}; that database fails before anything is created for it, the others go on`,
      );
    const onTarget = await existingDatabases(tgt.client);
    const previous = await findPrevious(home, base.pairKey, log, broker.embedded ? undefined : broker.runsKv);
    const ours = previous?.createdDatabases() ?? new Set<string>();
    const conflicts = surveyed.selected
      .filter((d) => d.name !== MAINTENANCE_DB && onTarget.has(d.name) && !ours.has(d.name))
      .map((d) => d.name);
    if (conflicts.length)
      refusals.push(
        `the target already has database(s) ${conflicts.map((n) => JSON.stringify(n)).join(", ")} that this run did not create: drop or rename them on the target first`,
      );
    // --restart drops what the earlier run created: confirmed by --yes, or asked on a terminal by the run.
    const question = previous && cfg.restart && !cfg.yes ? restartQuestion(previous, onTarget) : undefined;
    if (question && !process.stdin.isTTY) refusals.push(`${question}: add --yes to confirm`);
    const intoMaintenance = previous?.record.databases.find((d) => d.name === MAINTENANCE_DB);
    // Unless an earlier session of this run already restored into it (its retry then refuses by itself).
    if (!intoMaintenance || intoMaintenance.phase === "planned") {
      const clash = await maintenanceClash(cfg, surveyed);
      if (clash) refusals.push(clash);
    }
    const fr = previous?.record.fastRestore;
    if (previous && fr?.applied && !fr.reverted)
      notes.push(`run ${previous.runId} left the target in fast-restore mode: a run puts its settings back first`);
    const carried = await readTargetRecord(tgt.client);
    if (carried)
      notes.push(
        `the target still carries the fast-restore settings of run ${carried.runId} (since ${carried.at}), never put back: a run reverts them first, to ${carried.original.map((o) => `${o.name}=${o.setting}`).join(", ")} (or pg-migrate revert-settings)`,
      );

    // What each database asks of the source: lock room for its dump, and the right to read every table.
    const needs = await checkSourceDatabases(
      cfg.source,
      src.client,
      surveyed.selected.filter((d) => !surveyed.missingExtensions.has(d.name)).map((d) => d.name),
      src.info.superuser,
      parallelism.jobs,
    );
    refusals.push(...needs.refusals);
    warnings.push(...needs.warnings);

    if (cfg.follow) {
      const follow = await followChecks(
        cfg,
        src.client,
        tgt.client,
        src.info,
        tgt.info,
        surveyed.selected.map((d) => d.name),
      );
      refusals.push(...follow.refusals);
      warnings.push(...follow.warnings);
      notes.push(...follow.notes);
    }
    if (previous?.record.status === "following")
      refusals.push(
        `run ${previous.runId} is following the source (its subscriptions keep the target current): cut it over with "pg-migrate cutover", or drop what it made with "pg-migrate abort", both with the same server flags`,
      );
    else if (
      previous &&
      (previous.record.follow || previous.record.databases.some((d) => d.follow)) &&
      !cfg.follow &&
      !cfg.restart
    )
      refusals.push(
        `run ${previous.runId} is an online migration (--follow): resume it with --follow, or end it with "pg-migrate abort"`,
      );

    const vias = chooseVia(surveyed.selected, {
      via: cfg.via,
      maxParallel: parallelism.maxParallel,
      sourceVersionNum: src.info.versionNum,
    });
    // Streamed, the dump root holds only each worker's scratch copy of a schema archive: no room for the data is asked.
    const sourceBytes = surveyed.selected.reduce((s, d) => s + (vias.get(d.name) === "stream" ? 0 : d.sizeBytes), 0);
    const probe = await probeVolume(cfg.dumpRoot);
    const volume = volumeVerdict(cfg.dumpRoot, probe, sourceBytes);
    refusals.push(...volume.refusals);
    warnings.push(...volume.warnings);

    const sourceRoles = (
      await src.client.query<{ rolname: string }>("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")
    ).rows.map((r) => r.rolname);
    return {
      ...base,
      survey: surveyed,
      onTarget,
      previous,
      ours,
      parallelism,
      connections,
      volume: { ...probe, sourceBytes },
      vias,
      compression: probe.notWritable ? undefined : chooseCompression(cfg.compress, tools.major, probe.networkFs),
      broker,
      carried,
      sourceRoles,
      log,
      subscriptions: await subscriptionsOf(src.client),
      previousLine: previous ? previousLineFor(previous, cfg.restart, onTarget) : undefined,
      notes,
      warnings,
      refusals,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
