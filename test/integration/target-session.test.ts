// The coordinator's session on the target comes back: a target that ends idle sessions after 4 s, and a
// pg_terminate_backend of the session that holds the run's lock in the middle of the run, with a second coordinator
// from another home trying to get in right after. The run finishes, the second one is refused, nothing is left.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import pg from "pg";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { cliEnv, errorLines, query, readReport, runCli, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertEndState } from "../helpers/faults.js";
import { startCli } from "../helpers/live.js";
import { toolsOn, waitFor } from "../helpers/procs.js";
import { lockOnTarget, sliceWaiting } from "../helpers/slices.js";

/** Holds a lock on one of shop's tables, so that the run waits (its sessions idle) for as long as the test says. */
async function holdShop(source: {
  host: string;
  port: number;
  user: string;
  password: string;
}): Promise<{ release(): Promise<void> }> {
  const blocker = new pg.Client({
    host: source.host,
    port: source.port,
    user: source.user,
    password: source.password,
    database: "shop",
  });
  await blocker.connect();
  await blocker.query("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await blocker.query("COMMIT").catch(() => undefined);
      await blocker.end().catch(() => undefined);
    },
  };
}

test(
  "a target that ends idle sessions after 4 s: plan says so, and a default run finishes",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
        await psqlExec(target, "postgres", "ALTER SYSTEM SET idle_session_timeout = '4s'; SELECT pg_reload_conf();");
        const before = await settingsOf(target);
        const planned = await runCli(["plan", ...serverArgs(source, target)], cliEnv(home, source, target));
        assert.equal(planned.exitCode, 0, planned.stderr);
        assert.match(
          planned.stderr,
          /warning: the target ends idle sessions \(idle_session_timeout=4000ms\): pg-migrate turns this off for its own sessions/,
        );

        // The run waits on the lock for 8 s, its coordinator's target session idle all that time.
        const hold = await holdShop(source);
        try {
          const run = startCli(serverArgs(source, target), cliEnv(home, source, target));
          await run.waitFor(/dump "shop" started/);
          await new Promise((r) => setTimeout(r, 8_000));
          await hold.release();
          const r = await run.result;
          assert.equal(r.exitCode, 0, r.stderr);
          assert.doesNotMatch(r.stderr, /not queryable|connection error/);
        } finally {
          await hold.release();
        }
        await assertEndState(env, before, demoDatabases);
        await psqlExec(target, "postgres", "ALTER SYSTEM RESET idle_session_timeout; SELECT pg_reload_conf();");
      },
      { nats: false },
    );
  },
);

test(
  "pg_terminate_backend of the coordinator's target session mid-run: it comes back with the lock; a second coordinator from another home is refused",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
        const before = await settingsOf(target);
        const args = [...serverArgs(source, target), "-m", "1", "--workers", "1", "--fast-restore", "full"];
        const hold = await holdShop(source);
        try {
          const first = startCli(args, cliEnv(home, source, target));
          const runId = (await first.waitFor(/run (\S+): logs in/))[1]!;
          await first.waitFor(/dump "shop" started/);
          const killed = await query<{ ok: boolean }>(
            target,
            "postgres",
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1",
            [`pg-migrate run ${runId}`],
          );
          assert.deepEqual(killed, [{ ok: true }], "the run's own session on the target");
          await first.waitFor(/the coordinator's session on the target is back, with the run's lock/, 1, 30_000);
          // Back under the same name, holding the lock.
          await waitFor(
            "the run's session again",
            async () =>
              (
                await query(target, "postgres", "SELECT 1 FROM pg_stat_activity WHERE application_name = $1", [
                  `pg-migrate run ${runId}`,
                ])
              ).length === 1,
            10_000,
            100,
          );

          const second = await runCli(args, cliEnv(join(home, "another-home"), source, target));
          assert.equal(second.exitCode, 3, second.stderr);
          assert.match(
            errorLines(second.stderr)[0] ?? "",
            new RegExp(`the target ${target.host}:${target.port} is being migrated by run ${runId} `),
          );

          await hold.release();
          const r = await first.result;
          assert.equal(r.exitCode, 0, r.stderr);
          assert.match(
            r.stderr,
            /the coordinator's session on the target .* was closed by the server; opening it again/,
          );
        } finally {
          await hold.release();
        }
        await assertEndState(env, before, demoDatabases);
      },
      { nats: false },
    );
  },
);

test(
  "the target stopped (immediate) for 10 s mid-restore: nothing is a failed attempt, the run finishes, and its settings are put back",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
        await psqlExec(source, "postgres", "CREATE DATABASE big");
        await psqlExec(
          source,
          "big",
          "CREATE TABLE facts (id bigint PRIMARY KEY, note text); INSERT INTO facts SELECT g, repeat('z', 40) || g FROM generate_series(1, 300000) g;",
        );
        const before = await settingsOf(target);
        const run = startCli(
          [...serverArgs(source, target), "--workers", "2", "-m", "2"],
          cliEnv(home, source, target),
        );
        await waitFor(
          "the restore of big",
          () => toolsOn(target.port, "pg_restore").find((p) => p.argv.includes("--dbname=dbname='big'")),
          180_000,
          20,
        );
        await target.outage(10_000);
        const r = await run.result;
        assert.equal(r.exitCode, 0, r.stderr);
        assert.match(
          r.stderr,
          /restore "big": \S+ handed it back once its server, which had gone away, was back; offered again at once \(attempt 1 was not used up\)/,
        );
        assert.doesNotMatch(r.stderr, /attempt [2-9] of|failed on attempt/);
        const report = await readReport(home, r.stderr);
        assert.equal(report.databases.find((d) => d.name === "big")?.attempts.restore, 1);
        await assertEndState(env, before, [...demoDatabases, "big"]);
      },
      { nats: false },
    );
  },
);

for (const side of ["target", "source"] as const)
  test(
    side === "target"
      ? "--via stream: the target stopped (immediate) for 10 s mid-slice: the slice goes back unused, the run finishes, its settings put back"
      : "--via stream: the source stopped (immediate) for 10 s mid-slice: the database takes a new snapshot once the source is back, and finishes",
    { timeout: 600_000 },
    async () => {
      await withTestEnv(
        async (env) => {
          const { source, target, home } = env;
          await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
          await psqlExec(source, "postgres", "CREATE DATABASE big");
          await psqlExec(
            source,
            "big",
            "CREATE TABLE facts (id bigint PRIMARY KEY, note text); INSERT INTO facts SELECT g, repeat('z', 40) || g FROM generate_series(1, 300000) g;",
          );
          const before = await settingsOf(target);
          const run = startCli(
            [...serverArgs(source, target), "--workers", "2", "-m", "2", "--via", "stream"],
            cliEnv(home, source, target),
          );
          const held = await lockOnTarget(target, "big", "facts");
          try {
            await sliceWaiting(target, "big");
            if (side === "source") setTimeout(() => void held.release(), 2_000); // the slice then meets the dead source
            await (side === "target" ? target : source).outage(10_000);
          } finally {
            await held.release();
          }
          const r = await run.result;
          assert.equal(r.exitCode, 0, r.stderr);
          assert.doesNotMatch(r.stderr, /attempt [2-9] of|failed on attempt/);
          const report = await readReport(home, r.stderr);
          const big = report.databases.find((d) => d.name === "big")!;
          assert.ok(big.verified, r.stderr);
          if (side === "target") {
            assert.match(
              r.stderr,
              /slice s\d+ of "big" \([^)]*\): \S+ handed it back; offered again at once \(attempt 1 was not used up\)/,
            );
            assert.ok(
              big.stream!.slices.every((s) => s.attempts === 1),
              JSON.stringify(big.stream!.slices),
            );
          } else {
            assert.match(r.stderr, /"big": its snapshot holder session on the source ended .*; taking a new snapshot/);
            assert.match(big.stream!.restartedBecause ?? "", /its snapshot holder session on the source ended/);
          }
          await assertEndState(env, before, [...demoDatabases, "big"]);
        },
        { nats: false },
      );
    },
  );
