// Exit code 1 for a mismatch: a row removed from (or, with --verify checksum, changed in) a target table while pg_restore is still at work on it (after its
// COPY, before verify) makes verification name that table, and the run exits 1 with the others verified. Streamed
// (--via stream), a slice whose target COPY took fewer rows than the source sent fails its database, and with
// --verify checksum a row changed on the target after its slice is found by the post job's scan.
import assert from "node:assert/strict";
import { test } from "node:test";
import pg from "pg";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { cliEnv, readReport, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";
import { waitFor } from "../helpers/procs.js";

/** A session in db on the target, once the run has created it (a pg.Client cannot connect twice). */
function connectWhenCreated(target: LocalCluster, db: string): Promise<pg.Client> {
  return waitFor(
    `${db} on the target`,
    async () => {
      const c = new pg.Client({ ...target, database: db });
      return c.connect().then(
        () => c,
        () => undefined,
      );
    },
    60_000,
    5,
  );
}

/** Waits until the run has created `table` in the database of c. */
function tableCreated(c: pg.Client, table: string): Promise<boolean> {
  return waitFor(
    "the restore to create the table",
    async () => (await c.query("SELECT to_regclass($1) AS t", [table])).rows[0].t !== null,
    60_000,
    5,
  );
}

/** Once the run has created `leaf` and committed its COPY (verification comes only after the whole restore and
 * ANALYZE; streamed, after the post job's scan), change it on the target under an exclusive lock with `change`,
 * which must touch exactly one row. */
async function tamperAfterCopy(
  target: LocalCluster,
  db: string,
  leaf: string,
  change: (c: pg.Client) => Promise<number | null>,
): Promise<void> {
  const c = await connectWhenCreated(target, db);
  try {
    await tableCreated(c, leaf);
    await waitFor(
      "the COPY into it to commit",
      async () => (await c.query(`SELECT EXISTS (SELECT FROM ${leaf}) AS e`)).rows[0].e === true,
      60_000,
      5,
    );
    await c.query(`BEGIN; LOCK TABLE ${leaf} IN ACCESS EXCLUSIVE MODE`);
    assert.equal(await change(c), 1);
    await c.query("COMMIT");
  } finally {
    await c.end();
  }
}

test(
  "a table that differs after the restore is reported as a mismatch and the run exits 1",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", demoSql({ scale: 5 }));
        const run = startCli(
          [...serverArgs(source, target), "-m", "1", "--workers", "1"],
          cliEnv(home, source, target),
        );
        await run.waitFor(/restore "shop" started/);
        const leaf = "public.page_views_2024_01";
        await tamperAfterCopy(
          target,
          "shop",
          leaf,
          async (c) => (await c.query(`DELETE FROM ${leaf} WHERE ctid = (SELECT ctid FROM ${leaf} LIMIT 1)`)).rowCount,
        );
        const r = await run.result;
        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(
          r.stderr,
          /"shop" failed: verification found 1 difference: row-count public\.page_views_2024_01 \(source (\d+), target (\d+)\)/,
        );
        const [, src, tgt] = /row-count public\.page_views_2024_01 \(source (\d+), target (\d+)\)/.exec(r.stderr)!;
        assert.equal(Number(tgt), Number(src) - 1);
        const report = await readReport(home, r.stderr);
        assert.equal(report.status, "failed");
        for (const d of report.databases) assert.equal(d.verified, d.name !== "shop", d.name);
      },
      { nats: false },
    );
  },
);

test(
  "--verify checksum: one row changed on the target after its restore (same count, other content) is a mismatch, exit 1",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", demoSql({ scale: 5 }));
        const run = startCli(
          [...serverArgs(source, target), "-m", "1", "--workers", "1", "--verify", "checksum"],
          cliEnv(home, source, target),
        );
        await run.waitFor(/restore "shop" started/);
        const leaf = "public.page_views_2024_01";
        // One value of one row, nothing else: the row count stays the same.
        await tamperAfterCopy(target, "shop", leaf, async (c) => {
          const { rows: cols } = await c.query<{ a: string }>(
            "SELECT quote_ident(attname) AS a FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND atttypid = 'text'::regtype LIMIT 1",
            [leaf],
          );
          assert.ok(cols[0], "a text column to change");
          return (
            await c.query(
              `UPDATE ${leaf} SET ${cols[0].a} = ${cols[0].a} || ' (changed)' WHERE ctid = (SELECT ctid FROM ${leaf} LIMIT 1)`,
            )
          ).rowCount;
        });
        const r = await run.result;
        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(
          r.stderr,
          /"shop" failed: verification found 1 difference: checksum public\.page_views_2024_01 \(source -?\d+, target -?\d+\)/,
        );
        const report = await readReport(home, r.stderr);
        const shop = report.databases.find((d) => d.name === "shop")!;
        const row = shop.tableCounts.find((t) => `public.${(t as { name?: string }).name}` === leaf) as {
          source: number;
          target: number;
          sourceChecksum: string;
          targetChecksum: string;
        };
        assert.equal(row.source, row.target, "same count");
        assert.notEqual(row.sourceChecksum, row.targetChecksum, "different content");
        for (const d of report.databases) assert.equal(d.verified, d.name !== "shop", d.name);
      },
      { nats: false },
    );
  },
);

test(
  "--via stream: a row the target's COPY did not take, and one changed on the target after its slice, each fail their database by name, exit 1",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        // About 45 MB each: with -j 1, big is read in parts, one after the other.
        const big = `CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
          INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 400000) g;`;
        for (const db of ["skipping", "changed", "fine"]) await psqlExec(source, "postgres", `CREATE DATABASE ${db}`);
        await psqlExec(source, "skipping", big);
        await psqlExec(source, "changed", big);
        await psqlExec(source, "fine", "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g");
        const run = startCli(
          [
            ...serverArgs(source, target),
            "--via",
            "stream",
            "-m",
            "3",
            "-j",
            "1",
            "--workers",
            "2",
            "--verify",
            "checksum",
            "--max-deliver",
            "2",
            "--retry-delay",
            "1",
          ],
          cliEnv(home, source, target),
        );
        // As soon as the schema step has created big in "skipping": a trigger there drops its last row, which a
        // later part carries (its id is the highest, and parts are page ranges).
        const skipping = (async () => {
          const c = await connectWhenCreated(target, "skipping");
          try {
            await tableCreated(c, "big");
            await c.query(`BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE;
              CREATE FUNCTION drop_last() RETURNS trigger LANGUAGE plpgsql AS
                $$BEGIN IF NEW.id = 400000 THEN RETURN NULL; END IF; RETURN NEW; END$$;
              CREATE TRIGGER drop_last BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION drop_last();
              COMMIT`);
          } finally {
            await c.end();
          }
        })();
        // Once the first part of big in "changed" has committed: one value of a copied row changed, the count the same.
        const changed = tamperAfterCopy(
          target,
          "changed",
          "big",
          async (c) =>
            (await c.query("UPDATE big SET pad = pad || ' (changed)' WHERE ctid = (SELECT ctid FROM big LIMIT 1)"))
              .rowCount,
        );
        await Promise.all([skipping, changed]);
        const r = await run.result;
        assert.equal(r.exitCode, 1, r.stderr);
        const [, sent, took] =
          /"skipping" failed: .*"public"\."big": the source sent (\d+) rows but the target's COPY took (\d+)/.exec(
            r.stderr,
          ) ?? [];
        assert.ok(sent && took, r.stderr);
        assert.equal(Number(took), Number(sent) - 1);
        assert.match(
          r.stderr,
          /"changed" failed: verification found 1 difference: checksum public\.big \(source -?\d+, target -?\d+\)/,
        );
        const report = await readReport(home, r.stderr);
        assert.equal(report.status, "failed");
        for (const d of report.databases) assert.equal(d.verified, d.name === "fine", d.name);
        // Streamed, there is no dump to keep, and the last line does not say there is.
        assert.match(r.stderr, /2 of 3 databases failed: "changed", "skipping"$/m);
        assert.doesNotMatch(r.stderr, /the dumps are kept/);
      },
      { nats: false },
    );
  },
);
