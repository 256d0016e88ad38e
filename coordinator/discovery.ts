// Discovery: every source database that allows connections, but the templates.
import type pg from "pg";
import type { CreateSpec } from "../shared/contracts/messages.js";

export interface SourceDatabase {
  name: string;
  sizeBytes: number;
  create: CreateSpec;
}

/** The maintenance database: it exists on every target, so its contents are not moved in this version. */
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
  }>(`SELECT d.datname AS name, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding,
             d.datcollate AS collate, d.datctype AS ctype, ${provider} AS provider, ${icu} AS icu,
             pg_database_size(d.oid) AS size
        FROM pg_database d
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
      localeProvider: r.provider === "i" ? "icu" : "libc",
      iculocale: r.icu,
    },
  }));
}

/** User objects in a database (relations, functions, types outside the system schemas). */
export async function userObjectCount(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: string }>(`
    SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
               AND n.nspname NOT LIKE 'pg\\_temp\\_%')
         + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
         + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql') AS n`);
  return Number(rows[0]?.n ?? 0);
}

export async function existingDatabases(client: pg.Client): Promise<Set<string>> {
  const { rows } = await client.query<{ datname: string }>("SELECT datname FROM pg_database");
  return new Set(rows.map((r) => r.datname));
}
