// The errors carry their data, and a tool's ending is said as what it was: a timeout as a timeout (not as the
// signal it was ended with), a cancel as a cancel, a signal, an exit code. Run for real on a process that sleeps.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ToolError } from "../../shared/errors.js";
import { runTool, type Toolset } from "../../shared/tools.js";

const sleeper: Toolset = {
  paths: { pg_dump: "/bin/sleep", pg_restore: "/bin/false", pg_dumpall: "/bin/sleep", psql: "/bin/sleep" },
  major: 15,
  version: "sleep",
  setpriv: undefined,
  from: "test",
};

test("a tool that runs past its time limit is a ToolError that says it timed out, with its duration", async () => {
  const err = await runTool(sleeper, "psql", ["5"], { timeoutMs: 300 }).then(
    () => assert.fail("sleep 5 ended within 300 ms"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ToolError);
  assert.equal(err.timedOut, true);
  assert.equal(err.cancelled, false);
  assert.equal(err.signal, "SIGTERM");
  assert.ok(err.durationMs >= 300 && err.durationMs < 4000, `${err.durationMs} ms`);
  assert.match(err.message, /^psql timed out after 0\.\ds/);
});

test("a cancelled tool says so; one that fails says its exit code and the tail of its stderr", async () => {
  const stop = new AbortController();
  setTimeout(() => stop.abort(), 100);
  const cancelled = await runTool(sleeper, "pg_dump", ["5"], { signal: stop.signal }).catch((e: unknown) => e);
  assert.ok(cancelled instanceof ToolError);
  assert.equal(cancelled.cancelled, true);
  assert.equal(cancelled.timedOut, false);
  assert.match(cancelled.message, /^pg_dump was cancelled/);

  const failed = await runTool(sleeper, "pg_restore", []).catch((e: unknown) => e);
  assert.ok(failed instanceof ToolError);
  assert.equal(failed.exitCode, 1);
  assert.match(failed.message, /^pg_restore exited with code 1/);

  const killed = new ToolError({
    tool: "pg_dump",
    exitCode: undefined,
    signal: "SIGKILL",
    timedOut: false,
    cancelled: false,
    durationMs: 12,
    stderrTail: "a\nb\nc\nd\n",
  });
  assert.equal(killed.message, "pg_dump was killed by SIGKILL: b | c | d");
});
