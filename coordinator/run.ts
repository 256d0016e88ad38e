// One migration, start to end: preflight → discovery → fast-restore → globals → databases → jobs → report →
// cleanup. Nothing changes on the target before every check has passed; the target's settings are put back
// on every exit path after they were changed.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline/promises";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type pg from "pg";
import {
  ensureJetStream,
  JOBS_STREAM,
  kvKeys,
  openOrCreateKv,
  RUNS_BUCKET,
  WORKER_TTL_MS,
  WORKERS_BUCKET,
} from "../shared/contracts/jetstream.js";
import { CONTRACT_VERSION, encode } from "../shared/contracts/messages.js";
import { subjects } from "../shared/contracts/jetstream.js";
import { dbKey } from "../shared/dbkey.js";
import { ident } from "../shared/pg/quote.js";
import { ConfigError, errorMessage, InterruptedError, PreflightError } from "../shared/errors.js";
import { createLogger, type Logger } from "../shared/log.js";
import { closeNats, connectNats, withoutCredentials } from "../shared/nats.js";
import { appDir } from "../shared/paths.js";
import { connect, describe } from "../shared/pg/connect.js";
import { createDatabaseSql, dropDatabaseSql } from "../shared/pg/create.js";
import { generateSecret, keyFrom, sharedKeyFromEnv, type SharedKey } from "../shared/secrets.js";
import { resolveTools } from "../shared/tools.js";
import { chooseCompression } from "../shared/compression.js";
import { publicOptions, type MigrateConfig } from "./config.js";
import { existingDatabases, MAINTENANCE_DB, subscriptionsOf } from "./discovery.js";
import { LocalWorkers, startEmbeddedNats, type EmbeddedNats } from "./embedded.js";
import {
  applySettings,
  needsCheckpoint,
  readTargetRecord,
  revertSettings,
  revertWhenBack,
  saveSettings,
  settingsFor,
} from "./fast-restore.js";
import { migrateGlobals } from "./globals.js";
import { joinRoles, leaveRunRoles, rolesLeft, rolesToJoin } from "./memberships.js";
import { holdOnTarget, TargetLock, targetLockKey } from "./lock.js";
import { sessionLost, TargetSession } from "./target-session.js";
import { Output, plural } from "./output.js";
import { watchPresence, type PresenceWatch } from "./presence.js";
import { noteLine } from "./upgrade-notes.js";
import { knownSettings } from "../shared/pg/settings.js";
import {
  checkDumpVolume,
  checkServers,
  extensionProblem,
  inspect,
  pairKey,
  sessionTimeoutWarning,
} from "./preflight.js";
import { summaryTable, writeReport } from "./report.js";
import { Scheduler, type TargetDatabases } from "./scheduler.js";
import { checkSourceDatabases } from "./source-check.js";
import { maintenanceClash, survey } from "./survey.js";
import { FREE_CONNECTIONS_SQL, fitConnections } from "./parallelism.js";
import { newRunId, RunState, sameTarget, type DbState, type RunRecord } from "./state.js";
import { natsService, postgresService, waitForServices } from "./wait.js";

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

export async function migrate(
  cfg: MigrateConfig,
  out: Output,
  outer: AbortSignal,
  left = new LeftBehind(),
): Promise<number> {
  // The run stops on the user's signal, and when it loses the target (see TargetSession).
  const stopping = new AbortController();
  if (outer.aborted) stopping.abort();
  else outer.addEventListener("abort", () => stopping.abort(), { once: true });
  const signal = stopping.signal;
  const home = appDir();
  const tools = await resolveTools(cfg.pgBin);
  try {
    chooseCompression(cfg.compress, tools.major, undefined); // lz4 or zstd with a pg_dump older than 16: refused now
  } catch (err) {
    throw new ConfigError(errorMessage(err), "--compress");
  }
  const opened: pg.Client[] = [];
  let lock: TargetLock | undefined;
  let session: TargetSession | undefined;
  try {
    if (cfg.waitMs > 0) {
      const services = [postgresService(cfg.source, cfg.sourceDb), postgresService(cfg.target, cfg.targetDb)];
      if (cfg.natsUrl) services.push(natsService(cfg.natsUrl, cfg.natsAuth));
      const started = Date.now();
      out.line(
        `waiting up to ${Math.round(cfg.waitMs / 1000)}s for ${services.map((s) => s.name).join(", ")} (--wait)`,
      );
      await waitForServices(services, cfg.waitMs, signal);
      out.line(`all answered after ${Math.round((Date.now() - started) / 1000)}s`);
    }
    out.line(`client tools: ${tools.version} (from ${tools.from})`);
    out.line(`checking the ${describe(cfg.source, cfg.sourceDb)} and the ${describe(cfg.target, cfg.targetDb)}`);
    const src = await inspect(cfg.source, cfg.sourceDb);
    opened.push(src.client);
    const tgt = await inspect(cfg.target, cfg.targetDb);
    opened.push(tgt.client);
    for (const w of checkServers(src.info, tgt.info, tools, {
      globals: cfg.migrateGlobals,
      rolePasswords: cfg.rolePasswords,
    }))
      out.warn(w);
    for (const [c, role, user] of [
      [src.client, "source", cfg.source.user],
      [tgt.client, "target", cfg.target.user],
    ] as const) {
      const w = await sessionTimeoutWarning(c, role, user);
      if (w) out.warn(w);
    }
    // -j and -m against the connections both servers have left (a default shrinks; a given value that cannot fit is refused).
    const [srcFree, tgtFree] = await Promise.all(
      [src.client, tgt.client].map(async (c) => (await c.query<{ free: number }>(FREE_CONNECTIONS_SQL)).rows[0]!.free),
    );
    const fitted = fitConnections(
      { jobs: cfg.jobs, maxParallel: cfg.maxParallel },
      { source: srcFree!, target: tgtFree! },
      cfg.parallelismGiven,
    );
    if (fitted.note) out.warn(fitted.note);
    cfg = Object.freeze({ ...cfg, jobs: fitted.jobs, maxParallel: fitted.maxParallel });
    const pk = pairKey(src.info, tgt.info);
    const bootLog = createLogger({
      level: "info",
      file: join(home, "logs", `preflight-${pk}.log`),
      stderrLevel: cfg.logLevel,
    });
    const openTarget = () => connect(cfg.target, cfg.targetDb, "pg-migrate coordinator");

    // One run per target, decided before anything starts (the embedded broker's store is per pair of servers).
    const lockKey = targetLockKey(tgt.info.systemId, cfg.target.host, cfg.target.port);
    lock = await TargetLock.acquire(home, lockKey, `${cfg.target.host}:${cfg.target.port}`, bootLog);
    await holdOnTarget(tgt.client, `${cfg.target.host}:${cfg.target.port}`);
    // From here on the target is reached through the session that holds its lock, opened again if the server drops it.
    session = new TargetSession(
      tgt.client,
      openTarget,
      `${cfg.target.host}:${cfg.target.port}`,
      bootLog,
      (why) => {
        out.warn(why);
        stopping.abort();
      },
      (line) => out.warn(line),
    );
    const target = session;

    // Discovery, and what is decided and said before anything is created: the maintenance database (taken when it
    // holds user objects, into the target's own), the tablespaces, and the databases whose extensions the target lacks.
    const surveyed = await survey(cfg, src.client, src.info.versionNum, target.client, tgt.info.versionNum);
    const { selected, skipped, tablespaces, missingExtensions } = surveyed;
    // Said before anything changes on the target; kept in the run record for the report.
    for (const n of surveyed.upgradeNotes)
      out.warn(`upgrade note (PostgreSQL ${src.info.major} → ${tgt.info.major}): ${noteLine(n)}`);
    for (const closed of surveyed.closed) out.warn(`source database ${JSON.stringify(closed.name)} ${closed.reason}`);
    out.line(
      `found ${plural(selected.length, "database")} to migrate on the source${skipped.length ? ` (${skipped.length} left out: ${skipped.map((s) => JSON.stringify(s.name)).join(", ")})` : ""}`,
    );
    for (const line of tablespaces.lines) out.line(line);
    // An extension the target cannot create fails that database now, before anything is created for it.
    for (const [db, names] of missingExtensions)
      out.warn(`${JSON.stringify(db)} ${extensionProblem(names)}; that database fails now, the others go on`);
    // What each database asks of the source: lock room for its dump, and the right to read every table.
    const needs = await checkSourceDatabases(
      cfg.source,
      src.client,
      selected.filter((d) => !missingExtensions.has(d.name)).map((d) => d.name),
      src.info.superuser,
      cfg.jobs,
    );
    for (const w of needs.warnings) out.warn(w);
    if (needs.refusals.length) throw new PreflightError(`${needs.refusals.join("; ")}; nothing was changed`);
    const volume = await checkDumpVolume(
      cfg.dumpRoot,
      selected.reduce((s, d) => s + d.sizeBytes, 0),
    );
    for (const w of volume.warnings) out.warn(w);

    // NATS, embedded or given.
    let embedded: EmbeddedNats | undefined;
    let workers: LocalWorkers | undefined;
    let nc: NatsConnection | undefined;
    let key: SharedKey | undefined;
    let secret: string | undefined;
    let presence: PresenceWatch | undefined;
    if (!cfg.natsUrl) {
      embedded = await startEmbeddedNats(
        join(home, "nats", pk),
        join(home, "logs", `nats-${pk}.log`),
        bootLog,
        (line) => out.warn(line),
      );
      if (signal.aborted) throw new InterruptedError("interrupted");
    } else {
      key = sharedKeyFromEnv();
      if (!key)
        out.warn(
          "no PGMIGRATE_SECRET: jobs carry no passwords, so workers need their own (PGMIGRATE_FROM_PASS / PGMIGRATE_TO_PASS or ~/.pgpass)",
        );
    }
    try {
      const natsUrl = cfg.natsUrl ?? embedded!.url;
      nc = await connectNats(natsUrl, "pg-migrate-coordinator", cfg.natsUrl ? cfg.natsAuth : {});
      const jsm = await jetstreamManager(nc);
      await ensureJetStream(jsm, { replicas: cfg.natsReplicas, ackWaitMs: cfg.ackWaitMs, maxDeliver: cfg.maxDeliver });
      const kvm = new Kvm(nc);
      const runsKv = await openOrCreateKv(kvm, RUNS_BUCKET, { history: 1, replicas: cfg.natsReplicas });
      const workersKv = await openOrCreateKv(kvm, WORKERS_BUCKET, {
        ttl: WORKER_TTL_MS,
        history: 1,
        replicas: cfg.natsReplicas,
      });
      await lock.holdInKv(runsKv, lockKey);

      // An unfinished run between these servers: this home's record, else the one in the KV.
      let previous =
        (await RunState.findUnfinished(home, pk, bootLog)) ?? (await RunState.fromKv(runsKv, home, pk, bootLog));
      let abandoned: RunState | undefined;

      // The target must not already hold any database we would create, unless that run created it.
      const onTarget = await existingDatabases(target.client);
      const ours = previous?.createdDatabases() ?? new Set<string>();
      const conflicts = selected
        .filter((d) => d.name !== MAINTENANCE_DB && onTarget.has(d.name) && !ours.has(d.name))
        .map((d) => JSON.stringify(d.name));
      if (conflicts.length) {
        throw new PreflightError(
          `the target already has database(s) ${conflicts.join(", ")} that this run did not create; nothing was changed: drop or rename them on the target first`,
        );
      }
      const intoMaintenance = previous?.record.databases.find((d) => d.name === MAINTENANCE_DB);
      // Unless an earlier session of this run already restored into it (its retry then refuses by itself).
      if (!intoMaintenance || intoMaintenance.phase === "planned") {
        const clash = await maintenanceClash(cfg, surveyed);
        if (clash) throw new PreflightError(clash);
      }

      if (previous) {
        const fr = previous.record.fastRestore;
        if (fr.applied && !fr.reverted) {
          // The previous coordinator died before putting the target's settings back: that comes first.
          left.fastRestore = { settings: "left by an earlier run", revert: revertCommand(cfg) };
          const differing = await revertSettings(openTarget, fr.original);
          if (differing.length)
            throw new PreflightError(
              `could not revert the target's settings left by run ${previous.runId}: ${differing.join(", ")}`,
            );
          fr.reverted = true;
          await previous.save();
          left.fastRestore = undefined;
          out.line(`reverted the fast-restore settings run ${previous.runId} had left on the target`);
        }
      }
      // What the target itself carries: fast-restore settings a run from any home or host put there and never took
      // back (its own record may be on another machine, or gone). Put back first, with the originals it recorded,
      // so that this run never takes fast values for the target's own.
      const carried = await readTargetRecord(target.client);
      if (carried) {
        left.fastRestore = { settings: `left by run ${carried.runId}`, revert: revertCommand(cfg) };
        const differing = await revertSettings(openTarget, carried.original);
        if (differing.length)
          throw new PreflightError(
            `could not revert the fast-restore settings run ${carried.runId} recorded on the target: ${differing.join(", ")}`,
          );
        left.fastRestore = undefined;
        out.line(
          `the target carried fast-restore settings of run ${carried.runId} (since ${carried.at}) that were never put back: reverted them to ${carried.original.map((o) => `${o.name}=${o.setting}`).join(", ")}`,
        );
        for (const other of [previous, ...(await RunState.all(home, bootLog))]) {
          if (
            other?.runId === carried.runId &&
            other.record.fastRestore.applied &&
            !other.record.fastRestore.reverted
          ) {
            other.record.fastRestore.reverted = true;
            await other.save();
          }
        }
      }
      if (previous) {
        // With --restart, its roles are left after its databases are dropped: dropping them may need the membership.
        if (!cfg.restart) await leaveRunRoles(previous, openTarget, out);
      }
      // Roles an ended run could not leave (the target was gone at its end, say): left now.
      for (const other of await RunState.all(home, bootLog)) {
        if (
          other.runId !== previous?.runId &&
          rolesLeft(other.record) &&
          sameTarget(other.record, tgt.info.systemId, cfg.target.host, cfg.target.port)
        ) {
          await leaveRunRoles(other, openTarget, out);
        }
      }
      if (previous) {
        if (cfg.restart) {
          // Asked now, before anything changes; done once workers are known to be there.
          await confirmRestart(previous, cfg, onTarget);
          abandoned = previous;
          previous = undefined;
        } else out.line(`resuming run ${previous.runId} (started ${previous.record.startedAt}); --restart starts over`);
      }
      let state = previous;

      const now = new Date().toISOString();
      if (state) {
        state.record.status = "running";
        state.record.resumedAt.push(now);
        for (const d of state.record.databases) {
          // A database that failed before gets another chance; its restore recreates it from scratch.
          if (d.phase === "failed") {
            d.phase = "planned";
            d.error = undefined;
            d.stderrTail = undefined;
          }
        }
        const known = new Set(state.record.databases.map((d) => d.name));
        for (const d of selected) if (!known.has(d.name)) state.record.databases.push(newDbState(d));
        // The selection of this command, not the first one's: a database it leaves out (--exclude-db, say), or that is
        // gone from the source, leaves the run, named; one that was verified stays as it is.
        const wanted = new Set(selected.map((d) => d.name));
        const why = new Map([...skipped, ...surveyed.closed].map((x) => [x.name, x.reason]));
        for (const d of state.record.databases.filter((x) => x.phase !== "done" && !wanted.has(x.name))) {
          const reason = `${why.get(d.name) ?? "no longer on the source"}, on resume: it left the run before it was verified`;
          const partial = d.created
            ? `; what this run restored of it so far stays on the target (drop it there, or --restart)`
            : "";
          state.record.databases = state.record.databases.filter((x) => x !== d);
          state.record.skipped = [
            ...state.record.skipped.filter((x) => x.name !== d.name),
            { name: d.name, reason: reason + partial },
          ];
          out.warn(`${JSON.stringify(d.name)} ${reason}${partial}`);
        }
      } else {
        state = await RunState.create(
          home,
          {
            v: 1,
            runId: newRunId(),
            pairKey: pk,
            status: "running",
            startedAt: now,
            updatedAt: now,
            resumedAt: [],
            source: {
              host: cfg.source.host,
              port: cfg.source.port,
              user: cfg.source.user,
              db: cfg.sourceDb,
              systemId: src.info.systemId,
              version: src.info.version,
            },
            target: {
              host: cfg.target.host,
              port: cfg.target.port,
              user: cfg.target.user,
              db: cfg.targetDb,
              systemId: tgt.info.systemId,
              version: tgt.info.version,
            },
            options: publicOptions(cfg),
            fastRestore: { mode: cfg.fastRestore, applied: false, reverted: false, original: [] },
            globals: { done: false, applied: 0, removed: [], alreadyExisted: [], failed: [] },
            skipped,
            databases: selected.map(newDbState),
          },
          bootLog,
        );
      }
      if (embedded) {
        // The run's own key, kept beside its local record: jobs adopted on resume were sealed with it.
        secret = await state.embeddedSecret(generateSecret);
        key = keyFrom(secret);
      }
      for (const d of state.record.databases) {
        const missing = missingExtensions.get(d.name);
        if (missing && d.phase === "planned" && !d.created) {
          d.phase = "failed";
          d.error = `${extensionProblem(missing)}: install ${missing.length === 1 ? "it" : "them"} on the target host and run the same command again`;
        }
      }
      state.record.upgradeNotes = surveyed.upgradeNotes;
      left.runId = state.runId;
      state.record.broker = withoutCredentials(natsUrl);
      state.attachKv(runsKv);
      await lock.setRun(state.runId);
      await target.name(state.runId);
      await runsKv.put(kvKeys.pair(pk), state.runId);
      await state.save();
      const log = createLogger({
        level: "info",
        file: join(home, "logs", `${state.runId}.log`),
        base: { runId: state.runId },
        stderrLevel: cfg.logLevel,
      });
      out.line(`run ${state.runId}: logs in ${join(home, "logs", `${state.runId}.log`)}`);

      try {
        if (embedded) {
          workers = new LocalWorkers(
            {
              natsUrl,
              dumpRoot: cfg.dumpRoot,
              secret: secret!,
              logDir: join(home, "logs", state.runId),
              retryDelayS: Math.max(1, Math.round(cfg.retryDelayMs / 1000)),
              pgBin: cfg.pgBin,
            },
            log,
            signal,
          );
          await workers.start(cfg.workers);
        }
        // Embedded: all of our own workers (they start in well under a second); distributed: whoever is there.
        const present = await waitForWorkers(workersKv, embedded ? cfg.workers : 1, cfg.workerWaitMs, signal);
        if (present === 0) {
          throw new PreflightError(
            `no pg-migrate worker joined within ${Math.round(cfg.workerWaitMs / 1000)}s: start workers with "pg-migrate worker --nats-url ${withoutCredentials(natsUrl)} --dump-root <shared dump root>"`,
          );
        }
        out.line(embedded ? `${plural(present, "local worker")} ready` : `${plural(present, "worker")} present`);
        if (abandoned) {
          await abandon(abandoned, cfg, { tgtClient: target.client, jsm, out, targetMajor: tgt.info.major });
          await leaveRunRoles(abandoned, openTarget, out);
        }
      } catch (err) {
        // The record must not say "running" for a run that never got to its jobs (status and watch read it).
        state.record.status = signal.aborted || err instanceof InterruptedError ? "interrupted" : "failed";
        await state.save().catch(() => undefined);
        throw err;
      }

      presence = watchPresence(workersKv, jetstream(nc), state.runId, log);
      const sourceRoles = (
        await src.client.query<{ rolname: string }>("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")
      ).rows.map((r) => r.rolname);
      const inRun = new Set(state.record.databases.map((d) => d.name));
      const subscriptions = (await subscriptionsOf(src.client)).filter((s) => inRun.has(s.db));
      const stopWorkers = async () => {
        await workers?.stop();
      };
      return await execute(cfg, state, {
        get tgtClient() {
          return target.client;
        },
        session: target,
        tools,
        openTarget,
        nc,
        key,
        log,
        out,
        signal,
        superuser: tgt.info.superuser,
        sourceRoles,
        targetVersionNum: tgt.info.versionNum,
        subscriptions,
        tablespaceRelocations: tablespaces.relocate,
        stopWorkers,
        left,
      });
    } finally {
      presence?.stop();
      await workers?.stop();
      await lock.release();
      await closeNats(nc);
      await embedded?.stop();
    }
  } finally {
    out.stop();
    await lock?.release();
    await session?.close();
    await Promise.all(opened.map((c) => c.end().catch(() => undefined)));
  }
}

/** --restart drops what the earlier run created: the user says yes (or --yes) before anything changes. */
async function confirmRestart(previous: RunState, cfg: MigrateConfig, onTarget: Set<string>): Promise<void> {
  // Only what is there to drop: a database the old run created and someone dropped since is no question.
  const created = previous.record.databases.filter((x) => x.created && onTarget.has(x.name)).map((x) => x.name);
  if (!created.length || cfg.yes) return;
  const question = `--restart drops the ${plural(created.length, "database")} run ${previous.runId} created on the target (${created.map((n) => JSON.stringify(n)).join(", ")})`;
  if (!process.stdin.isTTY) throw new ConfigError(`${question}: add --yes to confirm`, "--yes");
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  const answer = await rl.question(`pg-migrate: ${question}. Continue? [y/N] `).finally(() => rl.close());
  if (!/^y(es)?$/i.test(answer.trim())) throw new ConfigError("--restart not confirmed; nothing was changed", "--yes");
}

/**
 * --restart: what the earlier run created goes before the new run starts — its queued jobs first (a restore of
 * the old run must not recreate a database after it was dropped), then its databases on the target, one at a
 * time and recorded as dropped, then its dumps. Roles stay: they belong to the whole cluster, may predate the
 * run, and the new run's globals step brings them to the source's definition again.
 */
async function abandon(
  previous: RunState,
  cfg: MigrateConfig,
  d: { tgtClient: pg.Client; jsm: JetStreamManager; out: Output; targetMajor: number },
): Promise<void> {
  await d.jsm.streams.purge(JOBS_STREAM, { filter: subjects.jobsOfRun(previous.runId) });
  const dropped: string[] = [];
  for (const db of previous.record.databases.filter((x) => x.created)) {
    await d.tgtClient.query(dropDatabaseSql(db.name, d.targetMajor >= 13));
    // Saved one by one: an interrupted --restart leaves a record that says exactly what is still there.
    db.created = false;
    db.phase = "planned";
    await previous.save();
    dropped.push(JSON.stringify(db.name));
  }
  if (dropped.length)
    d.out.line(
      `dropped ${plural(dropped.length, "database")} run ${previous.runId} had created: ${dropped.join(", ")}`,
    );
  await rm(join(cfg.dumpRoot, previous.runId), { recursive: true, force: true });
  previous.record.status = "abandoned";
  await previous.save();
  await previous.forgetEmbeddedSecret();
  d.out.line(`run ${previous.runId} abandoned (its dumps and queued jobs removed); starting a new run`);
}

interface Deps {
  tools: Awaited<ReturnType<typeof resolveTools>>;
  /** The coordinator's target session's client as it is now (a new one after a reconnect). */
  readonly tgtClient: pg.Client;
  session: TargetSession;
  openTarget: () => Promise<pg.Client>;
  nc: NatsConnection;
  key: SharedKey | undefined;
  log: Logger;
  out: Output;
  signal: AbortSignal;
  superuser: boolean;
  /** Role names on the source: the ones a target user that is not a superuser joins for the run. */
  sourceRoles: string[];
  targetVersionNum: number;
  /** --tablespace-location's paths for the tablespaces the globals create. */
  tablespaceRelocations: ReadonlyMap<string, string>;
  /** Subscriptions in the run's databases: they arrive disabled, which the end of the run says. */
  subscriptions: { name: string; db: string }[];
  /** Embedded mode's workers stop (handing their jobs back) before the target's settings are put back. */
  stopWorkers: () => Promise<void>;
  left: LeftBehind;
}

/** Everything that changes the target, inside the try whose finally puts its settings back. */
async function execute(cfg: MigrateConfig, state: RunState, d: Deps): Promise<number> {
  const { out, log, signal } = d;
  const record = state.record;
  const js = jetstream(d.nc);
  const emitRun = (status: "started" | "resumed" | "finished" | "failed" | "interrupted") =>
    js
      .publish(
        subjects.event(state.runId, "run", status),
        encode({
          v: CONTRACT_VERSION,
          type: "run",
          runId: state.runId,
          status,
          at: new Date().toISOString(),
          databases: record.databases.length,
          verified: record.databases.filter((x) => x.phase === "done").length,
          failed: record.databases.filter((x) => x.phase === "failed").length,
        }),
      )
      .catch((err: unknown) => log.warn({ err: errorMessage(err) }, "run event not published"));
  await emitRun(record.resumedAt.length ? "resumed" : "started");

  try {
    // Fast-restore: save first, then change.
    const wanted = settingsFor(cfg.fastRestore);
    if (Object.keys(wanted).length) {
      if (!d.superuser) {
        record.fastRestore.skippedReason = "the target user is not a superuser";
        out.warn("fast-restore mode skipped: the target user is not a superuser");
      } else {
        record.fastRestore.original = await saveSettings(d.tgtClient, Object.keys(wanted));
        record.fastRestore.applied = true;
        record.fastRestore.reverted = false;
        await state.save();
        d.left.fastRestore = {
          settings: Object.entries(wanted)
            .map(([k, v]) => `${k}=${v}`)
            .join(", "),
          revert: revertCommand(cfg),
        };
        try {
          await applySettings(d.tgtClient, wanted, {
            runId: state.runId,
            mode: cfg.fastRestore,
            original: record.fastRestore.original,
          });
          out.line(
            `target switched to fast-restore mode (${cfg.fastRestore}): ${Object.entries(wanted)
              .map(([k, v]) => `${k}=${v}`)
              .join(", ")}`,
          );
        } catch (err) {
          record.fastRestore.skippedReason = errorMessage(err);
          out.warn(`fast-restore mode not applied (${errorMessage(err)}); continuing without it`);
        }
      }
    }
    if (signal.aborted) throw new InterruptedError("interrupted");

    if (cfg.migrateGlobals && !record.globals.done) {
      const g = await migrateGlobals(d.tools, cfg.source, cfg.sourceDb, cfg.target, cfg.targetDb, signal, {
        rolePasswords: cfg.rolePasswords,
        targetSuperuser: d.superuser,
        noTablespaces: cfg.noTablespaces,
        relocate: d.tablespaceRelocations,
        knownSettings: await knownSettings(d.tgtClient),
      });
      record.globals = { done: true, ...g };
      await state.save();
      out.line(
        `globals: ${plural(g.applied, "statement")} applied, ${g.alreadyExisted.length} already existed, ${g.removed.length} about the migration user ${JSON.stringify(cfg.target.user)} left out`,
      );
      for (const f of g.failed) out.warn(`globals statement failed: ${f.error}: ${f.statement.split("\n")[0]}`);
      if (g.unknownSettings.length)
        out.warn(
          `globals: left out ${plural(g.unknownSettings.length, "role setting")} the target does not know (the rest applied): ${g.unknownSettings.join(" ")}`,
        );
      if (g.notApplied.length) {
        out.warn(
          `the target user is not a superuser, so ${plural(g.notApplied.length, "role attribute or grantor", "role attributes or grantors")} were left out (listed in the report): ${g.notApplied.slice(0, 5).join("; ")}${g.notApplied.length > 5 ? "; …" : ""}`,
        );
      }
      if (g.withoutPassword.length) {
        out.warn(
          `--no-role-passwords: ${plural(g.withoutPassword.length, "login role")} created without a password (set them with ALTER ROLE … PASSWORD; listed in the report): ${g.withoutPassword.map((r) => JSON.stringify(r)).join(", ")}`,
        );
      }
    }

    if (!d.superuser) await joinMigratedRoles(state, d, cfg.noOwner);
    const create = await databaseCreator(cfg, state, d);
    if (signal.aborted) throw new InterruptedError("interrupted");

    await new Scheduler(d.nc, js, state, cfg, d.key, log, out, create).run(signal);
    if (signal.aborted) throw new InterruptedError("interrupted");
  } catch (err) {
    record.status = err instanceof InterruptedError || signal.aborted ? "interrupted" : "failed";
    await state.save();
    if (record.status !== "interrupted") throw err;
  } finally {
    // No restore may still be writing while the settings go back, and a job cut short is handed back now.
    await d.stopWorkers();
    // A run that lost the target to another coordinator leaves it alone: that run now owns its settings.
    if (!d.session.lost) await leaveRunRoles(state, d.openTarget, out);
    const fr = record.fastRestore;
    if (fr.applied && !fr.reverted && !d.session.lost) {
      const differing = await revertWhenBack(d.openTarget, fr.original, (line) => out.warn(line)).catch(
        (err: unknown) => [errorMessage(err)],
      );
      if (differing.length)
        out.warn(
          `could not revert the target's settings (${differing.join(", ")}): run "pg-migrate revert-settings" with the same target flags`,
        );
      else {
        fr.reverted = true;
        d.left.fastRestore = undefined;
        out.line(
          needsCheckpoint(fr.original)
            ? "target settings reverted and checkpointed; fsync was off during the restore: run `sync` on the target host (or restart it cleanly) before relying on the data"
            : "target settings reverted and the WAL flushed",
        );
      }
      await state.save();
    }
  }

  out.stop();
  if (d.session.lost) {
    record.status = "failed";
    await state.save().catch(() => undefined);
    await emitRun("failed");
    throw new Error(d.session.lost);
  }
  if (record.status === "interrupted") {
    await emitRun("interrupted");
    out.line(`interrupted: run the same command again to resume run ${state.runId}`);
    return EXIT.interrupted;
  }
  const failed = record.databases.filter((x) => x.phase !== "done");
  record.status = failed.length ? "failed" : "finished";
  await state.save();
  if (!failed.length) await state.forgetEmbeddedSecret();
  await emitRun(record.status === "finished" ? "finished" : "failed");
  const dumpDir = join(cfg.dumpRoot, state.runId);
  const dumps = failed.length
    ? { path: dumpDir, kept: true, why: "databases failed: a resumed run restores from them" }
    : cfg.keepDumps
      ? { path: dumpDir, kept: true, why: "--keep-dumps" }
      : { path: dumpDir, kept: false, why: "every database verified; --keep-dumps keeps them" };
  const reportPath = await writeReport(appDir(), record, cfg.dumpRoot, dumps, cfg.reportPath);
  process.stdout.write(summaryTable(record) + "\n");
  out.line(`report: ${reportPath}`);
  if (cfg.reportPath) out.line(`report also written to ${cfg.reportPath}`);
  if (!dumps.kept) await rm(dumpDir, { recursive: true, force: true });
  if (failed.length) {
    out.line(
      `${failed.length} of ${plural(record.databases.length, "database")} failed: ${failed.map((x) => JSON.stringify(x.name)).join(", ")}; the dumps are kept under ${dumpDir}`,
    );
    return EXIT.failed;
  }
  if (dumps.kept)
    out.line(`the dumps are kept under ${dumpDir} (--keep-dumps): they hold every row, so remove them when done`);
  for (const s of d.subscriptions) {
    out.warn(
      `subscription ${JSON.stringify(s.name)} in ${JSON.stringify(s.db)} is disabled on the target (pg_dump recreates subscriptions without connecting): once its publisher expects this server, run ALTER SUBSCRIPTION ${ident(s.name)} ENABLE in that database (and create its slot if it has none)`,
    );
  }
  const warnings = record.databases.reduce((s, x) => s + (x.warnings?.length ?? 0), 0);
  out.line(
    `${record.databases.length === 1 ? "the database" : `all ${record.databases.length} databases`} migrated and verified${warnings ? `, with ${plural(warnings, "warning")} of what pg_dump cannot preserve (named above and in the report)` : ""}`,
  );
  return EXIT.ok;
}

/**
 * Creates one database on the target, once: called by the scheduler as the database's dump starts, so the CREATE
 * DATABASE (a copy of template0 through the WAL, ~70 ms) overlaps the dump instead of delaying the whole run.
 * Returns why it failed, or undefined.
 */
async function databaseCreator(cfg: MigrateConfig, state: RunState, d: Deps): Promise<TargetDatabases> {
  const { rows } = await d.tgtClient.query<{ rolname: string; rolsuper: boolean }>(
    "SELECT rolname, rolsuper FROM pg_roles",
  );
  const roles = new Map(rows.map((r) => [r.rolname, r.rolsuper]));
  // One statement at a time on the coordinator's target session: the scheduler starts creations side by side.
  let queue: Promise<unknown> = Promise.resolve();
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn);
    queue = next.catch(() => undefined);
    return next;
  };
  const create = (db: DbState) =>
    serially(async () => {
      // The maintenance database is there already: its objects are restored into it as it is.
      if (db.created || db.name === MAINTENANCE_DB) return undefined;
      if (cfg.noTablespaces && db.create.tablespace) {
        // --no-tablespaces: the database lives in the target's default tablespace, and a retried restore recreates it so.
        const { tablespace: _dropped, ...rest } = db.create;
        db.create = rest;
      }
      const owner = db.create.owner;
      if (!roles.has(owner) || (!d.superuser && roles.get(owner) && owner !== cfg.target.user)) {
        const why = roles.has(owner)
          ? `is a superuser on the target, which ${JSON.stringify(cfg.target.user)} (not one) cannot give a database to`
          : "does not exist on the target";
        d.out.warn(
          `owner ${JSON.stringify(owner)} of ${JSON.stringify(db.name)} ${why}; ${JSON.stringify(cfg.target.user)} will own it`,
        );
        db.create = { ...db.create, owner: cfg.target.user };
      }
      // Recorded before the CREATE: a crash in between must not make the next run refuse its own database.
      db.created = true;
      await state.save();
      // A session the server dropped is opened again (TargetSession) and the statement sent again; "already exists"
      // then means the first one got through before the session went.
      for (let tries = 1; ; tries++) {
        try {
          await d.session.ready();
          await d.tgtClient.query(createDatabaseSql(db.name, db.create));
          return undefined;
        } catch (err) {
          if (sessionLost(err) && tries < 5 && !d.session.lost) {
            await new Promise((r) => setTimeout(r, 250 * tries)); // the session is noticed gone, then opened again
            continue;
          }
          if (tries > 1 && /already exists/.test(errorMessage(err))) return undefined;
          db.created = /already exists/.test(errorMessage(err)) ? false : db.created;
          await state.save();
          return `CREATE DATABASE failed: ${errorMessage(err)}`;
        }
      }
    });
  // A database that failed before any restore began holds nothing of the source: it goes, so that the target
  // keeps no empty database a user would take for a migrated one.
  const dropUnrestored = (db: DbState) =>
    serially(async () => {
      if (!db.created || db.name === MAINTENANCE_DB) return false;
      await d.session.ready();
      await d.tgtClient.query(dropDatabaseSql(db.name, d.targetVersionNum >= 130000)); // WITH (FORCE) from 13
      db.created = false;
      await state.save();
      return true;
    });
  return { create, dropUnrestored };
}

/** A target user that is not a superuser joins the migrated roles, so that their databases and objects keep their owners. */
async function joinMigratedRoles(state: RunState, d: Deps, noOwner: boolean): Promise<void> {
  const { join, superusers } = await rolesToJoin(d.tgtClient, d.sourceRoles, d.targetVersionNum);
  if (superusers.length && !noOwner) {
    d.out.warn(
      `${superusers.map((r) => JSON.stringify(r)).join(", ")} ${superusers.length === 1 ? "is a superuser" : "are superusers"} on the target: objects they own on the source cannot be restored by a target user that is not one; a database holding such objects fails, unless --no-owner gives every object to the target user`,
    );
  }
  if (!join.length) return;
  // Recorded before the first GRANT, so a crash in between is mended by the next run.
  const earlier = state.record.memberships && !state.record.memberships.revoked ? state.record.memberships.granted : [];
  const granted = [...new Set([...earlier, ...join])];
  state.record.memberships = { granted, revoked: false };
  await state.save();
  const failed = await joinRoles(d.tgtClient, join, d.targetVersionNum);
  for (const f of failed)
    d.out.warn(
      `could not join role ${JSON.stringify(f.role)} (${f.error}): its databases and objects may fail to restore`,
    );
  const joined = join.filter((r) => !failed.some((f) => f.role === r));
  if (failed.length) {
    state.record.memberships.granted = granted.filter((r) => !failed.some((f) => f.role === r));
    await state.save();
  }
  d.out.line(
    `the target user is not a superuser: joined ${plural(joined.length, "migrated role")} for the run, so that their objects keep their owners; left again at the end`,
  );
}

function newDbState(d: { name: string; sizeBytes: number; create: DbState["create"] }): DbState {
  return {
    name: d.name,
    key: dbKey(d.name),
    sizeBytes: d.sizeBytes,
    phase: "planned",
    created: false,
    create: d.create,
    timings: {},
    attempts: {},
    workers: {},
  };
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

/** The command that puts the target's settings back by hand, with this run's target flags. */
function revertCommand(cfg: MigrateConfig): string {
  const t = cfg.target;
  const flags = [
    `--to-host ${t.host}`,
    `--to-port ${t.port}`,
    ...(t.user !== "postgres" ? [`--to-user ${t.user}`] : []),
    ...(cfg.targetDb !== "postgres" ? [`--to-db ${cfg.targetDb}`] : []),
  ];
  return `"pg-migrate revert-settings ${flags.join(" ")}"`;
}
