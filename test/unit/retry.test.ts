// The one retry loop: keeps trying until the call succeeds, and gives up on stop() or after forMs.
import assert from "node:assert/strict";
import { test } from "node:test";
import { retry } from "../../shared/retry.js";

test("retry returns the first success and reports each failure it retries", async () => {
  let calls = 0;
  const seen: number[] = [];
  const v = await retry(async () => (++calls < 3 ? Promise.reject(new Error(`no ${calls}`)) : "yes"), {
    forMs: 5_000,
    pauseMs: () => 1,
    onRetry: (a) => seen.push(a),
  });
  assert.equal(v, "yes");
  assert.deepEqual(seen, [1, 2]);
});

test("retry gives up at once when stop() says so, and after forMs otherwise, with the last error", async () => {
  await assert.rejects(
    retry(() => Promise.reject(new Error("down")), { forMs: 60_000, pauseMs: () => 1, stop: () => true }),
    /down/,
  );
  const started = Date.now();
  await assert.rejects(
    retry(() => Promise.reject(new Error("still down")), { forMs: 50, pauseMs: () => 10 }),
    /still down/,
  );
  assert.ok(Date.now() - started < 1_000);
});
