// The target lock's staleness rules and its refusal, on real files in a temp home.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pino from "pino";
import { isStale, TargetLock, type LockHolder } from "../../coordinator/lock.js";
import { PreflightError } from "../../shared/errors.js";

const quiet = pino({ level: "silent" });
const holder = (over: Partial<LockHolder>): LockHolder => ({
  runId: "20261125-000000-abcdefgh",
  pid: process.pid,
  host: hostname(),
  target: "db.example:5432",
  startedAt: new Date().toISOString(),
  at: new Date().toISOString(),
  ...over,
});

test("a lock of this host is stale when its pid is dead or is not pg-migrate; another host's when its heartbeat stopped", () => {
  const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
  assert.equal(isStale(holder({ pid: dead })), true, "dead pid");
  assert.equal(isStale(holder({ pid: 1 })), true, "pid 1 is alive but not pg-migrate");
  const now = Date.now();
  assert.equal(isStale(holder({ host: "elsewhere", at: new Date(now - 5_000).toISOString() }), now), false);
  assert.equal(isStale(holder({ host: "elsewhere", at: new Date(now - 60_000).toISOString() }), now), true);
});

test("the file lock refuses a live holder by its run and takes over a dead one", async () => {
  const home = await mkdtemp(join(tmpdir(), "pgm-lock-"));
  try {
    const path = join(home, "locks", "target-k.json");
    const first = await TargetLock.acquire(home, "k", "db.example:5432", quiet);
    await first.setRun("20261125-111111-livelive");
    // A live holder on another host (fresh heartbeat): refused by name.
    const live = JSON.parse(await readFile(path, "utf8")) as LockHolder;
    await writeFile(path, JSON.stringify({ ...live, host: "elsewhere" }));
    await assert.rejects(
      TargetLock.acquire(home, "k", "db.example:5432", quiet),
      (err: unknown) =>
        err instanceof PreflightError &&
        /being migrated by run 20261125-111111-livelive .* on elsewhere/.test(err.message),
    );
    // The same holder, dead on this host: taken over.
    await writeFile(path, JSON.stringify({ ...live, pid: spawnSync(process.execPath, ["-e", ""]).pid }));
    const second = await TargetLock.acquire(home, "k", "db.example:5432", quiet);
    assert.equal((JSON.parse(await readFile(path, "utf8")) as LockHolder).pid, process.pid);
    await second.release();
    await assert.rejects(readFile(path), /ENOENT/, "released");
    await first.release();
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
