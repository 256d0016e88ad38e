// The catalog reads that decide work per database, against a real server: whether a database has properties of
// its own to apply after verification (each kind alone is enough; a plain database has none), and that the
// restore's ANALYZE reaches every user relation but no system catalog.
import assert from "node:assert/strict";
import { test } from "node:test";
import { psqlExec, startCluster } from "../../demo/cluster.js";
import { withClient } from "../../shared/pg/connect.js";
import { analyzeUserTables, hasDatabaseProperties } from "../../shared/pg/catalog.js";
import { query } from "../helpers/cli.js";
import { waitFor } from "../helpers/procs.js";

test(
  "database properties are noticed one kind at a time; ANALYZE takes the user's relations only",
  { timeout: 120_000 },
  async () => {
    const c = await startCluster({ name: "catalog", password: "catalog-Pw-1" });
    try {
      const server = { role: "source" as const, host: c.host, port: c.port, user: c.user, password: c.password };
      const kinds: Record<string, string> = {
        plain: "",
        setting: "ALTER DATABASE setting SET work_mem = '8MB'",
        role_setting: "CREATE ROLE someone; ALTER ROLE someone IN DATABASE role_setting SET work_mem = '8MB'",
        limit: 'ALTER DATABASE "limit" CONNECTION LIMIT 7',
        comment: "COMMENT ON DATABASE comment IS 'kept'",
        grants: "REVOKE CONNECT ON DATABASE grants FROM PUBLIC",
        template: "ALTER DATABASE template IS_TEMPLATE true",
      };
      for (const [db, sql] of Object.entries(kinds)) {
        await psqlExec(c, "postgres", `CREATE DATABASE "${db}"`);
        if (sql) await psqlExec(c, "postgres", sql);
        assert.equal(await withClient(server, db, hasDatabaseProperties), db !== "plain", db);
      }

      await psqlExec(
        c,
        "plain",
        "CREATE SCHEMA s; CREATE TABLE s.t (id int); INSERT INTO s.t SELECT generate_series(1, 100); CREATE TABLE p (id int) PARTITION BY RANGE (id); CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (1000); INSERT INTO p SELECT generate_series(1, 50); CREATE MATERIALIZED VIEW mv AS SELECT 1 AS one",
      );
      const sysAnalyzed = async () =>
        Number(
          (
            await query<{ n: string }>(
              c,
              "plain",
              "SELECT coalesce(sum(analyze_count), 0) AS n FROM pg_stat_sys_tables",
            )
          )[0]!.n,
        );
      const before = await sysAnalyzed();
      assert.equal(await withClient(server, "plain", analyzeUserTables), 4);
      const analyzed = await query<{ rel: string }>(
        c,
        "plain",
        "SELECT DISTINCT starelid::regclass::text AS rel FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid WHERE c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) ORDER BY 1",
      );
      assert.deepEqual(
        analyzed.map((r) => r.rel),
        ["mv", "p", "p1", "s.t"],
      );
      // The session's statistics arrive when it ends: once the user tables' analyses are counted, the catalogs' are too.
      await waitFor(
        "the ANALYZE session's statistics",
        async () =>
          Number(
            (
              await query<{ n: string }>(
                c,
                "plain",
                "SELECT coalesce(sum(analyze_count), 0) AS n FROM pg_stat_user_tables",
              )
            )[0]!.n,
          ) >= 2,
        10_000,
        100,
      );
      assert.equal(await sysAnalyzed(), before, "no system catalog analyzed");
    } finally {
      await c.stop();
    }
  },
);
