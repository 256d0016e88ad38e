// verify: lists and counts the target's tables exactly as the dump counted the source's, compares them with the
// manifest, and names every difference; then, and only for a database that matched, applies its own properties
// (settings, connection limit, comment, grants), the one change this step makes.
import { join, relative } from "node:path";
import { CONTRACT_VERSION, type Manifest, type Mismatch, type VerifyTable } from "../shared/contracts/messages.js";
import { withClient } from "../shared/pg/connect.js";
import { contentsOf } from "../shared/pg/catalog.js";
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
  const target = await withClient(server, job.db.name, (c) => contentsOf(c, { checksum }), run.signal);

  const { tables, mismatches } = compare(manifest, target);
  // Only a verified database gets its own properties: a connection limit or a setting must not hinder the checks.
  // A database with none of its own (the manifest says so) spares the listing of the dump.
  if (mismatches.length === 0 && manifest.databaseProperties !== false) mismatches.push(...(await applyDatabaseProperties(ctx.tools, dir, server, job.db.name, run.signal)));
  const detailPath = join(dir, VERIFY_FILE);
  await writeFileAtomic(detailPath, JSON.stringify({ v: CONTRACT_VERSION, tables }));
  return {
    kind: "verify",
    ok: mismatches.length === 0,
    tables: tables.length,
    rows: target.tables.reduce((sum, t) => sum + t.rows, 0),
    sequences: target.sequences.length,
    mismatches: mismatches.slice(0, MISMATCHES_IN_EVENT),
    detailPath: relative(ctx.dumpRoot, detailPath),
  };
};

type Side = Pick<Manifest, "tables" | "sequences" | "largeObjects">;

/** Pure: every table on either side, and every difference between the two. */
export function compare(source: Side, target: Side): { tables: VerifyTable[]; mismatches: Mismatch[] } {
  const key = (t: { schema: string; name: string }) => JSON.stringify([t.schema, t.name]);
  const label = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;
  const targetTables = new Map(target.tables.map((t) => [key(t), t]));
  const tables: VerifyTable[] = [];
  const mismatches: Mismatch[] = [];

  for (const s of source.tables) {
    const t = targetTables.get(key(s));
    targetTables.delete(key(s));
    const sums = s.checksum === undefined ? {} : { sourceChecksum: s.checksum, targetChecksum: t?.checksum ?? null };
    tables.push({ schema: s.schema, name: s.name, source: s.rows, target: t ? t.rows : null, ...sums });
    if (!t) mismatches.push({ what: "table-missing", object: label(s), source: String(s.rows), target: null });
    else if (t.rows !== s.rows) mismatches.push({ what: "row-count", object: label(s), source: String(s.rows), target: String(t.rows) });
    else if (s.checksum !== undefined && t.checksum !== s.checksum) mismatches.push({ what: "checksum", object: label(s), source: s.checksum, target: t.checksum ?? null });
  }
  for (const t of targetTables.values()) {
    tables.push({ schema: t.schema, name: t.name, source: null, target: t.rows });
    mismatches.push({ what: "table-extra", object: label(t), source: null, target: String(t.rows) });
  }

  const targetSeqs = new Map(target.sequences.map((s) => [key(s), s]));
  for (const s of source.sequences) {
    const t = targetSeqs.get(key(s));
    const show = (v: { lastValue: string | null; isCalled: boolean } | undefined) => (v ? `${v.lastValue ?? "null"}${v.isCalled ? "" : " (not called)"}` : null);
    if (!t || t.lastValue !== s.lastValue || t.isCalled !== s.isCalled) {
      mismatches.push({ what: "sequence", object: label(s), source: show(s), target: show(t) });
    }
  }
  if (source.largeObjects !== target.largeObjects) {
    mismatches.push({ what: "large-objects", object: "pg_largeobject_metadata", source: String(source.largeObjects), target: String(target.largeObjects) });
  }
  return { tables, mismatches };
}
