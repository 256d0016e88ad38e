// The coordinator's records are contracts: the run record, the lock holder, the target's own record and the
// max-deliveries advisory decode through schemas, a record that does not match is named, and the report's schema is
// built from the run record's parts rather than restating them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ContractError } from "../../shared/errors.js";
import {
  decodeLockHolder,
  decodeMaxDeliveries,
  decodeRunRecord,
  decodeTargetRecord,
  RunRecordSchema,
  type RunRecord,
} from "../../shared/contracts/record.js";
import { ReportSchema } from "../../shared/contracts/report.js";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RunState } from "../../coordinator/state.js";
import { createLogger } from "../../shared/log.js";

const server = { host: "127.0.0.1", port: 5432, user: "postgres", db: "postgres", systemId: null, version: "15.19" };
const record: RunRecord = {
  v: 1,
  runId: "20261202-150000-abcdefgh",
  pairKey: "k",
  status: "running",
  startedAt: "2026-12-02T15:00:00.000Z",
  updatedAt: "2026-12-02T15:00:01.000Z",
  resumedAt: [],
  source: server,
  target: { ...server, port: 5433 },
  options: { jobs: 2 },
  fastRestore: {
    mode: "safe",
    applied: true,
    reverted: false,
    original: [{ name: "autovacuum", setting: "on", autoConf: null }],
  },
  globals: { done: false, applied: 0, removed: [], alreadyExisted: [], failed: [] },
  skipped: [],
  databases: [
    {
      name: "shop",
      key: "shop-1",
      sizeBytes: 10,
      phase: "restoring",
      created: true,
      create: {
        owner: "postgres",
        encoding: "UTF8",
        collate: "C",
        ctype: "C",
        localeProvider: "libc",
        iculocale: null,
      },
      jobId: "restore-1",
      timings: { dump: 12 },
      attempts: { dump: 1, restore: 1 },
      workers: { dump: "w-1" },
      progress: { kind: "restore", jobId: "restore-1", bytes: 5, totalBytes: null, startedAt: "x", at: "y" },
    },
  ],
  eventsSeq: 7,
};

test("a run record as the coordinator writes it decodes whole; one that does not match is named", () => {
  assert.deepEqual(decodeRunRecord(JSON.stringify(record)), record);
  const { databases: _gone, ...withoutDatabases } = record;
  assert.throws(
    () => decodeRunRecord(JSON.stringify(withoutDatabases)),
    (e: unknown) => e instanceof ContractError && /a run record does not match its contract: databases/.test(e.message),
  );
  const badPhase = { ...record, databases: [{ ...record.databases[0]!, phase: "squashing" }] };
  assert.throws(() => decodeRunRecord(JSON.stringify(badPhase)), /databases\.0\.phase/);
  assert.throws(() => decodeRunRecord("{"), /a run record is not JSON/);
});

test("the lock holder, the target's own record and the advisory decode through their schemas", () => {
  const holder = { runId: null, pid: 42, host: "h", target: "t", startedAt: "a", at: "b" };
  assert.deepEqual(decodeLockHolder(JSON.stringify(holder)), holder);
  assert.throws(
    () => decodeLockHolder(JSON.stringify({ ...holder, pid: "42" })),
    /a target lock's holder does not match its contract: pid/,
  );
  const carried = {
    v: 1,
    runId: "r",
    mode: "safe",
    at: "now",
    original: [{ name: "fsync", setting: "on", autoConf: null }],
  };
  assert.deepEqual(decodeTargetRecord(JSON.stringify(carried)), carried);
  assert.throws(() => decodeTargetRecord(JSON.stringify({ ...carried, v: 2 })), ContractError);
  assert.deepEqual(
    decodeMaxDeliveries(
      '{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"PGM_JOBS","stream_seq":9,"deliveries":3}',
    ),
    { stream: "PGM_JOBS", stream_seq: 9, deliveries: 3 },
  );
});

test("the report's schema takes the run record's parts as they are", () => {
  for (const field of ["source", "target", "fastRestore", "globals", "skipped", "upgradeNotes", "status"] as const) {
    assert.equal(ReportSchema.shape[field], RunRecordSchema.shape[field], field);
  }
});

test("a run record this version cannot read is skipped with a warning, and the others are still found", async () => {
  const home = await mkdtemp(join(tmpdir(), "pgm-records-"));
  try {
    const root = RunState.stateRoot(home);
    const other = {
      ...record,
      runId: "20261202-140000-zzzzzzzz",
      databases: [{ ...record.databases[0]!, phase: "squashing" }],
    };
    for (const r of [record, other]) {
      await mkdir(join(root, r.runId), { recursive: true });
      await writeFile(join(root, r.runId, "run.json"), JSON.stringify(r));
    }
    const logFile = join(home, "log.json");
    const states = await RunState.all(home, createLogger({ level: "info", file: logFile }));
    assert.deepEqual(
      states.map((st) => st.runId),
      [record.runId],
    );
    await new Promise((r) => setTimeout(r, 200)); // the file stream is asynchronous
    const logged = await readFile(logFile, "utf8");
    assert.match(logged, /"msg":"run record skipped"/);
    assert.match(logged, /"path":"[^"]*20261202-140000-zzzzzzzz[^"]*".*databases\.0\.phase/);
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
