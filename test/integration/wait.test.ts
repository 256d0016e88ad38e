// --wait: the coordinator keeps trying servers that are not up yet (a compose stack starting), names the one that
// never answered, and does not wait on an answer that waiting cannot change.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { freePort } from "../../demo/cluster.js";
import { cliEnv, databasesOf, errorLines, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";

test("--wait waits for late servers and names the one that never answered", { timeout: 300_000 }, async (t) => {
  await withTestEnv(async ({ source, target, nats, home }) => {
    await t.test("a NATS that never answers is named after the wait", async () => {
      const closed = await freePort();
      const began = Date.now();
      const r = await runCli(
        [...serverArgs(source, target), "--nats-url", `nats://127.0.0.1:${closed}`, "--wait", "3"],
        cliEnv(home, source, target),
      );
      assert.equal(r.exitCode, 3, r.stderr);
      assert.ok(Date.now() - began >= 3000, "it waited");
      const errors = errorLines(r.stderr);
      assert.equal(errors.length, 1, r.stderr);
      assert.match(
        errors[0]!,
        new RegExp(
          `waited 3s \\(--wait\\), and NATS at nats://127\\.0\\.0\\.1:${closed} never answered; last: cannot connect to NATS`,
        ),
      );
      assert.doesNotMatch(errors[0]!, /source|target/, "the servers that answered are not named");
      assert.deepEqual(await databasesOf(target), []);
    });

    await t.test("a NATS that comes up during the wait is used", async () => {
      nats.kill("SIGKILL");
      const run = runCli(
        [...serverArgs(source, target), "--nats-url", nats.url, "--wait", "60", "--worker-wait", "1"],
        cliEnv(home, source, target),
      );
      await sleep(3000);
      await nats.restart();
      const r = await run;
      const said = r.stdout + r.stderr;
      assert.match(said, /waiting up to 60s for source .*, target .*, NATS at nats:\/\/127\.0\.0\.1:\d+ \(--wait\)/);
      assert.match(said, /all answered after \d+s/);
      // Past the wait and the broker: the run then stops at the next check, the missing worker.
      assert.equal(r.exitCode, 3, r.stderr);
      assert.match(errorLines(r.stderr)[0] ?? "", /no pg-migrate worker joined within 1s/);
    });

    await t.test("a wrong password ends the wait at once", async () => {
      const began = Date.now();
      const r = await runCli(
        [...serverArgs(source, target), "--nats-url", nats.url, "--wait", "120"],
        cliEnv(home, source, target, { PGMIGRATE_FROM_PASS: "not-the-password" }),
      );
      assert.equal(r.exitCode, 3, r.stderr);
      assert.match(errorLines(r.stderr)[0] ?? "", /cannot connect to source .*password authentication failed/);
      assert.ok(Date.now() - began < 30_000, "no waiting for a password to change");
    });
  });
});
