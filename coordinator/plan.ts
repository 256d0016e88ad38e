// `pg-migrate plan` (also `--dry-run`): what a run would do, read from both servers, changing nothing on either
// (no lock, no NATS, no dump directory created). It exits 3 when the preflight would refuse the run.
import { constants } from "node:fs";
import { access, statfs } from "node:fs/promises";
import { dirname } from "node:path";
import { chooseCompression, networkFsName } from "../shared/compression.js";
import Table from "cli-table3";
import type pg from "pg";
import { PreflightError } from "../shared/errors.js";
import { withoutCredentials } from "../shared/nats.js";
import { createLogger } from "../shared/log.js";
import { appDir } from "../shared/paths.js";
import { describe } from "../shared/pg/connect.js";
import { resolveTools } from "../shared/tools.js";
import type { MigrateConfig } from "./config.js";
import { existingDatabases, MAINTENANCE_DB } from "./discovery.js";
import { maintenanceClash, survey } from "./survey.js";
import { checkSourceDatabases } from "./source-check.js";
import { readTargetRecord, settingsFor } from "./fast-restore.js";
import { bytes, plural, type Output } from "./output.js";
import {
  checkServers,
  dumpVolumeNotWritable,
  extensionProblem,
  inspect,
  minimumDumpSpace,
  pairKey,
  sessionTimeoutWarning,
} from "./preflight.js";
import { RunState } from "./state.js";
import { noteLine } from "./upgrade-notes.js";
import { EXIT } from "./run.js";
import { connectionsNeeded } from "./parallelism.js";

/**
 * Connections one server sees at the peak of a run. Source: per database in flight, the worker's snapshot and
 * counting session, pg_dump's leader and its --jobs workers; plus the coordinator. Target: per database in
 * flight, pg_restore's leader and its --jobs workers and the worker's progress session; plus the coordinator.
 */
export function connectionEstimate(
  maxParallel: number,
  jobs: number,
): { source: number; target: number; formula: string } {
  const n = connectionsNeeded({ jobs, maxParallel }) + 1;
  return { source: n, target: n, formula: `max-parallel × (jobs + 2) + 1 = ${maxParallel} × (${jobs} + 2) + 1` };
}

export async function plan(cfg: MigrateConfig, out: Output): Promise<number> {
  const tools = await resolveTools(cfg.pgBin);
  const src = await inspect(cfg.source, cfg.sourceDb);
  const tgt = await inspect(cfg.target, cfg.targetDb).catch(async (err: unknown) => {
    await src.client.end().catch(() => undefined);
    throw err;
  });
  try {
    const refusals: string[] = [];
    const warnings: string[] = [];
    try {
      warnings.push(
        ...checkServers(src.info, tgt.info, tools, { globals: cfg.migrateGlobals, rolePasswords: cfg.rolePasswords }),
      );
    } catch (err) {
      if (!(err instanceof PreflightError)) throw err;
      refusals.push(err.message);
    }
    const w = (line = "") => process.stdout.write(`${line}\n`);

    const surveyed = await survey(cfg, src.client, src.info.versionNum, tgt.client, tgt.info.versionNum);
    const { selected, skipped } = surveyed;
    const clash = await maintenanceClash(cfg, surveyed);
    if (clash) refusals.push(clash);
    const onTarget = await existingDatabases(tgt.client);
    // Databases an unfinished run between these servers created are its own: a run with these flags resumes it.
    const previous = cfg.restart
      ? undefined
      : await RunState.findUnfinished(appDir(), pairKey(src.info, tgt.info), createLogger({ level: "silent" }));
    const ours = previous?.createdDatabases() ?? new Set<string>();
    const total = selected.reduce((s, d) => s + d.sizeBytes, 0);
    w(
      `plan: ${describe(cfg.source, cfg.sourceDb)} (PostgreSQL ${src.info.version}) → ${describe(cfg.target, cfg.targetDb)} (PostgreSQL ${tgt.info.version}), ${tools.version} (from ${tools.from})`,
    );
    w();
    w(`databases: ${selected.length}, ${bytes(total)} in all, migrated largest first, ${cfg.maxParallel} at a time`);
    const dbs = new Table({
      head: ["database", "size", "owner", "encoding", "on the target"],
      style: { head: [], border: [] },
    });
    for (const d of selected) {
      const there =
        d.name === MAINTENANCE_DB
          ? "restored into the target's own"
          : !onTarget.has(d.name)
            ? "-"
            : ours.has(d.name)
              ? `created by run ${previous!.runId}`
              : "EXISTS: refused";
      dbs.push([d.name, bytes(d.sizeBytes), d.create.owner, d.create.encoding, there]);
    }
    w(dbs.toString());
    for (const x of skipped) w(`left out: ${JSON.stringify(x.name)} (${x.reason})`);
    for (const line of surveyed.tablespaces.lines) w(line);
    for (const [db, names] of surveyed.missingExtensions) {
      warnings.push(`${JSON.stringify(db)} ${extensionProblem(names)}: a run fails that database before creating it`);
    }
    const needs = await checkSourceDatabases(
      cfg.source,
      src.client,
      selected.filter((d) => !surveyed.missingExtensions.has(d.name)).map((d) => d.name),
      src.info.superuser,
      cfg.jobs,
    );
    refusals.push(...needs.refusals);
    warnings.push(...needs.warnings);
    if (surveyed.upgradeNotes.length) {
      w();
      w(`upgrade notes (PostgreSQL ${src.info.major} → ${tgt.info.major}), also in the report:`);
      for (const n of surveyed.upgradeNotes) w(`  ${noteLine(n)}`);
    }
    if (previous)
      w(
        `run ${previous.runId} (started ${previous.record.startedAt}) is unfinished: a run with these flags resumes it (--restart starts over)`,
      );
    const taken = selected.filter((d) => d.name !== MAINTENANCE_DB && onTarget.has(d.name) && !ours.has(d.name));
    if (taken.length)
      refusals.push(`the target already has database(s) ${taken.map((d) => JSON.stringify(d.name)).join(", ")}`);

    const roles = await rolesOf(src.client);
    const migrated = roles.filter((r) => r !== cfg.target.user);
    w();
    w(
      cfg.migrateGlobals
        ? `roles: ${migrated.length} from the source${roles.length !== migrated.length ? ` (the migration user ${JSON.stringify(cfg.target.user)} is left as it is on the target)` : ""}: ${migrated.join(", ") || "-"}`
        : "roles: not migrated (--no-migrate-globals)",
    );
    if (!tgt.info.superuser) {
      w(
        `the target user ${JSON.stringify(cfg.target.user)} is not a superuser: it joins the migrated roles for the run so that their objects keep their owners, and leaves them at the end${cfg.noOwner ? "; --no-owner: every restored object is owned by it" : ""}`,
      );
    }
    if (!cfg.rolePasswords) w("--no-role-passwords: login roles are created without passwords; the report lists them");

    const wanted = settingsFor(cfg.fastRestore);
    w();
    if (!Object.keys(wanted).length) w("fast-restore: off, no target setting changes");
    else if (!tgt.info.superuser) w(`fast-restore: ${cfg.fastRestore}, skipped: the target user is not a superuser`);
    else {
      const now = await settingsNow(tgt.client, Object.keys(wanted));
      const t = new Table({ head: ["target setting", "now", "during the run"], style: { head: [], border: [] } });
      for (const [name, value] of Object.entries(wanted)) t.push([name, now.get(name) ?? "?", value]);
      w(`fast-restore: ${cfg.fastRestore}, reverted at the end (and by the next run if this one crashes)`);
      w(t.toString());
      const carried = await readTargetRecord(tgt.client);
      if (carried) {
        w(
          `the target still carries the fast-restore settings of run ${carried.runId} (since ${carried.at}), never put back: "now" shows them; a run reverts them first, to ${carried.original.map((o) => `${o.name}=${o.setting}`).join(", ")} (or pg-migrate revert-settings)`,
        );
      }
    }

    const est = connectionEstimate(cfg.maxParallel, cfg.jobs);
    const [srcMax, tgtMax] = await Promise.all([maxConnections(src.client), maxConnections(tgt.client)]);
    w();
    w(`connections at the peak (${est.formula}):`);
    const conns = new Table({
      head: ["server", "pg-migrate", "max_connections", "reserved for superusers", "left for others"],
      style: { head: [], border: [] },
    });
    for (const [name, n, m] of [
      ["source", est.source, srcMax],
      ["target", est.target, tgtMax],
    ] as const) {
      conns.push([name, n, m.max, m.reserved, m.max - m.reserved - n]);
      if (n > m.max - m.reserved)
        warnings.push(
          `the ${name} allows ${m.max - m.reserved} connections (${m.reserved} more for superusers) and a run would open up to ${n}: lower --max-parallel or --jobs`,
        );
    }
    w(conns.toString());

    const volume = await probeVolume(cfg.dumpRoot);
    w();
    if (volume.notWritable) refusals.push(volume.notWritable);
    else {
      const how = chooseCompression(cfg.compress, tools.major, volume.networkFs);
      const smaller =
        how.arg === "0" || how.arg === "none"
          ? "uncompressed dumps hold no indexes, so they are smaller than the source"
          : "compressed dumps without indexes are usually much smaller";
      w(`dump volume: ${cfg.dumpRoot}: ${bytes(volume.free)} free for dumps of a ${bytes(total)} source (${smaller})`);
      w(
        `dumps: --compress ${cfg.compress} → ${how.arg === "0" ? "uncompressed" : `pg_dump --compress ${how.arg}`} (${how.why}; each worker decides on its own volume)`,
      );
      if (volume.free < minimumDumpSpace(total))
        refusals.push(`the dump volume ${cfg.dumpRoot} has too little free space`);
    }
    w(
      `workers: ${cfg.natsUrl ? `distributed, through ${withoutCredentials(cfg.natsUrl)}` : `embedded, ${plural(cfg.workers, "local worker")} and a local nats-server`}`,
    );

    for (const [c, role, user] of [
      [src.client, "source", cfg.source.user],
      [tgt.client, "target", cfg.target.user],
    ] as const) {
      const timeout = await sessionTimeoutWarning(c, role, user);
      if (timeout) warnings.push(timeout);
    }
    for (const x of warnings) out.warn(x);
    w();
    if (refusals.length) {
      w(`a run would be refused: ${refusals.join("; ")}`);
      return EXIT.preflight;
    }
    w("nothing was changed; a run with these flags would start");
    return EXIT.ok;
  } finally {
    await Promise.all([src.client.end().catch(() => undefined), tgt.client.end().catch(() => undefined)]);
  }
}

async function rolesOf(client: pg.Client): Promise<string[]> {
  const { rows } = await client.query<{ rolname: string }>(
    "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1",
  );
  return rows.map((r) => r.rolname);
}

async function settingsNow(client: pg.Client, names: string[]): Promise<Map<string, string>> {
  const { rows } = await client.query<{ name: string; value: string }>(
    "SELECT name, setting || coalesce(unit, '') AS value FROM pg_settings WHERE name = ANY($1)",
    [names],
  );
  return new Map(rows.map((r) => [r.name, r.value]));
}

async function maxConnections(client: pg.Client): Promise<{ max: number; reserved: number }> {
  const { rows } = await client.query<{ max: string; reserved: string }>(
    "SELECT current_setting('max_connections') AS max, current_setting('superuser_reserved_connections') AS reserved",
  );
  return { max: Number(rows[0]!.max), reserved: Number(rows[0]!.reserved) };
}

/**
 * The dump root as a run would find it, without creating anything: the nearest folder that exists must be one we
 * may write into (a run creates the rest there), and its free space and kind of file system are what a run gets.
 */
async function probeVolume(
  path: string,
): Promise<{ notWritable?: string; free: number; networkFs: string | undefined }> {
  for (let p = path; ; p = dirname(p)) {
    const fs = await statfs(p).catch(() => undefined);
    if (fs) {
      const writable = await access(p, constants.W_OK).then(
        () => undefined,
        (err: unknown) => err,
      );
      // /proc and /sys let root "write" and still take no new folder: creating one there fails as nothing exists.
      const pseudo =
        p !== path && PSEUDO_FS.has(fs.type)
          ? Object.assign(new Error("not a place for folders"), { code: "ENOENT" })
          : undefined;
      const problem = writable ?? pseudo;
      return {
        ...(problem ? { notWritable: dumpVolumeNotWritable(path, problem) } : {}),
        free: fs.bavail * fs.bsize,
        networkFs: networkFsName(fs.type),
      };
    }
    if (dirname(p) === p)
      return {
        notWritable: dumpVolumeNotWritable(path, Object.assign(new Error("nothing of it exists"), { code: "ENOENT" })),
        free: 0,
        networkFs: undefined,
      };
  }
}

/** statfs types of proc and sysfs (Linux magic numbers). */
const PSEUDO_FS = new Set([0x9fa0, 0x62656572]);
