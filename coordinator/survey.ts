// What a run would take from the source, and what the target says to it, read the same way by a run and by plan:
// the databases (those taken, those left out and why), the maintenance database's user objects, what becomes
// of each tablespace, and the extensions the target lacks.
import type pg from "pg";
import { userObjectCount } from "../shared/pg/catalog.js";
import { withClient } from "../shared/pg/connect.js";
import type { MigrateConfig } from "./config.js";
import {
  closedDatabases,
  discoverDatabases,
  MAINTENANCE_DB,
  planTablespaces,
  selectDatabases,
  tablespacesOf,
  type SourceDatabase,
} from "./discovery.js";
import { extensionCheck } from "./checks.js";
import { plural } from "./output.js";
import { upgradeNotes as notesFor, type UpgradeNote } from "./upgrade-notes.js";

export interface Survey {
  selected: SourceDatabase[];
  /** Left out by --include-db / --exclude-db, and those that refuse connections (also in `closed`). */
  skipped: { name: string; reason: string }[];
  closed: { name: string; reason: string }[];
  /** User objects in the source's maintenance database: it is taken when there are any. */
  maintenanceObjects: number;
  tablespaces: ReturnType<typeof planTablespaces>;
  missingExtensions: Map<string, string[]>;
  /** What crossing majors changes for these databases and roles (empty between servers of one major). */
  upgradeNotes: UpgradeNote[];
}

export async function survey(
  cfg: MigrateConfig,
  src: pg.Client,
  sourceVersionNum: number,
  tgt: pg.Client,
  targetVersionNum: number,
): Promise<Survey> {
  const all = await discoverDatabases(src, sourceVersionNum);
  const maintenanceObjects = all.some((d) => d.name === MAINTENANCE_DB)
    ? await withClient(cfg.source, MAINTENANCE_DB, userObjectCount)
    : 0;
  const { selected, skipped } = selectDatabases(all, cfg.includeDb, cfg.excludeDb, maintenanceObjects > 0);
  const closed = await closedDatabases(src);
  const targetTablespaces = new Set(
    (await tgt.query<{ n: string }>("SELECT spcname AS n FROM pg_tablespace")).rows.map((r) => r.n),
  );
  const tablespaces = planTablespaces(await tablespacesOf(src), targetTablespaces, {
    none: cfg.noTablespaces,
    locations: cfg.tablespaceLocations,
  });
  const missingExtensions = await extensionCheck(
    cfg.source,
    selected.map((d) => d.name),
    tgt,
  );
  const upgradeNotes = await notesFor({
    source: cfg.source,
    src,
    srcNum: sourceVersionNum,
    tgt,
    tgtNum: targetVersionNum,
    databases: selected.map((d) => d.name),
    globals: cfg.migrateGlobals,
  });
  return {
    selected,
    skipped: [...skipped, ...closed],
    closed,
    maintenanceObjects,
    tablespaces,
    missingExtensions,
    upgradeNotes,
  };
}

/** Why the source's maintenance database cannot go into the target's: that one holds user objects of its own. */
export async function maintenanceClash(cfg: MigrateConfig, s: Survey): Promise<string | undefined> {
  if (!s.selected.some((d) => d.name === MAINTENANCE_DB)) return undefined;
  const theirs = await withClient(cfg.target, MAINTENANCE_DB, userObjectCount);
  if (theirs === 0) return undefined;
  return `the source's "${MAINTENANCE_DB}" database holds ${plural(s.maintenanceObjects, "user object")} to restore into the target's, which holds ${theirs} of its own: empty the target's "${MAINTENANCE_DB}", or leave it out with --exclude-db ${MAINTENANCE_DB}`;
}
