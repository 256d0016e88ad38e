import assert from "node:assert/strict";
import { test } from "node:test";
import { buildProgram, toConfig } from "../../coordinator/cli.js";

function parse(args: string[], env: Record<string, string> = {}) {
  const saved = { ...process.env };
  Object.assign(process.env, { HOME: "/home/u", PGMIGRATE_FROM_PASS: "", PGMIGRATE_TO_PASS: "" }, env);
  if (!env.PGMIGRATE_FROM_PASS) delete process.env.PGMIGRATE_FROM_PASS;
  if (!env.PGMIGRATE_TO_PASS) delete process.env.PGMIGRATE_TO_PASS;
  try {
    const p = buildProgram();
    p.parse(args, { from: "user" });
    return toConfig(p.opts());
  } finally {
    process.env = saved;
  }
}

test("defaults are the original pg-migrate's", () => {
  const c = parse([]);
  assert.deepEqual(
    [c.source.host, c.source.port, c.source.user, c.source.password, c.sourceDb, c.target.host, c.target.port, c.target.user, c.target.password, c.targetDb],
    ["localhost", 5432, "postgres", "oldpass", "postgres", "localhost", 5432, "postgres", "newpass", "postgres"],
  );
  assert.equal(c.jobs, 4);
  assert.equal(c.maxParallel, 4);
  assert.equal(c.dumpRoot, "/home/u/pg_dumps");
  assert.equal(c.migrateGlobals, true);
  assert.equal(c.natsUrl, undefined);
  assert.ok(Object.isFrozen(c));
});

test("--migrate-globals=false and --no-migrate-globals both turn globals off", () => {
  assert.equal(parse(["--migrate-globals=false"]).migrateGlobals, false);
  assert.equal(parse(["--no-migrate-globals"]).migrateGlobals, false);
  assert.equal(parse(["--migrate-globals", "true"]).migrateGlobals, true);
});

test("passwords come from the environment unless a flag gives them", () => {
  const c = parse([], { PGMIGRATE_FROM_PASS: "env-src", PGMIGRATE_TO_PASS: "env-tgt" });
  assert.equal(c.source.password, "env-src");
  assert.equal(c.target.password, "env-tgt");
  assert.equal(parse(["--from-pass", "flag"], { PGMIGRATE_FROM_PASS: "env-src" }).source.password, "flag");
});

test("absolute dump roots stay; the embedded worker count follows --max-parallel", () => {
  const c = parse(["--dump-root", "/mnt/dumps", "-m", "3"]);
  assert.equal(c.dumpRoot, "/mnt/dumps");
  assert.equal(c.workers, 3);
});

test("--wait is off by default and takes seconds, also from PGMIGRATE_WAIT", () => {
  assert.equal(parse([]).waitMs, 0);
  assert.equal(parse(["--wait", "30"]).waitMs, 30_000);
  assert.equal(parse([], { PGMIGRATE_WAIT: "120" }).waitMs, 120_000);
  assert.throws(() => parse(["--wait", "soon"]), /--wait.*whole number of at least 0/);
});
