// The performance defaults' pure decisions: compression by volume and pg_dump version, parallelism by cores,
// fitted to the servers' free connections.
import assert from "node:assert/strict";
import { test } from "node:test";
import { chooseCompression, COMPRESS_PATTERN, networkFsName } from "../../shared/compression.js";
import {
  BYTES_PER_JOB,
  connectionsNeeded,
  defaultParallelism,
  fitConnections,
  jobsFor,
} from "../../coordinator/parallelism.js";
import { PreflightError } from "../../shared/errors.js";

test("--compress auto: none on a local volume, the cheapest method the tools have on a network one", () => {
  assert.equal(chooseCompression("auto", 15, undefined).arg, "0");
  assert.equal(chooseCompression("auto", 17, undefined).arg, "0");
  assert.equal(chooseCompression("auto", 15, "nfs").arg, "1");
  assert.equal(chooseCompression("auto", 16, "nfs").arg, "lz4");
  assert.match(chooseCompression("auto", 15, "cifs").why, /network volume \(cifs\)/);
  assert.equal(networkFsName(0x6969), "nfs");
  assert.equal(networkFsName(0xef53), undefined, "ext4 is local");
  assert.equal(networkFsName(0x01021997), "9p");
});

test("--compress: a level or method is passed as given, lz4 and zstd only to pg_dump 16 and later", () => {
  assert.equal(chooseCompression("6", 15, "nfs").arg, "6");
  assert.equal(chooseCompression("zstd:3", 16, undefined).arg, "zstd:3");
  assert.throws(
    () => chooseCompression("lz4", 15, undefined),
    /--compress lz4 needs pg_dump 16 or later \(this one is 15\)/,
  );
  for (const ok of ["auto", "0", "9", "none", "gzip", "gzip:5", "lz4", "lz4:1", "zstd:19"])
    assert.ok(COMPRESS_PATTERN.test(ok), ok);
  for (const bad of ["", "10", "fast", "lz4:", "zstd:100", "gzip 5", "auto;rm"])
    assert.ok(!COMPRESS_PATTERN.test(bad), bad);
});

test("-j and -m follow the cores, each within 2 to 8", () => {
  assert.deepEqual(defaultParallelism(1), { jobs: 2, maxParallel: 2 });
  assert.deepEqual(defaultParallelism(2), { jobs: 2, maxParallel: 2 });
  assert.deepEqual(defaultParallelism(8), { jobs: 8, maxParallel: 4 });
  assert.deepEqual(defaultParallelism(64), { jobs: 8, maxParallel: 8 });
});

test("parallelism is fitted to the free connections: defaults shrink -j first, given values are refused", () => {
  const wanted = { jobs: 4, maxParallel: 4 };
  assert.equal(connectionsNeeded(wanted), 24);
  assert.deepEqual(fitConnections(wanted, { source: 100, target: 24 }, { jobs: false, maxParallel: false }), wanted);
  const shrunk = fitConnections(wanted, { source: 100, target: 20 }, { jobs: false, maxParallel: false });
  assert.deepEqual({ jobs: shrunk.jobs, maxParallel: shrunk.maxParallel }, { jobs: 3, maxParallel: 4 });
  assert.match(
    shrunk.note!,
    /-j 4 -m 4 needs 24 connections on each server, but the source has 100 free and the target 20 .*: using -j 3 -m 4/,
  );
  const fewer = fitConnections(wanted, { source: 7, target: 50 }, { jobs: true, maxParallel: false });
  assert.deepEqual({ jobs: fewer.jobs, maxParallel: fewer.maxParallel }, { jobs: 4, maxParallel: 1 });
  assert.throws(
    () => fitConnections(wanted, { source: 10, target: 50 }, { jobs: true, maxParallel: true }),
    (err: unknown) => {
      assert.ok(err instanceof PreflightError);
      assert.match(
        err.message,
        /-j 4 -m 4 needs 24 connections on each server, but the source has 10 free .*: lower -j\/-m or raise max_connections/,
      );
      return true;
    },
  );
  assert.throws(
    () => fitConnections(wanted, { source: 2, target: 2 }, { jobs: false, maxParallel: false }),
    /lower -j\/-m or raise max_connections/,
  );
});

test("a database gets one -j worker per 64 MiB, at least 1 and at most -j", () => {
  assert.equal(jobsFor(7.5 * 2 ** 20, 4), 1, "an empty database");
  assert.equal(jobsFor(BYTES_PER_JOB * 2, 4), 2);
  assert.equal(jobsFor(2 ** 30, 4), 4);
  assert.equal(jobsFor(2 ** 30, 2), 2);
});
