// Discovery: every source database that allows connections, but the templates.
import type pg from "pg";
import type { CreateSpec } from "../shared/contracts/messages.js";
import { ConfigError } from "../shared/errors.js";

export interface SourceDatabase {
  name: string;
  sizeBytes: number;
  create: CreateSpec;
}

/** The maintenance database: it exists on every target; its user objects, when it has any, are restored into it. */
export const MAINTENANCE_DB = "postgres";

export async function discoverDatabases(client: pg.Client, versionNum: number): Promise<SourceDatabase[]> {
  // The ICU locale column moved: daticulocale in 15 and 16, datlocale from 17.
  const icu = versionNum >= 170000 ? "d.datlocale" : versionNum >= 150000 ? "d.daticulocale" : "NULL::text";
  const provider = versionNum >= 150000 ? "d.datlocprovider::text" : "'c'";
  const { rows } = await client.query<{
    name: string;
    owner: string;
    encoding: string;
    collate: string;
    ctype: string;
    provider: string;
    icu: string | null;
    size: string;
    tablespace: string;
  }>(`SELECT d.datname AS name, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,
             d.datcollate AS collate, d.datctype AS ctype, ${provider} AS provider, ${icu} AS icu,
             pg_database_size(d.oid) AS size, t.spcname AS tablespace
        FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
       WHERE d.datallowconn AND NOT d.datistemplate
       ORDER BY pg_database_size(d.oid) DESC, d.datname`);
  return rows.map((r) => ({
    name: r.name,
    sizeBytes: Number(r.size),
    create: {
      owner: r.owner,
      encoding: r.encoding,
      collate: r.collate,
      ctype: r.ctype,
      // datlocprovider (15+): 'c' libc, 'i' ICU, 'b' the builtin provider of 17.
      localeProvider: r.provider === "i" ? "icu" : r.provider === "b" ? "builtin" : "libc",
      iculocale: r.icu,
      ...(r.tablespace !== "pg_default" ? { tablespace: r.tablespace } : {}),
    },
  }));
}

export interface SourceTablespace {
  name: string;
  owner: string;
  location: string;
}

/** Databases that refuse connections (ALLOW_CONNECTIONS false): pg_dump cannot read them, so a run names them. */
export async function closedDatabases(client: pg.Client): Promise<{ name: string; reason: string }[]> {
  const { rows } = await client.query<{ name: string }>(
    "SELECT datname AS name FROM pg_database WHERE NOT datallowconn AND NOT datistemplate ORDER BY 1",
  );
  return rows.map((r) => ({
    name: r.name,
    reason:
      "does not allow connections (ALLOW_CONNECTIONS false), so pg_dump cannot read it: allow them on the source (ALTER DATABASE … ALLOW_CONNECTIONS true) to migrate it",
  }));
}

/** The source's tablespaces other than pg_default and pg_global. */
export async function tablespacesOf(client: pg.Client): Promise<SourceTablespace[]> {
  const { rows } = await client.query<SourceTablespace>(
    `SELECT spcname AS name, pg_get_userbyid(spcowner) AS owner, pg_tablespace_location(oid) AS location
       FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1`,
  );
  return rows;
}

/**
 * Pure: what happens to each source tablespace on the target, decided and said before anything is created:
 * left out (--no-tablespaces), already there, or created at --tablespace-location's path or else the source's.
 */
export function planTablespaces(
  source: SourceTablespace[],
  onTarget: Set<string>,
  opts: { none: boolean; locations: ReadonlyMap<string, string> },
): { relocate: Map<string, string>; lines: string[] } {
  for (const name of opts.locations.keys()) {
    if (!source.some((t) => t.name === name))
      throw new ConfigError(
        `--tablespace-location ${JSON.stringify(name)}: the source has no such tablespace`,
        "--tablespace-location",
      );
  }
  const relocate = new Map<string, string>();
  const lines = source.map((t) => {
    const what = `tablespace ${JSON.stringify(t.name)} (${t.location} on the source)`;
    if (opts.none) return `${what}: not created (--no-tablespaces); its objects go to the target's default tablespace`;
    if (onTarget.has(t.name)) return `${what}: already on the target, used as it is`;
    const path = opts.locations.get(t.name);
    if (path) relocate.set(t.name, path);
    return path
      ? `${what}: created at ${path} on the target (--tablespace-location)`
      : `${what}: created at the same path on the target, which needs that directory there, empty and the server's (else --tablespace-location ${t.name}=PATH, or --no-tablespaces)`;
  });
  return { relocate, lines };
}

export async function existingDatabases(client: pg.Client): Promise<Set<string>> {
  const { rows } = await client.query<{ datname: string }>("SELECT datname FROM pg_database");
  return new Set(rows.map((r) => r.datname));
}

/** The source's logical-replication subscriptions: pg_dump recreates them without connecting, so disabled. */
export async function subscriptionsOf(client: pg.Client): Promise<{ name: string; db: string }[]> {
  const { rows } = await client.query<{ name: string; db: string }>(
    "SELECT s.subname AS name, d.datname AS db FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid ORDER BY 2, 1",
  );
  return rows;
}

/** A database-name pattern as --include-db and --exclude-db take it: `*` and `?` as in a shell, the rest literal. */
export function namePattern(pattern: string): RegExp {
  const body = [...pattern]
    .map((c) => (c === "*" ? "[\\s\\S]*" : c === "?" ? "[\\s\\S]" : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
    .join("");
  return new RegExp(`^${body}$`, "u");
}

/**
 * Pure: the databases a run takes — all but the maintenance database, narrowed by --include-db and then by
 * --exclude-db — and why each other one is left out. An include pattern that matches nothing is refused: a
 * typo there would otherwise move less than the user meant.
 */
export function selectDatabases<T extends { name: string }>(
  all: T[],
  include: string[],
  exclude: string[],
  withMaintenance = false,
): { selected: T[]; skipped: { name: string; reason: string }[] } {
  const candidates = all.filter((d) => withMaintenance || d.name !== MAINTENANCE_DB);
  for (const p of include) {
    if (!candidates.some((d) => namePattern(p).test(d.name)))
      throw new ConfigError(`--include-db ${JSON.stringify(p)} matches no database on the source`, "--include-db");
  }
  const selected: T[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const d of candidates) {
    const excludedBy = exclude.find((p) => namePattern(p).test(d.name));
    if (include.length && !include.some((p) => namePattern(p).test(d.name)))
      skipped.push({ name: d.name, reason: "not matched by --include-db" });
    else if (excludedBy !== undefined)
      skipped.push({ name: d.name, reason: `excluded by --exclude-db ${JSON.stringify(excludedBy)}` });
    else selected.push(d);
  }
  return { selected, skipped };
}
