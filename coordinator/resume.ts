// The "resume" step: an unfinished run between these servers is taken up again — what it (or any run) left on the
// target put back first, roles an ended run could not leave left now — or, with --restart, set aside to be
// abandoned once workers are there; otherwise a new run is recorded. Either way the run's record is saved, in this
// home and in the runs KV, before anything changes on the target.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline/promises";
import type { JetStreamManager } from "@nats-io/jetstream";
import type pg from "pg";
import { JOBS_STREAM, kvKeys, subjects } from "../shared/contracts/jetstream.js";
import { dbKey } from "../shared/dbkey.js";
import { ConfigError, PreflightError } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { withoutCredentials } from "../shared/nats.js";
import { dropDatabaseSql } from "../shared/pg/create.js";
import { extensionProblem } from "./checks.js";
import { publicOptions, type MigrateConfig } from "./config.js";
import { revertSettings } from "./fast-restore.js";
import { leaveRunRoles, rolesLeft } from "./memberships.js";
import { plural, type Output } from "./output.js";
import { findPrevious, restartQuestion } from "./preflight.js";
import { dropFollowObjects } from "./follow.js";
import { brokerOf, preflightOf, revertCommand, targetOf, type RunContext } from "./run-context.js";
import { newRunId, RunState, sameTarget, type DbState } from "./state.js";

export async function resumeOrCreate(ctx: RunContext): Promise<void> {
  const { cfg, out, home, left } = ctx;
  const pf = preflightOf(ctx);
  const broker = brokerOf(ctx);
  const target = targetOf(ctx);
  const { selected, skipped, missingExtensions } = pf.survey;
  // The earlier run as the preflight found it, read again now that this run holds the target: one that ended or
  // appeared in between (another coordinator's) would make the preflight's verdict about the wrong run.
  let previous = await findPrevious(home, pf.pairKey, ctx.log, broker.embedded ? undefined : broker.runsKv);
  if (previous?.runId !== pf.previous?.runId)
    throw new PreflightError(
      `the unfinished run between these servers changed while this run was checking (${pf.previous?.runId ?? "none"}, now ${previous?.runId ?? "none"}): run the same command again; nothing was changed`,
    );

  const fr = previous?.record.fastRestore;
  if (previous && fr?.applied && !fr.reverted) {
    // The previous coordinator died before putting the target's settings back: that comes first.
    left.fastRestore = { settings: "left by an earlier run", revert: revertCommand(cfg) };
    const differing = await revertSettings(ctx.openTarget, fr.original);
    if (differing.length)
      throw new PreflightError(
        `could not revert the target's settings left by run ${previous.runId}: ${differing.join(", ")}`,
      );
    fr.reverted = true;
    await previous.save();
    left.fastRestore = undefined;
    out.line(`reverted the fast-restore settings run ${previous.runId} had left on the target`);
  }
  // What the target itself carries: fast-restore settings a run from any home or host put there and never took
  // back (its own record may be on another machine, or gone). Put back first, with the originals it recorded,
  // so that this run never takes fast values for the target's own.
  const recorded = await RunState.all(home, ctx.log);
  const carried = pf.carried;
  if (carried) {
    left.fastRestore = { settings: `left by run ${carried.runId}`, revert: revertCommand(cfg) };
    const differing = await revertSettings(ctx.openTarget, carried.original);
    if (differing.length)
      throw new PreflightError(
        `could not revert the fast-restore settings run ${carried.runId} recorded on the target: ${differing.join(", ")}`,
      );
    left.fastRestore = undefined;
    out.line(
      `the target carried fast-restore settings of run ${carried.runId} (since ${carried.at}) that were never put back: reverted them to ${carried.original.map((o) => `${o.name}=${o.setting}`).join(", ")}`,
    );
    for (const other of [previous, ...recorded]) {
      if (other?.runId === carried.runId && other.record.fastRestore.applied && !other.record.fastRestore.reverted) {
        other.record.fastRestore.reverted = true;
        await other.save();
      }
    }
  }
  // With --restart, its roles are left after its databases are dropped: dropping them may need the membership.
  if (previous && !cfg.restart) await leaveRunRoles(previous, ctx.openTarget, out);
  // Roles an ended run could not leave (the target was gone at its end, say): left now.
  for (const other of recorded) {
    if (
      other.runId !== previous?.runId &&
      rolesLeft(other.record) &&
      sameTarget(other.record, pf.target.systemId, cfg.target.host, cfg.target.port)
    ) {
      await leaveRunRoles(other, ctx.openTarget, out);
    }
  }
  if (previous && cfg.restart) {
    // Asked now, before anything changes; done once workers are known to be there.
    await confirmRestart(previous, cfg, pf.onTarget);
    ctx.abandoned = previous;
    previous = undefined;
  }
  if (pf.previousLine) out.line(pf.previousLine);

  const now = new Date().toISOString();
  let state: RunState;
  if (previous) {
    state = previous;
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
    const why = new Map([...skipped, ...pf.survey.closed].map((x) => [x.name, x.reason]));
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
    const server = (spec: MigrateConfig["source"], db: string, info: typeof pf.source) => ({
      host: spec.host,
      port: spec.port,
      user: spec.user,
      db,
      systemId: info.systemId,
      version: info.version,
    });
    state = await RunState.create(
      home,
      {
        v: 1,
        runId: newRunId(),
        pairKey: pf.pairKey,
        status: "running",
        startedAt: now,
        updatedAt: now,
        resumedAt: [],
        source: server(cfg.source, cfg.sourceDb, pf.source),
        target: server(cfg.target, cfg.targetDb, pf.target),
        options: publicOptions(cfg),
        fastRestore: { mode: cfg.fastRestore, applied: false, reverted: false, original: [] },
        globals: { done: false, applied: 0, removed: [], alreadyExisted: [], failed: [] },
        skipped,
        databases: selected.map(newDbState),
      },
      ctx.log,
    );
  }
  ctx.state = state;
  // An extension the target cannot create fails that database now, before anything is created for it.
  for (const d of state.record.databases) {
    const missing = missingExtensions.get(d.name);
    if (missing && d.phase === "planned" && !d.created) {
      d.phase = "failed";
      d.error = `${extensionProblem(missing)}: install ${missing.length === 1 ? "it" : "them"} on the target host and run the same command again`;
    }
  }
  state.record.upgradeNotes = pf.survey.upgradeNotes;
  left.runId = state.runId;
  state.record.broker = withoutCredentials(broker.url);
  state.attachKv(broker.runsKv);
  await ctx.lock!.setRun(state.runId);
  await target.name(state.runId);
  await broker.runsKv.put(kvKeys.pair(pf.pairKey), state.runId);
  await state.save();
  const logFile = join(home, "logs", `${state.runId}.log`);
  ctx.log = createLogger({ level: "info", file: logFile, base: { runId: state.runId }, stderrLevel: cfg.logLevel });
  out.line(`run ${state.runId}: logs in ${logFile}`);
}

/** --restart drops what the earlier run created: on a terminal the user says yes (else the preflight refused). */
async function confirmRestart(previous: RunState, cfg: MigrateConfig, onTarget: Set<string>): Promise<void> {
  const question = restartQuestion(previous, onTarget);
  if (!question || cfg.yes) return;
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
export async function abandon(
  previous: RunState,
  cfg: MigrateConfig,
  d: { tgtClient: pg.Client; jsm: JetStreamManager; out: Output; targetMajor: number },
): Promise<void> {
  await d.jsm.streams.purge(JOBS_STREAM, { filter: subjects.jobsOfRun(previous.runId) });
  // --follow: its subscriptions first (a database one reads from cannot be dropped), then its slots and role.
  const follow = await dropFollowObjects(previous.record, cfg, () => previous.save());
  if (follow.subscriptions || follow.slots || previous.record.follow)
    d.out.line(
      `dropped what run ${previous.runId} made to follow the source: ${plural(follow.subscriptions, "subscription")}, ${plural(follow.slots, "replication slot")}, its publications and replication role`,
    );
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
