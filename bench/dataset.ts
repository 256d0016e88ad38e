// The benchmark's source: pgbench databases (mostly blank-padded rows that gzip to a few percent) plus a share
// of realistic, poorly compressible rows (random text, numerics, timestamps, bytea) in each, tiny databases,
// and roles. Everything is generated on the source cluster itself.
import { execa } from "execa";
import pg from "pg";
import { postgresBinDir, psqlExec, type LocalCluster } from "../demo/cluster.js";
import { withClient as withServerClient } from "../shared/pg/connect.js";

export interface DatasetSpec {
  /** pgbench databases and their scale. */
  pgbenchDbs: number;
  scale: number;
  /** Rows of realistic data per database, as a share of the pgbench accounts rows (100 000 per scale unit). */
  realisticShare: number;
  tinyDbs: number;
  roles: number;
}

export const pgbenchName = (i: number) => `bench_${i}`;
export const tinyName = (i: number) => `tiny_${String(i).padStart(3, "0")}`;

export async function generate(source: LocalCluster, spec: DatasetSpec, log: (line: string) => void): Promise<void> {
  const roles = Array.from(
    { length: spec.roles },
    (_, i) => `CREATE ROLE bench_role_${i + 1} LOGIN PASSWORD 'role-pw-${i + 1}';`,
  ).join("\n");
  if (roles) await psqlExec(source, "postgres", roles);
  const pgbench = `${await postgresBinDir()}/pgbench`;
  for (let i = 1; i <= spec.pgbenchDbs; i++) {
    const db = pgbenchName(i);
    const t0 = Date.now();
    const owner = spec.roles ? ` OWNER bench_role_${((i - 1) % spec.roles) + 1}` : "";
    await psqlExec(source, "postgres", `CREATE DATABASE ${db}${owner}`);
    await execa(
      pgbench,
      ["-i", "-q", "-s", String(spec.scale), "-h", source.host, "-p", String(source.port), "-U", source.user, db],
      {
        env: { PGPASSWORD: source.password },
      },
    );
    const rows = Math.round(spec.scale * 100_000 * spec.realisticShare);
    if (rows > 0) {
      await psqlExec(
        source,
        db,
        `CREATE TABLE realistic (id bigint PRIMARY KEY, note text, amount numeric(14,4), at timestamptz, blob bytea);
         INSERT INTO realistic
         SELECT g, md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(random()::text),
                round((random() * 1e9)::numeric, 4), now() - random() * interval '3 years',
                decode(md5(random()::text) || md5(random()::text), 'hex')
           FROM generate_series(1, ${rows}) g;
         CREATE INDEX ON realistic (at);
         VACUUM ANALYZE;`,
      );
    }
    log(`generated ${db} (scale ${spec.scale}, ${rows} realistic rows) in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  }
  for (let i = 1; i <= spec.tinyDbs; i++) {
    await psqlExec(source, "postgres", `CREATE DATABASE ${tinyName(i)}`);
    await psqlExec(
      source,
      tinyName(i),
      "CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g;",
    );
  }
  if (spec.tinyDbs) log(`generated ${spec.tinyDbs} tiny databases`);
  // The generation's dirty pages written now, not by a checkpoint during the first timed run.
  await psqlExec(source, "postgres", "CHECKPOINT");
}

/**
 * One database holding one table of about `bytes` (heap, realistic rows that gzip poorly) with two indexes: the
 * cluster whose weight sits in one table. Returns the table's size with its TOAST and the indexes' size.
 */
export async function generateOneTable(
  source: LocalCluster,
  bytes: number,
  log: (line: string) => void,
): Promise<{ tableBytes: number; indexBytes: number }> {
  const t0 = Date.now();
  await psqlExec(source, "postgres", `CREATE DATABASE ${ONE_TABLE_DB}`);
  // About 130 bytes a row on the heap (tuple header included); filled in chunks so no one statement runs for long.
  const rows = Math.max(1, Math.round(bytes / 130));
  const chunk = 1_000_000;
  await psqlExec(
    source,
    ONE_TABLE_DB,
    "CREATE TABLE big (id bigint NOT NULL, account int NOT NULL, note text, amount numeric(14,4), at timestamptz)",
  );
  for (let from = 1; from <= rows; from += chunk) {
    const to = Math.min(rows, from + chunk - 1);
    await psqlExec(
      source,
      ONE_TABLE_DB,
      `INSERT INTO big SELECT g, (random() * 1e6)::int, md5(random()::text) || ' ' || md5(random()::text),
              round((random() * 1e9)::numeric, 4), now() - random() * interval '3 years'
         FROM generate_series(${from}, ${to}) g`,
    );
  }
  await psqlExec(
    source,
    ONE_TABLE_DB,
    "ALTER TABLE big ADD PRIMARY KEY (id); CREATE INDEX ON big (account); VACUUM ANALYZE big; CHECKPOINT;",
  );
  const sizes = await withClient(source, ONE_TABLE_DB, async (client) => {
    const r = await client.query<{ t: string; i: string }>(
      "SELECT pg_table_size('big')::bigint AS t, pg_indexes_size('big')::bigint AS i",
    );
    return { tableBytes: Number(r.rows[0]!.t), indexBytes: Number(r.rows[0]!.i) };
  });
  log(
    `generated ${ONE_TABLE_DB}: ${rows} rows, table ${(sizes.tableBytes / 2 ** 30).toFixed(2)} GiB, indexes ${(sizes.indexBytes / 2 ** 30).toFixed(2)} GiB, in ${((Date.now() - t0) / 1000).toFixed(1)}s`,
  );
  return sizes;
}

export const ONE_TABLE_DB = "one_table";

/** User databases of a cluster. */
export async function userDatabases(c: LocalCluster): Promise<string[]> {
  return withClient(c, "postgres", async (client) =>
    (
      await client.query<{ d: string }>(
        "SELECT datname AS d FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
      )
    ).rows.map((r) => r.d),
  );
}

/** Every table's exact row count in every user database: what each run is checked against. */
export async function rowCounts(c: LocalCluster): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const db of await userDatabases(c)) {
    await withClient(c, db, async (client) => {
      const { rows } = await client.query<{ t: string }>(
        "SELECT format('%I.%I', schemaname, relname) AS t FROM pg_stat_user_tables ORDER BY 1",
      );
      for (const r of rows) {
        const n = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${r.t}`);
        counts[`${db}/${r.t}`] = Number(n.rows[0]!.n);
      }
    });
  }
  return counts;
}

/** The project's own client wrapper, for a throwaway cluster. */
export function withClient<T>(c: LocalCluster, db: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  return withServerClient(
    { role: "bench cluster", host: c.host, port: c.port, user: c.user, password: c.password, sslmode: "disable" },
    db,
    fn,
  );
}

/** The target as it was: no user database, no role but its bootstrap superuser, settings reset. */
export async function resetTarget(t: LocalCluster): Promise<void> {
  await withClient(t, "postgres", async (client) => {
    for (const db of await userDatabasesOf(client))
      await client.query(`DROP DATABASE ${pg.escapeIdentifier(db)} WITH (FORCE)`);
    const { rows } = await client.query<{ r: string }>(
      "SELECT rolname AS r FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user",
    );
    for (const r of rows) await client.query(`DROP ROLE ${pg.escapeIdentifier(r.r)}`);
    await client.query("ALTER SYSTEM RESET ALL");
    await client.query("SELECT pg_reload_conf()");
    await client.query("CHECKPOINT");
  });
}

async function userDatabasesOf(client: pg.Client): Promise<string[]> {
  return (
    await client.query<{ d: string }>(
      "SELECT datname AS d FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'",
    )
  ).rows.map((r) => r.d);
}
