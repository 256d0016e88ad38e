import assert from "node:assert/strict";
import { test } from "node:test";
import { subjects } from "../../shared/contracts/jetstream.js";
import { decodeJob, encode } from "../../shared/contracts/messages.js";
import { ContractError } from "../../shared/errors.js";
import { dbKey } from "../../shared/dbkey.js";
import { keyFrom, seal, unseal } from "../../shared/secrets.js";
import { compare } from "../../worker/verify.js";

test("database keys are safe as subject tokens and paths, and distinct for distinct names", () => {
  const names = [`Odd "Db" O'Neil.x*>`, "odd db o neil x", "a.b", "a>b", "🚀", "", "x\ny", "../etc"];
  const keys = names.map(dbKey);
  for (const k of keys) assert.match(k, /^[a-z0-9-]+$/);
  assert.equal(new Set(keys).size, names.length);
});

test("subjects refuse a token that is not safe", () => {
  assert.equal(subjects.job("dump", "run-1", "dump-x_1"), "pgmigrate.jobs.dump.run-1.dump-x_1");
  assert.throws(() => subjects.job("dump", "a.b", "j"), ContractError);
  assert.throws(() => subjects.job("dump", "r", "j.*"), ContractError);
  assert.throws(() => subjects.event("r", "db", "x>"), ContractError);
});

test("a sealed password opens only with the same key", () => {
  const sealed = seal(keyFrom("k1"), "s3cret!");
  assert.ok(!JSON.stringify(sealed).includes("s3cret"));
  assert.equal(unseal(keyFrom("k1"), sealed), "s3cret!");
  assert.throws(() => unseal(keyFrom("k2"), sealed));
});

test("a job of an unknown version or shape is a ContractError", () => {
  const bytes = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
  assert.throws(() => decodeJob(bytes({ v: 2, kind: "dump" })), ContractError);
  assert.throws(() => decodeJob(new TextEncoder().encode("{not json")), ContractError);
  const job = {
    v: 1,
    kind: "verify",
    runId: "r",
    jobId: "j",
    db: { name: "d", key: "d-1" },
    dumpPath: "r/d-1/j/attempt-1",
    target: { host: "h", port: 5432, user: "u" },
  } as const;
  assert.deepEqual(decodeJob(encode(job)), job);
});

test("compare names every difference", () => {
  const t = (name: string, rows: number) => ({ schema: "public", name, rows });
  const s = (name: string, lastValue: string) => ({ schema: "public", name, lastValue, isCalled: true });
  const { mismatches, tables } = compare(
    { tables: [t("a", 1), t("b", 2), t("gone", 3)], sequences: [s("q", "10")], largeObjects: 2 },
    { tables: [t("a", 1), t("b", 5), t("new", 0)], sequences: [s("q", "9")], largeObjects: 1 },
  );
  assert.deepEqual(
    mismatches.map((m) => `${m.what}:${m.object}`),
    [
      "row-count:public.b",
      "table-missing:public.gone",
      "table-extra:public.new",
      "sequence:public.q",
      "large-objects:pg_largeobject_metadata",
    ],
  );
  assert.equal(tables.length, 4);
  assert.deepEqual(
    compare(
      { tables: [t("a", 1)], sequences: [], largeObjects: 0 },
      { tables: [t("a", 1)], sequences: [], largeObjects: 0 },
    ).mismatches,
    [],
  );
});

test("withoutCreate keeps what follows pg_restore's CREATE DATABASE part, and nothing when there is no \\connect", async () => {
  const { withoutCreate } = await import("../../worker/db-properties.js");
  const script = `SET a = 1;\nCREATE DATABASE "x\\\\connect y";\nALTER DATABASE x OWNER TO postgres;\n\\connect -reuse-previous=on "dbname='x'"\nALTER DATABASE x SET work_mem TO '7MB';\n`;
  assert.equal(
    withoutCreate(script),
    `\\connect -reuse-previous=on "dbname='x'"\nALTER DATABASE x SET work_mem TO '7MB';\n`,
  );
  assert.equal(withoutCreate("CREATE DATABASE x;\n"), "");
});
