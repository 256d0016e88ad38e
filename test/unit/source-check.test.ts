// The source checks' pure verdicts: a dump's locks against the source's lock table (within it: nothing; past it: a
// warning; past LOCK_ROOM_SPARE times it: a refusal), and tables the source user cannot read (a refusal, at most
// ten named).
import assert from "node:assert/strict";
import { test } from "node:test";
import { LOCK_ROOM_SPARE, locksNeeded, sourceVerdicts, type DatabaseNeeds } from "../../coordinator/source-check.js";

const room = { perTransaction: 64, slots: 122, room: 64 * 122 };
const db = (
  name: string,
  dumped: number,
  indexes = 0,
  unreadable: DatabaseNeeds["unreadable"] = [],
): DatabaseNeeds => ({ db: name, dumped, counted: dumped, indexes, sequences: 0, parallel: false, unreadable });

test("a dump's locks: pg_dump's tables and the count's tables and indexes, judged against the lock table", () => {
  assert.equal(locksNeeded(db("a", 100, 40)), 240);
  // pg_dump's parallel workers lock the tables they dump again; sequences are read by pg_dump and by the count.
  assert.equal(locksNeeded({ ...db("b", 100, 40), sequences: 30, parallel: true }), 100 * 2 + 100 + 40 + 2 * 30);
  assert.match(
    sourceVerdicts([{ ...db("b", 5000, 0), sequences: 10, parallel: true }], room, "postgres").warnings[0]!,
    /5000 tables locked by pg_dump and again by its parallel workers; 5000 tables and 0 indexes by the count in the same snapshot, and 10 sequences by both\)/,
  );
  const fits = db("fits", 3000, 1808); // 7808: exactly the table's size
  const tight = db("tight", 5000, 2000); // 12000
  const huge = db("huge", 20000, 0); // 40000, over 3 × 7808
  const v = sourceVerdicts([fits, tight, huge], room, "postgres");
  assert.equal(v.warnings.length, 1);
  assert.match(
    v.warnings[0]!,
    /^"tight" holds about 12000 locks at once while it is dumped \(5000 tables locked by pg_dump; 5000 tables and 2000 indexes by the count in the same snapshot\), more than the source's lock table is sized for 7808 \(max_locks_per_transaction 64 × 122 server processes and prepared transactions\).*at least 99 on the source/,
  );
  assert.equal(v.refusals.length, 1);
  assert.ok(locksNeeded(huge) > LOCK_ROOM_SPARE * room.room);
  assert.match(
    v.refusals[0]!,
    /^"huge" holds about 40000 locks .* more than 3 times what the source's lock table is sized for 7808 .*: its dump would fail with "out of shared memory"; set max_locks_per_transaction to at least 328 on the source \(it takes a restart\), or leave the database out with --exclude-db$/,
  );
});

test("tables the source user cannot read: named, ten at the most, with the count of the rest", () => {
  const unreadable = Array.from({ length: 12 }, (_, i) => ({
    name: `public.t${String(i).padStart(2, "0")}`,
    why: "no SELECT",
  }));
  const v = sourceVerdicts([db("ok", 1), db("vault", 12, 0, unreadable)], room, "reader");
  assert.deepEqual(v.warnings, []);
  assert.equal(v.refusals.length, 1);
  assert.match(
    v.refusals[0]!,
    /^the source user "reader" cannot read 12 relations of "vault" that pg_dump reads: public\.t00 \(no SELECT\), .*public\.t09 \(no SELECT\) and 2 more; grant it SELECT/,
  );
  assert.doesNotMatch(v.refusals[0]!, /public\.t10/);
});
