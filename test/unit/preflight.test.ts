// The preflight's pure verdicts: the dump volume against the source's size (refused below a small share of it,
// warned below all of it), and the one line a refused run ends with and plan prints.
import assert from "node:assert/strict";
import { test } from "node:test";
import { minimumDumpSpace, volumeVerdict } from "../../coordinator/checks.js";
import { refusalLine } from "../../coordinator/preflight.js";

const GiB = 2 ** 30;

test("the dump volume: refused below the minimum, warned below the source's size, fine above it", () => {
  const source = 10 * GiB;
  assert.equal(minimumDumpSpace(source), source * 0.05);
  assert.equal(minimumDumpSpace(1), 16 * 2 ** 20, "never less than 16 MiB");
  const at = (free: number) => volumeVerdict("/dumps", { freeBytes: free, networkFs: undefined }, source);

  const refused = at(0.4 * GiB);
  assert.deepEqual(refused.warnings, []);
  assert.equal(refused.refusals.length, 1);
  assert.match(
    refused.refusals[0]!,
    /the dump volume \/dumps \(--dump-root\) has 0\.40 GiB free, too little for dumps of a 10\.00 GiB source/,
  );

  const warned = at(5 * GiB);
  assert.deepEqual(warned.refusals, []);
  assert.match(warned.warnings[0]!, /has 5\.00 GiB free and the source holds 10\.00 GiB/);

  assert.deepEqual(at(11 * GiB), { refusals: [], warnings: [] });
  // A volume that cannot be written is that refusal alone, whatever its free space.
  assert.deepEqual(
    volumeVerdict("/dumps", { notWritable: "not writable", freeBytes: 100 * GiB, networkFs: undefined }, source),
    { refusals: ["not writable"], warnings: [] },
  );
});

test("a refused run ends with every refusal in one line, and says nothing was changed", () => {
  assert.equal(refusalLine(["a", "b"]), "a; b; nothing was changed");
});
