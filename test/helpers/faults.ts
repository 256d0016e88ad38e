// What every fault test ends with: every database on the target with every table's count equal to the
// source's, the target's settings as they were before the run, and no process of the run left behind.
import assert from "node:assert/strict";
import { execa } from "execa";
import type { LocalCluster } from "../../demo/cluster.js";
import { BIN, databasesOf, settingsOf, tableCounts, type TestCluster } from "./cli.js";
import { assertNoLeftovers, listProcesses, type Proc } from "./procs.js";

export async function assertMigrated(source: TestCluster, target: TestCluster, databases: string[]): Promise<void> {
  const onTarget = await databasesOf(target);
  for (const db of databases) {
    assert.ok(onTarget.includes(db), `${db} exists on the target`);
    assert.deepEqual(await tableCounts(target, db), await tableCounts(source, db), `row counts of ${db}`);
  }
}

export async function assertEndState(
  t: { source: LocalCluster; target: LocalCluster; home: string },
  settingsBefore: Record<string, string>,
  databases: string[],
): Promise<void> {
  await assertMigrated(t.source, t.target, databases);
  assert.deepEqual(await settingsOf(t.target), settingsBefore, "target settings as before the run");
  await assertNoLeftovers(t.home, [t.source.port, t.target.port]);
}

/** The pg-migrate worker process that started this tool (setpriv execs the tool, so it is the direct parent). */
export function workerOf(tool: Proc): Proc {
  const parent = listProcesses().find((p) => p.pid === tool.ppid);
  assert.ok(
    parent && parent.argv.includes("worker"),
    `parent of ${tool.pid} is a pg-migrate worker: ${parent?.argv.join(" ")}`,
  );
  return parent;
}

/** n pg-migrate workers of the test's own (ids w1…), on one dump root. */
export function startWorkers(natsUrl: string, dumpRoot: string, home: string, secret: string, n: number) {
  return Array.from({ length: n }, (_, i) =>
    execa(
      process.execPath,
      [BIN, "worker", "--nats-url", natsUrl, "--dump-root", dumpRoot, "--id", `w${i + 1}`, "--retry-delay", "1"],
      {
        env: { HOME: home, PGMIGRATE_SECRET: secret },
        reject: false,
      },
    ),
  );
}

/** SIGTERM: each worker must stop its tool, hand its job back and exit 0 within a few seconds. */
export async function stopWorkers(workers: ReturnType<typeof startWorkers>): Promise<void> {
  const started = Date.now();
  for (const w of workers) w.kill("SIGTERM");
  const ended = await Promise.all(workers);
  for (const e of ended) assert.equal(e.exitCode, 0, `worker exit ${e.exitCode} ${e.signal ?? ""}\n${e.stderr}`);
  assert.ok(Date.now() - started < 10_000, `workers stopped in ${Date.now() - started} ms`);
}
