// Faults on the worker side and in the broker: a worker SIGKILLed while its pg_dump or pg_restore runs, the
// nats-server restarted mid-run, a node of a 3-node NATS cluster killed mid-run. Each run must still end
// complete and verified, with nothing left running and the target's settings as before.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { execa } from "execa";
import pg from "pg";
import { freePort, psqlExec, startNats, type LocalNats } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, readReport, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertEndState, startWorkers, stopWorkers, workerOf } from "../helpers/faults.js";
import { startCli } from "../helpers/live.js";
import { alive, toolsOn, waitFor } from "../helpers/procs.js";

const SHOP = "--dbname=dbname='shop'";

for (const via of ["volume", "stream"] as const)
  for (const tool of ["pg_dump", "pg_restore"] as const) {
    // Streamed, a small database (shop) goes in one "whole" job, whose pg_dump is killed here; a database of several
    // slices (big) has its post-data in a post job, whose pg_restore (--section=post-data, or --use-list with large
    // objects) is killed, and redone with --clean.
    const kind = via === "volume" ? (tool === "pg_dump" ? "dump" : "restore") : tool === "pg_dump" ? "whole" : "post";
    const db = kind === "post" ? "big" : "shop";
    test(
      `SIGKILL a worker while it runs ${tool}: the job is redelivered and the run completes${via === "stream" ? ` (--via stream: its ${kind} job)` : ""}`,
      { timeout: 600_000 },
      async () => {
        await withTestEnv(
          async (env) => {
            const { source, target, home } = env;
            await psqlExec(source, "postgres", demoSql({ scale: 3 }));
            if (db === "big") {
              await psqlExec(source, "postgres", "CREATE DATABASE big");
              await psqlExec(
                source,
                "big",
                "CREATE TABLE facts (id bigint PRIMARY KEY, note text); CREATE INDEX ON facts (note); INSERT INTO facts SELECT g, repeat('z', 40) || g FROM generate_series(1, 300000) g;",
              );
            }
            const before = await settingsOf(target);
            const run = startCli(
              [
                ...serverArgs(source, target),
                "--workers",
                "2",
                "-m",
                "2",
                "--ack-wait",
                "4",
                "--retry-delay",
                "1",
                "--fast-restore",
                "full",
                "--via",
                via,
              ],
              cliEnv(home, source, target),
            );
            const port = tool === "pg_dump" ? source.port : target.port;
            // The leader, not one of its parallel workers: its parent is the pg-migrate worker.
            const proc = await waitFor(`${tool} of ${db}`, () =>
              toolsOn(port, tool).find(
                (p) =>
                  p.argv.includes(`--dbname=dbname='${db}'`) &&
                  (kind !== "post" || p.argv.some((a) => a.startsWith("--use-list=") || a === "--section=post-data")) &&
                  !toolsOn(port, tool).some((q) => q.pid === p.ppid),
              ),
            );
            process.kill(proc.pid, "SIGSTOP"); // holds it mid-run while we find and kill its worker
            const worker = workerOf(proc);
            process.kill(worker.pid, "SIGKILL");
            await waitFor(`${tool} to end with its worker`, () => !alive(proc.pid), 5_000, 50);

            const r = await run.result;
            assert.equal(r.exitCode, 0, r.stderr);
            const first = new RegExp(`${kind} "${db}" started on (\\S+) \\(attempt 1 `).exec(r.stderr)?.[1];
            assert.ok(first, r.stderr);
            const report = await readReport(home, r.stderr);
            const killed = report.databases.find((d) => d.name === db)!;
            assert.ok(
              (killed.attempts[kind] ?? 0) >= 2,
              `${kind} of ${db} delivered again: ${JSON.stringify(killed.attempts)}`,
            );
            assert.notEqual(killed.workers[kind], first, "another worker finished the job");
            assert.ok(killed.verified);
            await assertEndState(env, before, db === "big" ? [...demoDatabases, "big"] : demoDatabases);
          },
          { nats: false },
        );
      },
    );
  }

for (const via of ["volume", "stream"] as const)
  test(
    `restarting nats-server (same store) mid-run: the run completes (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(async (env) => {
        const { source, target, home, nats } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 3 }));
        const before = await settingsOf(target);
        const dumpRoot = join(home, "dumps");
        const secret = "nats-restart-test-secret";
        const workers = startWorkers(nats.url, dumpRoot, home, secret, 2);
        try {
          const run = startCli(
            [
              ...serverArgs(source, target),
              "--nats-url",
              nats.url,
              "--dump-root",
              dumpRoot,
              "-m",
              "2",
              "--ack-wait",
              "6",
              "--retry-delay",
              "1",
              "--via",
              via,
            ],
            cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
          );
          // Mid-run: one database's data is across, others' still to come.
          await run.waitFor(via === "volume" ? /dump "[^"]+" done/ : /copy "[^"]+" done/);
          await nats.restart();
          const r = await run.result;
          assert.equal(r.exitCode, 0, r.stderr);
        } finally {
          await stopWorkers(workers);
        }
        await assertEndState(env, before, demoDatabases);
      });
    },
  );

for (const via of ["volume", "stream"] as const)
  test(
    `a 3-node NATS cluster with --nats-replicas 3 loses a node mid-run: the run completes (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(
        async (env) => {
          const { source, target, home } = env;
          const nodes = await startNatsCluster(3);
          try {
            await psqlExec(source, "postgres", demoSql({ scale: 3 }));
            const before = await settingsOf(target);
            const urls = nodes.map((n) => n.url).join(",");
            const dumpRoot = join(home, "dumps");
            const secret = "nats-cluster-test-secret";
            const workers = startWorkers(urls, dumpRoot, home, secret, 2);
            try {
              const run = startCli(
                [
                  ...serverArgs(source, target),
                  "--nats-url",
                  urls,
                  "--nats-replicas",
                  "3",
                  "--dump-root",
                  dumpRoot,
                  "-m",
                  "2",
                  "--ack-wait",
                  "6",
                  "--retry-delay",
                  "1",
                  "--via",
                  via,
                ],
                cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
              );
              // A database done through the volume, or streamed: the others are still on their way.
              await run.waitFor(/(dump|copy) "[^"]+" done/);
              nodes[0]!.kill("SIGKILL");
              const r = await run.result;
              assert.equal(r.exitCode, 0, r.stderr);
            } finally {
              await stopWorkers(workers);
            }
            await assertEndState(env, before, demoDatabases);
          } finally {
            await Promise.all(nodes.map((n) => n.stop()));
          }
        },
        { nats: false },
      );
    },
  );

test(
  "SIGTERM on a worker while its pg_dump runs: tool stopped, job handed back at once without using an attempt, worker gone within seconds",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async (env) => {
      const { source, target, home, nats } = env;
      await psqlExec(source, "postgres", demoSql());
      const before = await settingsOf(target);
      const dumpRoot = join(home, "dumps");
      const secret = "worker-sigterm-test-secret";
      const workers = startWorkers(nats.url, dumpRoot, home, secret, 2);
      // A lock on one of shop's tables keeps its pg_dump waiting for as long as the test needs.
      const blocker = new pg.Client({
        host: source.host,
        port: source.port,
        user: source.user,
        password: source.password,
        database: "shop",
      });
      await blocker.connect();
      await blocker.query("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
      try {
        // The default ack wait (60 s): only a nak gets the job to the other worker in time.
        const run = startCli(
          [...serverArgs(source, target), "--nats-url", nats.url, "--dump-root", dumpRoot, "-m", "2"],
          cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
        );
        const dump = await waitFor("pg_dump of shop", () =>
          toolsOn(source.port, "pg_dump").find((p) => p.argv.includes(SHOP)),
        );
        const worker = workerOf(dump);
        const stopped = Date.now();
        process.kill(worker.pid, "SIGTERM");
        const which = workers.find((w) => w.pid === worker.pid);
        assert.ok(
          which,
          `pg_dump's parent ${worker.pid} is one of the test's workers (${workers.map((w) => w.pid).join(", ")})`,
        );
        const ended = await which;
        assert.equal(ended.exitCode, 0, String(ended.stderr));
        assert.ok(Date.now() - stopped < 8_000, `the worker exited ${Date.now() - stopped} ms after SIGTERM`);
        await waitFor("its pg_dump to be gone", () => !alive(dump.pid), 3_000, 50);
        await blocker.query("COMMIT");
        // Handed back whole: offered again at once, and as the same attempt (an interruption is no failure).
        await run.waitFor(
          /dump "shop": \S+ stopped and handed it back; offered again at once \(attempt 1 was not used up\)/,
          1,
          20_000,
        );
        await run.waitFor(/dump "shop" started on \S+ \(attempt 1 /, 2, 20_000);
        assert.ok(Date.now() - stopped < 30_000, "redelivered long before the 60 s ack wait");
        assert.doesNotMatch(run.stderr(), /dump "shop" started on \S+ \(attempt 2 /);
        const r = await run.result;
        assert.equal(r.exitCode, 0, r.stderr);
      } finally {
        await blocker.end().catch(() => undefined);
        await stopWorkers(workers.filter((w) => w.exitCode === null));
      }
      await assertEndState(env, before, demoDatabases);
    });
  },
);

/** Three JetStream nodes routed to each other on loopback; resolves once JetStream answers through them. */
async function startNatsCluster(size: number): Promise<LocalNats[]> {
  const routePorts = await Promise.all(Array.from({ length: size }, () => freePort()));
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`);
  const started = await Promise.allSettled(
    routePorts.map((p, i) =>
      startNats({
        args: [
          "-n",
          `pgm-node-${i}`,
          "--cluster_name",
          "pgm-test",
          "--cluster",
          routes[i]!,
          "--routes",
          routes.filter((_, j) => j !== i).join(","),
        ],
      }),
    ),
  );
  const nodes = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  if (nodes.length < size) {
    await Promise.all(nodes.map((n) => n.stop()));
    throw (started.find((s) => s.status === "rejected") as PromiseRejectedResult).reason;
  }
  const nc = await connect({ servers: nodes.map((n) => n.url) });
  try {
    await waitFor(
      "the NATS cluster's JetStream",
      () =>
        jetstreamManager(nc, { timeout: 2_000 }).then(
          () => true,
          () => false,
        ),
      30_000,
      250,
    );
  } finally {
    await nc.close();
  }
  return nodes;
}
