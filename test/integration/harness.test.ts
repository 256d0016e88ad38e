// The test harness itself: throwaway clusters that insist on their own SCRAM password, a NATS server that
// answers and survives a restart, the demo data loading, and nothing left on disk afterwards.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { test } from "node:test";
import { psqlExec, type LocalCluster, type PgLogin } from "../../demo/cluster.js";
import { demoDatabases, demoRoles, demoSql, ODD_DATABASE } from "../../demo/generate.js";
import { withTestEnv } from "../helpers/env.js";

const query = async (c: PgLogin, db: string, sql: string): Promise<string[]> =>
  (await psqlExec(c, db, sql, { tuplesOnly: true })).split("\n").filter(Boolean);

const count = async (c: PgLogin, db: string, table: string): Promise<number> =>
  Number((await query(c, db, `SELECT count(*) FROM ${table}`))[0]);

/** Resolves with the first bytes the server sends, or rejects if nothing listens. */
function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.setTimeout(3000, () => socket.destroy(new Error(`no greeting from 127.0.0.1:${port}`)));
    socket.once("error", reject);
    socket.once("data", (chunk: Buffer) => {
      socket.destroy();
      resolve(chunk.toString("utf8"));
    });
  });
}

async function assertLoginOnlyWithOwnPassword(own: LocalCluster, other: LocalCluster): Promise<void> {
  assert.deepEqual(await query(own, "postgres", "SELECT current_user"), [own.user]);
  // Password checked by SCRAM for every kind of connection; the stored verifier is a SCRAM one.
  assert.deepEqual(await query(own, "postgres", "SELECT DISTINCT auth_method FROM pg_hba_file_rules"), [
    "scram-sha-256",
  ]);
  assert.deepEqual(
    await query(own, "postgres", "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = current_user"),
    ["SCRAM-SHA-256$"],
  );
  for (const host of [own.host, own.socketDir]) {
    await assert.rejects(
      psqlExec({ ...own, host, password: other.password }, "postgres", "SELECT 1"),
      /password authentication failed/,
      `cluster on port ${own.port} via ${host} must reject the other cluster's password`,
    );
  }
}

test("harness: SCRAM-only clusters, NATS, demo data, full cleanup", { timeout: 180_000 }, async () => {
  const leftovers: string[] = [];
  const ports: number[] = [];
  let stopAgain: Array<() => Promise<void>> = [];

  await withTestEnv(async ({ source, target, nats, home }) => {
    leftovers.push(source.baseDir, target.baseDir, source.socketDir, target.socketDir, nats.storeDir, home);
    ports.push(source.port, target.port, nats.port);
    stopAgain = [source.stop, target.stop, nats.stop];
    assert.ok(existsSync(source.dataDir) && existsSync(target.dataDir) && existsSync(home));
    assert.notEqual(source.password, target.password);
    assert.notEqual(source.port, target.port);

    await assertLoginOnlyWithOwnPassword(source, target);
    await assertLoginOnlyWithOwnPassword(target, source);

    assert.match(await greeting(nats.port), /^INFO \{/);
    assert.equal(nats.url, `nats://127.0.0.1:${nats.port}`);
    await nats.restart();
    assert.match(await greeting(nats.port), /^INFO \{/, "NATS answers again on the same port after restart()");

    await psqlExec(source, "postgres", demoSql());
    const databases = await query(source, "postgres", "SELECT datname FROM pg_database");
    for (const name of demoDatabases) assert.ok(databases.includes(name), `database ${JSON.stringify(name)} exists`);
    const roles = await query(source, "postgres", "SELECT rolname FROM pg_roles");
    for (const name of demoRoles) assert.ok(roles.includes(name), `role ${name} exists`);

    for (const table of [
      "customers",
      "products",
      "orders",
      "order_items",
      "page_views",
      "page_views_2024_03",
      "daily_revenue",
    ]) {
      assert.ok((await count(source, "shop", table)) > 0, `shop.${table} has rows`);
    }
    assert.deepEqual(
      await query(source, "shop", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"),
      ["app_owner"],
    );
    assert.ok((await count(source, "analytics", 'public."EventLog"')) > 0);
    assert.equal(await count(source, ODD_DATABASE, "notes"), 2);
    // The target stays empty: the demo went to the source only.
    assert.ok(!(await query(target, "postgres", "SELECT datname FROM pg_database")).includes("shop"));
  });

  for (const dir of leftovers) assert.ok(!existsSync(dir), `${dir} is removed`);
  for (const port of ports) await assert.rejects(greeting(port), /ECONNREFUSED/, `nothing listens on ${port} any more`);
  for (const stop of stopAgain) await stop(); // a second stop() is harmless
});
