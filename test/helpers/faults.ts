// What every fault test ends with: every database on the target with every table's count equal to the
// source's, the target's settings as they were before the run, and no process of the run left behind.
import assert from "node:assert/strict";
import type { LocalCluster } from "../../demo/cluster.js";
import { databasesOf, settingsOf, tableCounts, type TestCluster } from "./cli.js";
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
