// verify: lists and counts the target's tables exactly as the dump counted the source's (checksums over the
// source's columns by name), compares them with the manifest, and names every difference; what pg_dump itself
// cannot preserve (an inheritance child's column order, a refreshed materialized view) is a named warning. Then it
// applies the database's own properties (settings, connection limit, comment, grants), the one change this step
// makes: after the checks, so a connection limit cannot hinder them, and also when they found a difference, so a
// false alarm or a real one leaves no second difference behind.
import { join, relative } from "node:path";
import {
  CONTRACT_VERSION,
  type Manifest,
  type Mismatch,
  type VerifyTable,
  type VerifyWarning,
} from "../shared/contracts/messages.js";
import { withClient } from "../shared/pg/connect.js";
import { contentsOf } from "../shared/pg/catalog.js";
import { knownSettings } from "../shared/pg/settings.js";
import { serverFor, type Handler } from "./context.js";
import { applyDatabaseProperties } from "./db-properties.js";
import { readManifest } from "./dump.js";
import { writeFileAtomic } from "./files.js";

export const VERIFY_FILE = "verify.json";
/** Mismatches beyond this many are counted in the detail file, not carried in the event. */
const MISMATCHES_IN_EVENT = 100;

export const verify: Handler<"verify"> = async (job, run, ctx) => {
  const dir = join(ctx.dumpRoot, job.dumpPath);
  const manifest = await readManifest(dir);
  const server = serverFor("target", job.target, ctx);
  // The dump hashed the source's tables (--verify checksum): hash the target's the same way.
  const checksum = manifest.tables.some((t) => t.checksum !== undefined);
  const sourceColumns = new Map(manifest.tables.map((t) => [tableKey(t), t.columns]));
  // The source's columns, in the source's order, as the source hashed them; the target's own when it lacks one of
  // them (compare then names the columns that differ).
  const hashColumns = (t: { schema: string; name: string; columns: string[] }) => {
    const cols = sourceColumns.get(tableKey(t));
    return cols && cols.every((c) => t.columns.includes(c)) ? cols : t.columns;
  };
  const { target, known } = await withClient(
    server,
    job.db.name,
    async (c) => ({ target: await contentsOf(c, { checksum, hashColumns }), known: await knownSettings(c) }),
    run.signal,
  );

  const { tables, mismatches, warnings } = compare(manifest, target);
  // A database with none of its own (the manifest says so) spares the listing of the dump.
  // A database with none of its own has nothing left unapplied.
  let properties: { applied: boolean; why?: string; skipped?: string[]; none?: boolean } = {
    applied: true,
    ...(manifest.databaseProperties === false ? { none: true } : {}),
  };
  if (manifest.databaseProperties !== false) {
    const { mismatches: failed, skipped } = await applyDatabaseProperties(
      ctx.tools,
      dir,
      server,
      job.db.name,
      run.signal,
      known,
    );
    mismatches.push(...failed);
    if (failed.length)
      properties = {
        applied: false,
        why: `${failed.length} of its statements failed (listed as database-property mismatches)`,
      };
    // Settings the target's major no longer knows: left out, named (the upgrade notes said so before the run).
    if (skipped.length) properties.skipped = skipped;
  }
  const detailPath = join(dir, VERIFY_FILE);
  await writeFileAtomic(detailPath, JSON.stringify({ v: CONTRACT_VERSION, tables }));
  return {
    kind: "verify",
    ok: mismatches.length === 0,
    tables: tables.length,
    rows: target.tables.reduce((sum, t) => sum + t.rows, 0),
    sequences: target.sequences.length,
    mismatches: mismatches.slice(0, MISMATCHES_IN_EVENT),
    warnings: warnings.slice(0, MISMATCHES_IN_EVENT),
    properties,
    detailPath: relative(ctx.dumpRoot, detailPath),
  };
};

const tableKey = (t: { schema: string; name: string }) => JSON.stringify([t.schema, t.name]);

type Side = Pick<Manifest, "tables" | "sequences" | "largeObjects">;

/** Pure: every table on either side, every difference between the two, and what pg_dump could not preserve. */
export function compare(
  source: Side,
  target: Side,
): { tables: VerifyTable[]; mismatches: Mismatch[]; warnings: VerifyWarning[] } {
  const key = tableKey;
  const label = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;
  const targetTables = new Map(target.tables.map((t) => [key(t), t]));
  const tables: VerifyTable[] = [];
  const mismatches: Mismatch[] = [];
  const warnings: VerifyWarning[] = [];

  for (const s of source.tables) {
    const t = targetTables.get(key(s));
    targetTables.delete(key(s));
    const sums = s.checksum === undefined ? {} : { sourceChecksum: s.checksum, targetChecksum: t?.checksum ?? null };
    tables.push({ schema: s.schema, name: s.name, source: s.rows, target: t ? t.rows : null, ...sums });
    if (!t) {
      mismatches.push({ what: "table-missing", object: label(s), source: String(s.rows), target: null });
      continue;
    }
    const columnsDiffer =
      s.columns && t.columns && [...s.columns].sort().join("\0") !== [...t.columns].sort().join("\0");
    if (columnsDiffer)
      mismatches.push({
        what: "columns",
        object: label(s),
        source: s.columns!.join(", "),
        target: t.columns!.join(", "),
      });
    else if (s.columns && t.columns && s.columns.join("\0") !== t.columns.join("\0")) {
      warnings.push({
        what: "column-order",
        object: label(s),
        source: s.columns.join(", "),
        target: t.columns.join(", "),
        note: "pg_dump recreates an inheritance child with its parent's columns first; the content matches column by column, but SELECT * and INSERT without a column list see the target's order",
      });
    }
    const refreshed = (source: string, target: string | null) =>
      warnings.push({
        what: "matview-refreshed",
        object: label(s),
        source,
        target,
        note: "pg_restore refreshed this materialized view, which was stale on the source: it now holds what its query returns from the migrated tables",
      });
    if (t.rows !== s.rows) {
      if (s.matview) refreshed(`${s.rows} rows`, `${t.rows} rows`);
      else mismatches.push({ what: "row-count", object: label(s), source: String(s.rows), target: String(t.rows) });
    } else if (s.checksum !== undefined && t.checksum !== s.checksum && !columnsDiffer) {
      if (s.matview) refreshed(`checksum ${s.checksum}`, `checksum ${t.checksum ?? "none"}`);
      else mismatches.push({ what: "checksum", object: label(s), source: s.checksum, target: t.checksum ?? null });
    }
  }
  for (const t of targetTables.values()) {
    tables.push({ schema: t.schema, name: t.name, source: null, target: t.rows });
    mismatches.push({ what: "table-extra", object: label(t), source: null, target: String(t.rows) });
  }

  const targetSeqs = new Map(target.sequences.map((s) => [key(s), s]));
  for (const s of source.sequences) {
    const t = targetSeqs.get(key(s));
    const show = (v: { lastValue: string | null; isCalled: boolean } | undefined) =>
      v ? `${v.lastValue ?? "null"}${v.isCalled ? "" : " (not called)"}` : null;
    if (!t || t.lastValue !== s.lastValue || t.isCalled !== s.isCalled) {
      mismatches.push({ what: "sequence", object: label(s), source: show(s), target: show(t) });
    }
  }
  if (source.largeObjects !== target.largeObjects) {
    mismatches.push({
      what: "large-objects",
      object: "pg_largeobject_metadata",
      source: String(source.largeObjects),
      target: String(target.largeObjects),
    });
  }
  return { tables, mismatches, warnings };
}
