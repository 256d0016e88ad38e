// Catalog queries shared by the dump (source side) and the verify (target side) jobs, so both sides count
// exactly the same set of relations the same way.
import type pg from "pg";
import type { Manifest, SequenceValue, TableCount } from "../contracts/messages.js";
import { ident, qualified } from "./quote.js";

export interface TableRef {
  schema: string;
  name: string;
}

/** A table as verification compares it: its columns in their physical order, and whether it is a materialized view. */
export interface TableInfo extends TableRef {
  columns: string[];
  matview: boolean;
}

/** The schemas of the user's relations: not the system's, TOAST's or temporary ones (`n` is pg_namespace). */
export const USER_SCHEMAS = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'`;

/**
 * Relations that hold rows pg_dump carries: ordinary tables and partitions (counted ONLY, so a partitioned
 * parent's rows are counted once, in its leaves) and populated materialized views (pg_restore refreshes them),
 * each with its columns in physical (attnum) order.
 */
const TABLES_SQL = `
  SELECT n.nspname AS schema, c.relname AS name, c.relkind = 'm' AS matview,
         ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'm')
     AND (c.relkind <> 'm' OR c.relispopulated)
     AND c.relpersistence <> 't'
     AND ${USER_SCHEMAS}
   ORDER BY 1, 2`;

export async function listTables(client: pg.Client): Promise<TableInfo[]> {
  const { rows } = await client.query<TableInfo>(TABLES_SQL);
  return rows;
}

const COUNT_BATCH = 100;

/**
 * ANALYZE of what a plain ANALYZE would take of the user's: tables, partitioned tables and materialized views
 * outside the system schemas — but not the system catalogs, which a fresh database has a hundred of and which
 * made a bare ANALYZE cost a tiny database more than its restore. Returns how many relations were analyzed.
 */
export async function analyzeUserTables(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ q: string }>(`
    SELECT format('%I.%I', n.nspname, c.relname) AS q
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't' AND ${USER_SCHEMAS}`);
  for (let i = 0; i < rows.length; i += 1000) {
    await client.query(
      `ANALYZE ${rows
        .slice(i, i + 1000)
        .map((r) => r.q)
        .join(", ")}`,
    );
  }
  return rows.length;
}

/**
 * Each table's exact row count and, with `checksum`, an order-independent hash of its content: the sum of every
 * row's md5 (its first 64 bits), as text. The row is built from the columns by name, in the order `hashColumns`
 * gives (the source's, on both sides), so a table whose columns another server keeps in another physical order
 * (an inheritance child pg_dump recreated) hashes alike. Row text depends on a few session settings, so both
 * sides set them alike (setChecksumSession) before hashing.
 */
export async function countRows(
  client: pg.Client,
  tables: TableInfo[],
  opts: { checksum?: boolean; hashColumns?: (t: TableInfo) => string[] } = {},
): Promise<TableCount[]> {
  const out: TableCount[] = [];
  const hash = (t: TableInfo) => {
    if (!opts.checksum) return "";
    const row = `ROW(${(opts.hashColumns?.(t) ?? t.columns).map((c) => `r.${ident(c)}`).join(", ")})`;
    return `, coalesce(sum(('x' || left(md5(${row}::text), 16))::bit(64)::bigint::numeric), 0)::text AS h`;
  };
  for (let i = 0; i < tables.length; i += COUNT_BATCH) {
    const batch = tables.slice(i, i + COUNT_BATCH);
    const sql = batch
      .map((t, j) => `SELECT ${j} AS i, count(*) AS n${hash(t)} FROM ONLY ${qualified(t.schema, t.name)} AS r`)
      .join(" UNION ALL ");
    const { rows } = await client.query<{ i: number; n: string; h?: string }>(sql);
    const byIndex = new Map(rows.map((r) => [Number(r.i), r]));
    batch.forEach((t, j) => {
      const r = byIndex.get(j);
      out.push({
        schema: t.schema,
        name: t.name,
        rows: Number(r?.n ?? 0),
        columns: t.columns,
        ...(t.matview ? { matview: true } : {}),
        ...(opts.checksum ? { checksum: r?.h ?? "0" } : {}),
      });
    });
  }
  return out;
}

/** The settings a row's text depends on, the same on both sides of a checksum. */
export async function setChecksumSession(client: pg.Client): Promise<void> {
  await client.query(
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'",
  );
}

/**
 * What both sides of a migration count, the same way: every table's rows (and with `checksum` its content hash,
 * under the session settings row text depends on), every sequence's value, and the large objects. The dump reads
 * it in its snapshot on the source, verification on the target.
 */
export async function contentsOf(
  client: pg.Client,
  opts: { checksum: boolean; hashColumns?: (t: TableInfo) => string[] },
): Promise<Pick<Manifest, "tables" | "sequences" | "largeObjects">> {
  if (opts.checksum) await setChecksumSession(client);
  return {
    tables: await countRows(client, await listTables(client), opts),
    sequences: await sequenceValues(client),
    largeObjects: await largeObjectCount(client),
  };
}

export async function sequenceValues(client: pg.Client): Promise<SequenceValue[]> {
  const { rows: seqs } = await client.query<TableRef>(`
    SELECT n.nspname AS schema, c.relname AS name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_temp\\_%'
     ORDER BY 1, 2`);
  const out: SequenceValue[] = [];
  for (let i = 0; i < seqs.length; i += COUNT_BATCH) {
    const batch = seqs.slice(i, i + COUNT_BATCH);
    const sql = batch
      .map((s, j) => `SELECT ${j} AS i, last_value::text AS v, is_called AS c FROM ${qualified(s.schema, s.name)}`)
      .join(" UNION ALL ");
    const { rows } = await client.query<{ i: number; v: string | null; c: boolean }>(sql);
    const byIndex = new Map(rows.map((r) => [Number(r.i), r]));
    batch.forEach((s, j) => {
      const r = byIndex.get(j);
      out.push({ schema: s.schema, name: s.name, lastValue: r?.v ?? null, isCalled: r?.c ?? false });
    });
  }
  return out;
}

export async function largeObjectCount(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: string }>("SELECT count(*) AS n FROM pg_largeobject_metadata");
  return Number(rows[0]?.n ?? 0);
}

/**
 * Whether the current database has anything of its own that pg_dump --create writes after its CREATE DATABASE:
 * settings (for everyone or for a role), a connection limit, template status, a comment, a security label or
 * grants. When it has none, there is nothing to apply after verification.
 */
export async function hasDatabaseProperties(client: pg.Client): Promise<boolean> {
  const { rows } = await client.query<{ has: boolean }>(`
    SELECT d.datacl IS NOT NULL OR d.datconnlimit <> -1 OR d.datistemplate OR NOT d.datallowconn
        OR EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
        OR EXISTS (SELECT 1 FROM pg_shdescription c WHERE c.objoid = d.oid AND c.classoid = 'pg_database'::regclass)
        OR EXISTS (SELECT 1 FROM pg_shseclabel l WHERE l.objoid = d.oid AND l.classoid = 'pg_database'::regclass) AS has
      FROM pg_database d WHERE d.datname = current_database()`);
  return rows[0]?.has ?? true;
}

/** User objects in a database (relations, functions, types outside the system schemas). */
export async function userObjectCount(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: string }>(`
    SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE ${USER_SCHEMAS})
         + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
         + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql') AS n`);
  return Number(rows[0]?.n ?? 0);
}
