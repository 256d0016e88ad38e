// `pg-migrate plan` (also `--dry-run`): the preflight a run would make (preflight.ts), rendered — what a run would
// do, read from both servers, changing nothing on either (no lock, no dump directory, nothing on the broker). It
// exits 3 when the run would be refused, with the same words the run would end with.
import Table from "cli-table3";
import type pg from "pg";
import { withoutCredentials } from "../shared/nats.js";
import { createLogger } from "../shared/log.js";
import { appDir } from "../shared/paths.js";
import { describe } from "../shared/pg/connect.js";
import type { MigrateConfig } from "./config.js";
import { MAINTENANCE_DB } from "./discovery.js";
import { settingsFor } from "./fast-restore.js";
import { bytes, plural, type Output } from "./output.js";
import { preflight, refusalLine } from "./preflight.js";
import { noteLine } from "./upgrade-notes.js";
import { EXIT } from "./run-context.js";
import { viaLine } from "./via.js";

export async function plan(cfg: MigrateConfig, out: Output): Promise<number> {
  const pf = await preflight(cfg, appDir(), () => createLogger({ level: "silent" }));
  try {
    const w = (line = "") => process.stdout.write(`${line}\n`);
    const { tools, source, target, survey: surveyed, previous, ours, onTarget } = pf;
    const { selected, skipped } = surveyed;
    w(
      `plan: ${describe(cfg.source, cfg.sourceDb)} (PostgreSQL ${source.version}) → ${describe(cfg.target, cfg.targetDb)} (PostgreSQL ${target.version}), ${tools.version} (from ${tools.from})`,
    );
    w();
    w(
      `databases: ${selected.length}, ${bytes(pf.volume.sourceBytes)} in all, migrated largest first, ${pf.parallelism.maxParallel} at a time`,
    );
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
    for (const line of pf.notes) w(line);
    if (surveyed.upgradeNotes.length) {
      w();
      w(`upgrade notes (PostgreSQL ${source.major} → ${target.major}), also in the report:`);
      for (const n of surveyed.upgradeNotes) w(`  ${noteLine(n)}`);
    }
    if (pf.previousLine) w(`a run with these flags: ${pf.previousLine}`);

    const migrated = pf.sourceRoles.filter((r) => r !== cfg.target.user);
    w();
    w(
      cfg.migrateGlobals
        ? `roles: ${migrated.length} from the source${pf.sourceRoles.length !== migrated.length ? ` (the migration user ${JSON.stringify(cfg.target.user)} is left as it is on the target)` : ""}: ${migrated.join(", ") || "-"}`
        : "roles: not migrated (--no-migrate-globals)",
    );
    if (!target.superuser) {
      w(
        `the target user ${JSON.stringify(cfg.target.user)} is not a superuser: it joins the migrated roles for the run so that their objects keep their owners, and leaves them at the end${cfg.noOwner ? "; --no-owner: every restored object is owned by it" : ""}`,
      );
    }

    const wanted = settingsFor(cfg.fastRestore);
    w();
    if (!Object.keys(wanted).length) w("fast-restore: off, no target setting changes");
    else if (!target.superuser) w(`fast-restore: ${cfg.fastRestore}, skipped: the target user is not a superuser`);
    else {
      const now = await settingsNow(pf.tgt, Object.keys(wanted));
      const t = new Table({ head: ["target setting", "now", "during the run"], style: { head: [], border: [] } });
      for (const [name, value] of Object.entries(wanted)) t.push([name, now.get(name) ?? "?", value]);
      w(`fast-restore: ${cfg.fastRestore}, reverted at the end (and by the next run if this one crashes)`);
      w(t.toString());
    }

    const c = pf.connections;
    w();
    w(
      `connections at the peak: -j ${pf.parallelism.jobs} -m ${pf.parallelism.maxParallel}, ${c.formula} on each server`,
    );
    const conns = new Table({
      head: ["server", "pg-migrate needs", "free now", "left for others"],
      style: { head: [], border: [] },
    });
    for (const [name, n] of [
      ["source", c.source],
      ["target", c.target],
    ] as const)
      conns.push([name, c.needed, n, n - c.needed]);
    w(conns.toString());

    w();
    const vias = [...pf.vias.values()];
    if (vias.length > 0 && vias.every((v) => v === "stream")) {
      w(
        `data: streamed (--via ${cfg.via}): per database one snapshot, its tables in slices of -j ${pf.parallelism.jobs} at a time from the source straight into the target; ${cfg.dumpRoot} holds only each worker's scratch copy of a schema archive (${bytes(pf.volume.freeBytes)} free)`,
      );
    } else if (pf.compression) {
      const mixed = viaLine(pf.vias, cfg.via);
      if (mixed) w(`data: ${mixed}`);
      const how = pf.compression;
      const smaller =
        how.arg === "0" || how.arg === "none"
          ? "uncompressed dumps hold no indexes, so they are smaller than the source"
          : "compressed dumps without indexes are usually much smaller";
      w(
        `dump volume: ${cfg.dumpRoot}: ${bytes(pf.volume.freeBytes)} free for dumps of a ${bytes(pf.volume.sourceBytes)} source (${smaller})`,
      );
      w(
        `dumps: --compress ${cfg.compress} → ${how.arg === "0" ? "uncompressed" : `pg_dump --compress ${how.arg}`} (${how.why}; each worker decides on its own volume)`,
      );
    }
    w(
      `workers: ${pf.broker.embedded ? `embedded, ${plural(cfg.workers, "local worker")} and a local nats-server (${pf.broker.bin})` : `distributed, through ${withoutCredentials(pf.broker.url)}`}`,
    );

    for (const x of pf.warnings) out.warn(x);
    w();
    if (pf.refusals.length) {
      w(`a run would be refused: ${refusalLine(pf.refusals)}`);
      return EXIT.preflight;
    }
    w("nothing was changed; a run with these flags would start");
    return EXIT.ok;
  } finally {
    await pf.close();
  }
}

async function settingsNow(client: pg.Client, names: string[]): Promise<Map<string, string>> {
  const { rows } = await client.query<{ name: string; value: string }>(
    "SELECT name, setting || coalesce(unit, '') AS value FROM pg_settings WHERE name = ANY($1)",
    [names],
  );
  return new Map(rows.map((r) => [r.name, r.value]));
}
