// The "finish" step, run however the steps before it ended (a failure, Ctrl-C, a lost target or success): the
// workers stop (handing back what they held), the roles the run joined are left, the target's settings go back;
// then the run's end is recorded and said, and — when it got to its end — the report is written.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { InterruptedError, errorMessage } from "../shared/errors.js";
import { ident } from "../shared/pg/quote.js";
import { appDir } from "../shared/paths.js";
import { needsCheckpoint, revertWhenBack } from "./fast-restore.js";
import { dropUnfollowed } from "./follow.js";
import { leaveRunRoles } from "./memberships.js";
import { plural } from "./output.js";
import { summaryTable, writeReport } from "./report.js";
import { emitRun, EXIT, preflightOf, stateOf, type RunContext } from "./run-context.js";

/** What the target is put back to, whatever happened: workers first, so no restore still writes as settings change. */
export async function settle(ctx: RunContext): Promise<void> {
  const { out } = ctx;
  const state = stateOf(ctx);
  await ctx.workers?.stop();
  // --follow: a slot no subscription reads only holds the source's WAL back (a resumed run makes new ones).
  if (state.record.follow || state.record.databases.some((d) => d.follow))
    await dropUnfollowed(ctx.cfg, state, preflightOf(ctx).src).catch((err: unknown) =>
      out.warn(`${errorMessage(err)}: "pg-migrate abort" with the same server flags drops it`),
    );
  const lost = ctx.session?.lost;
  // A run that lost the target to another coordinator leaves it alone: that run now owns its settings.
  if (lost) return;
  await leaveRunRoles(state, ctx.openTarget, out);
  const fr = state.record.fastRestore;
  if (!fr.applied || fr.reverted) return;
  const differing = await revertWhenBack(ctx.openTarget, fr.original, (line) => out.warn(line)).catch(
    (err: unknown) => [errorMessage(err)],
  );
  if (differing.length)
    out.warn(
      `could not revert the target's settings (${differing.join(", ")}): run "pg-migrate revert-settings" with the same target flags`,
    );
  else {
    fr.reverted = true;
    ctx.left.fastRestore = undefined;
    out.line(
      needsCheckpoint(fr.original)
        ? "target settings reverted and checkpointed; fsync was off during the restore: run `sync` on the target host (or restart it cleanly) before relying on the data"
        : "target settings reverted and the WAL flushed",
    );
  }
  await state.save();
}

/**
 * Ends the run: `failure` is what stopped the steps before this one, if anything. An interrupted run says how to
 * resume it (exit 130); a failed step's error goes on to the CLI once the target is settled; a run that got to its
 * end writes the report and says what failed, what was kept and what is left to do.
 */
export async function finish(ctx: RunContext, failure: unknown, timeSoFar: () => void): Promise<number> {
  const { cfg, out, signal } = ctx;
  const state = stateOf(ctx);
  const record = state.record;
  const interrupted = failure instanceof InterruptedError || (failure !== undefined && signal.aborted);
  if (failure !== undefined) {
    // The record must not say "running" for a run that stopped (status and watch read it).
    record.status = interrupted ? "interrupted" : "failed";
    await state.save().catch(() => undefined);
  }
  await settle(ctx);
  out.stop();
  if (ctx.session?.lost) {
    record.status = "failed";
    await state.save().catch(() => undefined);
    await emitRun(ctx, "failed");
    throw new Error(ctx.session.lost);
  }
  if (failure !== undefined && !interrupted) throw failure;
  if (interrupted) {
    await emitRun(ctx, "interrupted");
    out.line(`interrupted: run the same command again to resume run ${state.runId}`);
    return EXIT.interrupted;
  }
  const failed = record.databases.filter((x) => x.phase !== "done");
  record.status = failed.length ? "failed" : cfg.follow ? "following" : "finished";
  timeSoFar(); // the finish step's own timing, up to the report that shows it
  await state.save();
  if (!failed.length) await state.forgetEmbeddedSecret();
  await emitRun(ctx, record.status === "finished" ? "finished" : "failed");
  const dumpDir = join(cfg.dumpRoot, state.runId);
  // Only a finished dump is kept for a resumed run: a streamed database, or one that failed before its dump was
  // done, has none to keep, nor to name.
  const dumped = failed.filter((x) => x.dumpPath !== undefined);
  const dumps = dumped.length
    ? { path: dumpDir, kept: true, why: "databases failed: a resumed run restores from them" }
    : cfg.keepDumps
      ? { path: dumpDir, kept: true, why: "--keep-dumps" }
      : failed.length
        ? { path: dumpDir, kept: false, why: "no failed database has a finished dump to restore from" }
        : { path: dumpDir, kept: false, why: "every database verified; --keep-dumps keeps them" };
  const reportPath = await writeReport(appDir(), record, cfg.dumpRoot, dumps, cfg.reportPath);
  process.stdout.write(summaryTable(record) + "\n");
  out.line(`report: ${reportPath}`);
  if (cfg.reportPath) out.line(`report also written to ${cfg.reportPath}`);
  if (!dumps.kept) await rm(dumpDir, { recursive: true, force: true });
  if (failed.length) {
    out.line(
      `${failed.length} of ${plural(record.databases.length, "database")} failed: ${failed.map((x) => JSON.stringify(x.name)).join(", ")}${dumped.length ? `; the dumps are kept under ${dumpDir}` : ""}`,
    );
    return EXIT.failed;
  }
  if (dumps.kept)
    out.line(`the dumps are kept under ${dumpDir} (--keep-dumps): they hold every row, so remove them when done`);
  // Subscriptions arrive disabled (pg_dump recreates them without connecting): said once the run is done.
  const inRun = new Set(record.databases.map((d) => d.name));
  for (const s of preflightOf(ctx).subscriptions.filter((x) => inRun.has(x.db))) {
    out.warn(
      `subscription ${JSON.stringify(s.name)} in ${JSON.stringify(s.db)} is disabled on the target (pg_dump recreates subscriptions without connecting): once its publisher expects this server, run ALTER SUBSCRIPTION ${ident(s.name)} ENABLE in that database (and create its slot if it has none)`,
    );
  }
  const warnings = record.databases.reduce((s, x) => s + (x.warnings?.length ?? 0), 0);
  out.line(
    `${record.databases.length === 1 ? "the database" : `all ${record.databases.length} databases`} migrated and verified${warnings ? `, with ${plural(warnings, "warning")} of what pg_dump cannot preserve (named above and in the report)` : ""}`,
  );
  if (cfg.follow)
    out.line(
      `run ${state.runId} is following the source: "pg-migrate cutover --lag" reads the lag now (and "pg-migrate status" shows the last reading); when the applications can pause, "pg-migrate cutover" (the same server flags) stops the writes, waits for the target, copies the sequences, verifies every table and drops the subscriptions, slots, publications and the replication role; "pg-migrate abort" drops them without cutting over`,
    );
  return EXIT.ok;
}
