// One migration, as its declared steps (RUN_STEPS in shared/contracts/phases.ts): preflight → lock → broker →
// resume → workers → fast-restore → globals → jobs → finish. migrate() runs them in order, logs each as STEP n
// with its timing and keeps the timings in the run's record and report. Nothing changes on the target before
// the preflight has passed; once a run is recorded, "finish" runs however the steps before it ended, and puts the
// target's settings back.
import { join } from "node:path";
import type pg from "pg";
import { RUN_STEPS, type RunStep } from "../shared/contracts/phases.js";
import { jetstream } from "@nats-io/jetstream";
import { errorMessage, InterruptedError, PreflightError } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { appDir } from "../shared/paths.js";
import { connect, describe } from "../shared/pg/connect.js";
import { createDatabaseSql, dropDatabaseSql } from "../shared/pg/create.js";
import { knownSettings } from "../shared/pg/settings.js";
import { prepareDumpRoot } from "./checks.js";
import type { MigrateConfig } from "./config.js";
import { MAINTENANCE_DB } from "./discovery.js";
import { awaitWorkers, openBroker } from "./broker.js";
import { applySettings, saveSettings, settingsFor } from "./fast-restore.js";
import { finish } from "./finish.js";
import { startFollowing } from "./follow.js";
import { migrateGlobals } from "./globals.js";
import { holdOnTarget, TargetLock } from "./lock.js";
import { joinRoles, rolesToJoin } from "./memberships.js";
import { Output, plural } from "./output.js";
import { preflight, refusalLine } from "./preflight.js";
import { resumeOrCreate } from "./resume.js";
import {
  brokerOf,
  LeftBehind,
  preflightOf,
  revertCommand,
  stateOf,
  targetClient,
  targetOf,
  type RunContext,
} from "./run-context.js";
import { Scheduler, type TargetDatabases } from "./scheduler.js";
import { viaLine } from "./via.js";
import { sessionLost, TargetSession } from "./target-session.js";
import { noteLine } from "./upgrade-notes.js";
import type { DbState } from "./state.js";
import { natsService, postgresService, waitForServices } from "./wait.js";

export { EXIT, LeftBehind } from "./run-context.js";

type Step = Exclude<RunStep, "finish">;

/** Every step before "finish", by name: a step declared in RUN_STEPS without its function does not compile. */
const STEPS: { [S in Step]: (ctx: RunContext) => Promise<void> } = {
  preflight: checkFirst,
  lock: lockTarget,
  broker: openBroker,
  resume: resumeOrCreate,
  workers: awaitWorkers,
  "fast-restore": switchToFastRestore,
  globals: copyGlobals,
  jobs: runJobs,
};

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
  const closers: (() => Promise<void> | void)[] = [];
  const ctx: RunContext = {
    cfg,
    out,
    signal: stopping.signal,
    stop: () => stopping.abort(),
    left,
    home: appDir(),
    log: createLogger({ level: "info", stderrLevel: cfg.logLevel }),
    openTarget: () => connect(ctx.cfg.target, ctx.cfg.targetDb, "pg-migrate coordinator"),
    steps: [],
    defer: (close) => void closers.push(close),
  };
  try {
    let failure: unknown;
    try {
      for (const [i, step] of RUN_STEPS.entries()) {
        if (step === "finish") break;
        if (ctx.signal.aborted) throw new InterruptedError("interrupted");
        await timed(ctx, i + 1, step, () => STEPS[step](ctx));
      }
    } catch (err) {
      failure = err;
    }
    // Before the run was recorded nothing on the target had changed: the error is all there is to say.
    if (!ctx.state) throw failure;
    return await timed(ctx, RUN_STEPS.length, "finish", (timeSoFar) => finish(ctx, failure, timeSoFar));
  } finally {
    out.stop();
    // Newest first: presence and workers, then the lock and the broker, then the sessions.
    for (const close of closers.reverse()) {
      try {
        await close();
      } catch (err) {
        ctx.log.warn({ err: errorMessage(err) }, "closing after the run failed");
      }
    }
  }
}

/**
 * Runs one step, logged as STEP n with its timing; the timing joins the record (this session's steps) once there
 * is one. `fn` may record the step's time before it ends (finish: up to the report that shows it).
 */
async function timed<T>(
  ctx: RunContext,
  n: number,
  step: RunStep,
  fn: (timeSoFar: () => void) => Promise<T>,
): Promise<T> {
  const startedAt = new Date();
  let recorded = false;
  const record = (how: string) => {
    if (recorded) return;
    recorded = true;
    const ms = Date.now() - startedAt.getTime();
    ctx.steps.push({ step, startedAt: startedAt.toISOString(), ms });
    ctx.log.info({ step, n, ms }, `STEP ${n} ${step} ${how} in ${ms} ms`);
    const state = ctx.state;
    if (state) {
      const session = state.record.resumedAt.length;
      state.record.steps = [
        ...(state.record.steps ?? []).filter((s) => s.session !== session),
        ...ctx.steps.map((s) => ({ ...s, session })),
      ];
    }
  };
  try {
    const result = await fn(() => record("done"));
    record("done");
    return result;
  } catch (err) {
    record("stopped");
    throw err;
  } finally {
    await ctx.state?.save().catch(() => undefined);
  }
}

/** What the steps that change the target read of it: its session (a new client after a reconnect) and the user's rights. */
function deps(ctx: RunContext) {
  const pf = preflightOf(ctx);
  return {
    get tgtClient(): pg.Client {
      return targetClient(ctx);
    },
    session: targetOf(ctx),
    superuser: pf.target.superuser,
    targetVersionNum: pf.target.versionNum,
    sourceRoles: pf.sourceRoles,
    out: ctx.out,
  };
}

/** The "preflight" step: every check, nothing changed; the run refuses on what it found, or goes on with it. */
async function checkFirst(ctx: RunContext): Promise<void> {
  const { cfg, out } = ctx;
  if (cfg.waitMs > 0) {
    const services = [postgresService(cfg.source, cfg.sourceDb), postgresService(cfg.target, cfg.targetDb)];
    if (cfg.natsUrl) services.push(natsService(cfg.natsUrl, cfg.natsAuth));
    const started = Date.now();
    out.line(`waiting up to ${Math.round(cfg.waitMs / 1000)}s for ${services.map((s) => s.name).join(", ")} (--wait)`);
    await waitForServices(services, cfg.waitMs, ctx.signal);
    out.line(`all answered after ${Math.round((Date.now() - started) / 1000)}s`);
  }
  const pf = await preflight(cfg, ctx.home, (pk) =>
    createLogger({ level: "info", file: join(ctx.home, "logs", `preflight-${pk}.log`), stderrLevel: cfg.logLevel }),
  );
  ctx.pf = pf;
  ctx.log = pf.log;
  ctx.defer(() => pf.close());
  out.line(`client tools: ${pf.tools.version} (from ${pf.tools.from})`);
  out.line(`checked the ${describe(cfg.source, cfg.sourceDb)} and the ${describe(cfg.target, cfg.targetDb)}`);
  // Said before anything changes on the target; kept in the run record for the report.
  for (const n of pf.survey.upgradeNotes)
    out.warn(`upgrade note (PostgreSQL ${pf.source.major} → ${pf.target.major}): ${noteLine(n)}`);
  for (const w of pf.warnings) out.warn(w);
  const { selected, skipped } = pf.survey;
  out.line(
    `found ${plural(selected.length, "database")} to migrate on the source${skipped.length ? ` (${skipped.length} left out: ${skipped.map((s) => JSON.stringify(s.name)).join(", ")})` : ""}`,
  );
  for (const line of pf.notes) out.line(line);
  if (pf.refusals.length) throw new PreflightError(refusalLine(pf.refusals));
  ctx.cfg = Object.freeze({ ...cfg, ...pf.parallelism });
  await prepareDumpRoot(cfg.dumpRoot);
}

/**
 * The "lock" step: one run per target, from here to its end — this home's lock file, and the advisory lock held by
 * the coordinator's target session, which from here on is reached through TargetSession (opened again if the
 * server drops it; a run that cannot get it back stops).
 */
async function lockTarget(ctx: RunContext): Promise<void> {
  const { cfg, out } = ctx;
  const pf = preflightOf(ctx);
  const where = `${cfg.target.host}:${cfg.target.port}`;
  const lock = await TargetLock.acquire(ctx.home, pf.lockKey, where, ctx.log);
  ctx.lock = lock;
  ctx.defer(() => lock.release());
  await holdOnTarget(pf.tgt, where);
  const session = new TargetSession(
    pf.tgt,
    ctx.openTarget,
    where,
    ctx.log,
    (why) => {
      out.warn(why);
      ctx.stop();
    },
    (line) => out.warn(line),
  );
  ctx.session = session;
  ctx.defer(() => session.close());
}

/** The "fast-restore" step: the target's settings saved (in the record and on the target), then changed. */
async function switchToFastRestore(ctx: RunContext): Promise<void> {
  const { cfg, out } = ctx;
  const state = stateOf(ctx);
  const record = state.record;
  const d = { ...deps(ctx), left: ctx.left };
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
}

/** The "globals" step: roles and tablespaces, once per run; a target user that is not a superuser joins the migrated roles. */
async function copyGlobals(ctx: RunContext): Promise<void> {
  const { cfg, out, signal } = ctx;
  const pf = preflightOf(ctx);
  const state = stateOf(ctx);
  const record = state.record;
  const d = { ...deps(ctx), tools: pf.tools, tablespaceRelocations: pf.survey.tablespaces.relocate };
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

  if (!pf.target.superuser) await joinMigratedRoles(ctx, cfg.noOwner);
}

/** The "jobs" step: each database created as its dump starts, dumped, restored and verified through the workers. */
async function runJobs(ctx: RunContext): Promise<void> {
  const broker = brokerOf(ctx);
  const state = stateOf(ctx);
  const create = await databaseCreator(ctx);
  // Each database not begun yet takes the path this run's --via gives it; one begun keeps the one it began on.
  const vias = preflightOf(ctx).vias;
  for (const db of state.record.databases) {
    if (db.phase !== "planned") continue;
    const via = vias.get(db.name) ?? "volume";
    if (via !== (db.via ?? "volume")) delete db.stream;
    db.via = via;
  }
  const line = viaLine(vias, ctx.cfg.via);
  if (line) ctx.out.line(line);
  await new Scheduler(broker.nc, jetstream(broker.nc), state, ctx.cfg, broker.key, ctx.log, ctx.out, create).run(
    ctx.signal,
  );
  if (ctx.signal.aborted) throw new InterruptedError("interrupted");
  if (ctx.cfg.follow) await startFollowing(ctx.cfg, state, preflightOf(ctx).src, (line) => ctx.out.line(line));
}

/**
 * Creates one database on the target, once: called by the scheduler as the database's dump starts, so the CREATE
 * DATABASE (a copy of template0 through the WAL, ~70 ms) overlaps the dump instead of delaying the whole run.
 * Returns why it failed, or undefined.
 */
async function databaseCreator(ctx: RunContext): Promise<TargetDatabases> {
  const { cfg } = ctx;
  const state = stateOf(ctx);
  const d = deps(ctx);
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
async function joinMigratedRoles(ctx: RunContext, noOwner: boolean): Promise<void> {
  const state = stateOf(ctx);
  const d = deps(ctx);
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
