// `pg-migrate revert-settings`: for the day everything else fails. Finds every run record (this home's, and the
// KV's with --nats-url) that changed this target's settings and did not put them back, and puts them back.
// A live run on the target is refused by name: reverting under it would slow it down, not save it.
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { openExistingKv, RUNS_BUCKET } from "../shared/contracts/jetstream.js";
import { PreflightError } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { closeNats, connectNats, type NatsEndpoint } from "../shared/nats.js";
import { appDir } from "../shared/paths.js";
import { connect, describe, type ServerSpec } from "../shared/pg/connect.js";
import { needsCheckpoint, readTargetRecord, revertSettings } from "./fast-restore.js";
import { holdOnTarget, TargetLock, targetLockKey } from "./lock.js";
import { leaveRunRoles, rolesLeft } from "./memberships.js";
import type { Output } from "./output.js";
import { inspect } from "./checks.js";
import { RunState, sameTarget, type RunRecord } from "./state.js";

export async function revertByHand(
  target: ServerSpec,
  targetDb: string,
  nats: NatsEndpoint | undefined,
  out: Output,
): Promise<number> {
  const home = appDir();
  const log = createLogger({ level: "info", file: join(home, "logs", "revert-settings.log") });
  const { info, client } = await inspect(target, targetDb);
  let lock: TargetLock | undefined;
  let nc: Awaited<ReturnType<typeof connectNats>> | undefined;
  try {
    const lockKey = targetLockKey(info.systemId, target.host, target.port);
    lock = await TargetLock.acquire(home, lockKey, `${target.host}:${target.port}`, log);
    await holdOnTarget(client, `${target.host}:${target.port}`);
    if (nats) nc = await connectNats(nats.url, "pg-migrate-revert-settings", nats.auth);
    const settingsLeft = (r: RunRecord) => r.fastRestore.applied && !r.fastRestore.reverted;
    const pending = (r: RunRecord) =>
      sameTarget(r, info.systemId, target.host, target.port) && (settingsLeft(r) || rolesLeft(r));

    const states = (await RunState.all(home, log)).filter((s) => pending(s.record));
    if (nc) {
      const kv = await openExistingKv(new Kvm(nc), RUNS_BUCKET);
      if (kv) await lock.holdInKv(kv, lockKey);
      const local = new Set(states.map((s) => s.runId));
      for (const record of kv ? await RunState.recordsInKv(kv) : []) {
        if (!local.has(record.runId) && pending(record)) {
          const state = await RunState.create(home, record, log);
          state.attachKv(kv!);
          states.push(state);
        }
      }
    }
    const openTarget = () => connect(target, targetDb, "pg-migrate revert-settings");
    // The target's own record of a run's settings: found whatever home or host that run had.
    const carried = await readTargetRecord(client);
    if (carried && !states.some((st) => st.runId === carried.runId && settingsLeft(st.record))) {
      const differing = await revertSettings(openTarget, carried.original);
      if (differing.length)
        throw new PreflightError(
          `could not revert ${differing.join(", ")} on ${describe(target)} (run ${carried.runId}, recorded on the target): check the target's postgresql.auto.conf`,
        );
      out.line(
        `run ${carried.runId} (recorded on the target): reverted ${carried.original.map((o) => `${o.name}=${o.setting}`).join(", ")} and ${needsCheckpoint(carried.original) ? "checkpointed" : "flushed the WAL"}`,
      );
      if (carried.mode === "full")
        out.line(
          "fsync was off during that run: run `sync` on the target host (or restart it cleanly) before relying on the data",
        );
      for (const st of states.filter((x) => x.runId === carried.runId)) {
        st.record.fastRestore.reverted = true;
        await st.save();
      }
    }
    if (!states.length) {
      if (!carried)
        out.line(
          `nothing to revert: no run record under ${home}${nc ? " or in the KV" : ""}, nor the target itself, holds unreverted settings or joined roles of ${describe(target)}`,
        );
      return 0;
    }
    for (const state of states) {
      await leaveRunRoles(state, openTarget, out);
      const fr = state.record.fastRestore;
      if (!settingsLeft(state.record)) continue;
      const differing = await revertSettings(openTarget, fr.original);
      if (differing.length)
        throw new PreflightError(
          `could not revert ${differing.join(", ")} on ${describe(target)} (run ${state.runId}): check the target's postgresql.auto.conf`,
        );
      fr.reverted = true;
      await state.save();
      out.line(
        `run ${state.runId}: reverted ${fr.original.map((s) => `${s.name}=${s.setting}`).join(", ")} and ${needsCheckpoint(fr.original) ? "checkpointed" : "flushed the WAL"}`,
      );
      if (fr.mode === "full")
        out.line(
          "fsync was off during that run: run `sync` on the target host (or restart it cleanly) before relying on the data",
        );
    }
    return 0;
  } finally {
    await lock?.release();
    await closeNats(nc);
    await client.end().catch(() => undefined);
  }
}
