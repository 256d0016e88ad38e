import assert from "node:assert/strict";
import { test } from "node:test";
import {
  MAX_BATCH_TABLES,
  MAX_PARTS,
  MIN_SLICE_BYTES,
  planSlices,
  sliceBytes,
  type StreamTable,
} from "../../coordinator/slices.js";

const MB = 1024 * 1024;
const table = (name: string, mb: number, toastMb = 0): StreamTable => ({
  schema: "public",
  name,
  columns: ["id"],
  hashColumns: ["id"],
  binary: true,
  heapBytes: mb * MB,
  toastBytes: toastMb * MB,
  pages: Math.floor((mb * MB) / 8192),
});

test("a database whose weight is one 400 MB table keeps two slots busy: the table is read in parts", () => {
  const slices = planSlices([table("big", 400), table("small", 1)], { jobs: 2, canSplit: true });
  const parts = slices.filter((s) => s.part);
  assert.equal(parts.length, Math.ceil((401 * MB) / sliceBytes(401 * MB, 2)));
  assert.ok(parts.length >= 4);
  // The parts cover every page once, in order, and the last one reads to the end.
  const sorted = [...parts].sort((a, b) => a.part!.n - b.part!.n);
  assert.equal(sorted[0]!.part!.from, 0);
  for (let i = 1; i < sorted.length; i++) assert.equal(sorted[i]!.part!.from, sorted[i - 1]!.part!.to);
  assert.equal(sorted.at(-1)!.part!.to, null);
  assert.ok(sorted.every((s) => s.part!.of === parts.length));
});

test("without TID range scans (a source before 14) a big table is one slice", () => {
  const slices = planSlices([table("big", 400)], { jobs: 4, canSplit: false });
  assert.equal(slices.length, 1);
  assert.equal(slices[0]!.part, undefined);
});

test("small tables are batched about one slice's size at a time, at most MAX_BATCH_TABLES each", () => {
  const many = Array.from({ length: 500 }, (_, i) => table(`t${i}`, 0));
  const slices = planSlices(many, { jobs: 4, canSplit: true });
  assert.equal(slices.length, Math.ceil(500 / MAX_BATCH_TABLES));
  assert.equal(
    slices.reduce((n, s) => n + s.tables.length, 0),
    500,
  );
  const mid = Array.from({ length: 40 }, (_, i) => table(`m${i}`, 3));
  const batched = planSlices(mid, { jobs: 4, canSplit: true });
  const target = sliceBytes(120 * MB, 4);
  assert.ok(batched.every((s) => s.bytes <= target || s.tables.length === 1));
  assert.ok(batched.length > 1 && batched.length < 40);
});

test("TOAST counts toward a table's size, the parts are bounded, and every table is in exactly one slice", () => {
  const tables = [table("wide", 10, 2000), table("huge", 100_000), table("a", 1), table("b", 0)];
  const slices = planSlices(tables, { jobs: 8, canSplit: true });
  assert.ok(slices.filter((s) => s.tables[0]!.name === "wide").length > 1, "split on heap plus TOAST");
  assert.equal(slices.filter((s) => s.tables[0]!.name === "huge").length, MAX_PARTS);
  const whole = slices.filter((s) => !s.part).flatMap((s) => s.tables.map((t) => t.name));
  assert.deepEqual(whole.sort(), ["a", "b"]);
  // Largest first, and ids unique.
  for (let i = 1; i < slices.length; i++) assert.ok(slices[i - 1]!.bytes >= slices[i]!.bytes);
  assert.equal(new Set(slices.map((s) => s.id)).size, slices.length);
});

test("the slice size stays within its bounds", () => {
  assert.equal(sliceBytes(0, 4), MIN_SLICE_BYTES);
  assert.equal(sliceBytes(10 * 1024 * MB, 1), 256 * MB);
  assert.equal(sliceBytes(400 * MB, 2), 50 * MB);
});
