import assert from "node:assert/strict";
import { test } from "node:test";
import { chooseVia, STREAM_MIN_BYTES, viaLine } from "../../coordinator/via.js";

const MB = 2 ** 20;
const db = (name: string, mb: number) => ({ name, sizeBytes: mb * MB });
const auto = (dbs: { name: string; sizeBytes: number }[], maxParallel = 2, sourceVersionNum = 150000) =>
  Object.fromEntries(chooseVia(dbs, { via: "auto", maxParallel, sourceVersionNum }));

test("--via auto streams the database whose weight the others cannot balance: one big table's database", () => {
  // The bench's single 1.5 GB table beside a few tiny databases.
  assert.deepEqual(auto([db("big", 1900), db("a", 1), db("b", 1)]), { big: "stream", a: "volume", b: "volume" });
  // Two databases of 330 MB with -m 2: each a half share, both stream.
  assert.deepEqual(auto([db("x", 330), db("y", 330)]), { x: "stream", y: "stream" });
});

test("--via auto keeps the volume for several mid-sized databases, small ones, and sources before 14", () => {
  // The bench's six pgbench databases (about 290 MB each) and 30 tiny ones: -m 2 keeps both cores busy already.
  const six = [...Array.from({ length: 6 }, (_, i) => db(`bench_${i}`, 290)), db("tiny", 1)];
  assert.ok(Object.values(auto(six)).every((v) => v === "volume"));
  // One database alone, but small: the streamed path's fixed cost is more than it saves.
  assert.deepEqual(auto([db("small", STREAM_MIN_BYTES / MB - 1)]), { small: "volume" });
  assert.deepEqual(auto([db("enough", STREAM_MIN_BYTES / MB)]), { enough: "stream" });
  // A source before 14 cannot read a table in parts: nothing to gain.
  assert.deepEqual(auto([db("big", 1900)], 2, 130000), { big: "volume" });
  // A higher -m asks for a smaller share: four databases at -m 4 all stream.
  assert.ok(
    Object.values(auto([db("a", 300), db("b", 300), db("c", 300), db("d", 300)], 4)).every((v) => v === "stream"),
  );
});

test("an explicit --via applies to every database, and the run line names the streamed ones only under auto", () => {
  const dbs = [db("big", 1900), db("a", 1)];
  for (const via of ["volume", "stream"] as const) {
    const vias = chooseVia(dbs, { via, maxParallel: 2, sourceVersionNum: 150000 });
    assert.deepEqual([...vias.values()], [via, via]);
    assert.equal(viaLine(vias, via), undefined);
  }
  const vias = chooseVia(dbs, { via: "auto", maxParallel: 2, sourceVersionNum: 150000 });
  assert.match(
    viaLine(vias, "auto")!,
    /^--via auto: database "big" streamed in table slices .*; 1 other through the dump volume$/,
  );
  assert.equal(
    viaLine(chooseVia([db("a", 1)], { via: "auto", maxParallel: 2, sourceVersionNum: 150000 }), "auto"),
    undefined,
  );
});
