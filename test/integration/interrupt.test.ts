// Ctrl-C as a terminal sends it: typed at a real pseudo-terminal, so SIGINT reaches the terminal's whole
// foreground process group. An embedded run must end within seconds with exit 130 and the target as it was, hand
// its interrupted job back without using up an attempt, and resume without waiting out an ack wait; a second
// Ctrl-C forces it out, saying what it leaves behind and how to mend it.
import assert from "node:assert/strict";
import { basename } from "node:path";
import { test } from "node:test";
import { psqlExec } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { cliEnv, query, readReport, runCli, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv, type TestEnvWithoutNats } from "../helpers/env.js";
import { assertMigrated } from "../helpers/faults.js";
import { assertNoLeftovers, listProcesses, toolsOn, waitFor } from "../helpers/procs.js";
import { screenLines, startInPty, type PtyCli } from "../helpers/pty.js";
import { lockOnTarget, sliceWaiting } from "../helpers/slices.js";

const BIG = "big";
const BIG_ARG = `--dbname=dbname='${BIG}'`;
const DATABASES = ["shop", "analytics", "inventory", BIG];

/** The source: the demo's databases and one more whose restore the tests stop in the middle. */
async function seed(env: TestEnvWithoutNats): Promise<void> {
  await psqlExec(env.source, "postgres", demoSql({ scale: 0.3 }));
  await psqlExec(env.source, "postgres", `CREATE DATABASE ${BIG}`);
  await psqlExec(
    env.source,
    BIG,
    "CREATE TABLE facts (id bigint PRIMARY KEY, note text); INSERT INTO facts SELECT g, repeat('x', 40) || g FROM generate_series(1, 200000) g;",
  );
}

/**
 * Starts the run on a terminal and stops it mid-restore of BIG: its pg_restore is frozen (SIGSTOP) so the restore is
 * surely still running when Ctrl-C is typed. Returns the run and when Ctrl-C was typed.
 */
async function interruptMidRestore(
  env: TestEnvWithoutNats,
  args: string[],
  times = 1,
): Promise<{ run: PtyCli; typedAt: number }> {
  const run = startInPty(args, cliEnv(env.home, env.source, env.target));
  const restore = await waitFor(
    "the restore of big",
    () => toolsOn(env.target.port, "pg_restore").find((p) => p.argv.includes(BIG_ARG)),
    180_000,
    20,
  );
  process.kill(restore.pid, "SIGSTOP");
  const typedAt = Date.now();
  run.ctrlC();
  for (let i = 1; i < times; i++) {
    await new Promise((r) => setTimeout(r, 50));
    run.ctrlC();
  }
  return { run, typedAt };
}

test(
  "Ctrl-C on a terminal mid-restore: exit 130 within 10 s, target as before, nothing left; the same command resumes at attempt 1 at once",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        await seed(env);
        const before = await settingsOf(env.target);
        const args = [...serverArgs(env.source, env.target), "--workers", "2", "-m", "2"];

        const { run, typedAt } = await interruptMidRestore(env, args);
        const ended = await run.result;
        const screen = (await screenLines(run.raw())).join("\n");
        assert.equal(ended.exitCode, 130, screen);
        assert.ok(ended.endedAt - typedAt < 10_000, `exited ${ended.endedAt - typedAt} ms after Ctrl-C`);
        assert.match(screen, /SIGINT received: stopping the workers, reverting the target/);
        assert.match(screen, /target settings reverted/);
        assert.match(screen, /interrupted: run the same command again to resume run \S+/);
        assert.deepEqual(await settingsOf(env.target), before, "target settings as before the run");
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
        // What a person sees: every line whole, no bar's tail glued to a log line, no trace.
        assertCleanScreen(screen);

        // The interrupted restore was handed back unused: the resumed run takes it again as attempt 1, at once
        // (far inside the 60 s ack wait a job lost by a dead worker would need).
        const started = Date.now();
        const resumed = await runCli(args, cliEnv(env.home, env.source, env.target));
        assert.equal(resumed.exitCode, 0, resumed.stderr);
        assert.ok(Date.now() - started < 45_000, `the resumed run took ${Date.now() - started} ms`);
        assert.match(resumed.stderr, /resuming run /);
        assert.match(resumed.stderr, new RegExp(`restore "${BIG}" started on \\S+ \\(attempt 1 of 3\\)`));
        assert.doesNotMatch(resumed.stderr, /attempt [2-9] of/);
        const report = await readReport(env.home, resumed.stderr);
        assert.equal(report.databases.find((d) => d.name === BIG)?.attempts.restore, 1);
        // The dumps were removed after the verified run: the report points into none of them.
        assert.equal(report.dumps.kept, false);
        assert.deepEqual(
          report.databases.filter((d) => d.dumpPath !== undefined || d.detailPath !== undefined).map((d) => d.name),
          [],
        );
        await assertMigrated(env.source, env.target, DATABASES);
        assert.deepEqual(await settingsOf(env.target), before);
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
      },
      { nats: false },
    );
  },
);

test(
  "three Ctrl-C and resume cycles on the same restore: it still finishes at attempt 1, never failed as workers dying",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        await seed(env);
        const before = await settingsOf(env.target);
        const args = [...serverArgs(env.source, env.target), "--workers", "2", "-m", "2"];
        const seen: string[] = [];
        for (let cycle = 1; cycle <= 3; cycle++) {
          const { run } = await interruptMidRestore(env, args);
          const ended = await run.result;
          const screen = (await screenLines(run.raw())).join("\n");
          seen.push(screen);
          assert.equal(ended.exitCode, 130, `cycle ${cycle}:\n${screen}`);
          assert.deepEqual(await settingsOf(env.target), before, `settings after cycle ${cycle}`);
          await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
        }
        const final = await runCli(args, cliEnv(env.home, env.source, env.target));
        assert.equal(final.exitCode, 0, final.stderr);
        for (const text of [...seen, final.stderr]) {
          assert.doesNotMatch(text, /workers died|stopped heartbeating|attempt [2-9] of/);
        }
        const report = await readReport(env.home, final.stderr);
        assert.equal(report.databases.find((d) => d.name === BIG)?.attempts.restore, 1);
        await assertMigrated(env.source, env.target, DATABASES);
        assert.deepEqual(await settingsOf(env.target), before);
      },
      { nats: false },
    );
  },
);

test(
  "Ctrl-C twice, 50 ms apart: one line says the target is still in fast-restore mode and which command reverts it; that command does",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        await seed(env);
        const before = await settingsOf(env.target);
        const args = [...serverArgs(env.source, env.target), "--workers", "1", "-m", "1"];
        const { run } = await interruptMidRestore(env, args, 2);
        const ended = await run.result;
        const screen = (await screenLines(run.raw())).join("\n");
        assert.equal(ended.exitCode, 130, screen);
        const line =
          /^pg-migrate: forced quit: the target is still in fast-restore mode \(synchronous_commit=off, [^)]*\); "(pg-migrate revert-settings [^"]+)" puts its settings back, and so does the next run \(run the same command again to resume run \S+\)$/m.exec(
            screen,
          );
        assert.ok(line, `the forced-quit line:\n${screen}`);
        assert.notDeepEqual(await settingsOf(env.target), before, "left in fast-restore mode, as the line says");
        // What it started ends with it (the kernel's parent-death signal), even though it could not stop them itself.
        await assertNoLeftovers(env.home, [env.source.port, env.target.port], 20_000);

        // The command it named, as printed.
        const revertArgs = line[1]!.split(" ").slice(1);
        const reverted = await runCli(revertArgs, cliEnv(env.home, env.source, env.target));
        assert.equal(reverted.exitCode, 0, reverted.stderr);
        assert.deepEqual(await settingsOf(env.target), before, "settings back after the named command");
      },
      { nats: false },
    );
  },
);

test(
  "the embedded nats-server SIGKILLed mid-restore is started again and the run goes on; then one Ctrl-C ends it, and it resumes",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        await seed(env);
        const before = await settingsOf(env.target);
        const args = [...serverArgs(env.source, env.target), "--workers", "2", "-m", "2"];
        const run = startInPty(args, cliEnv(env.home, env.source, env.target));
        const restore = await waitFor(
          "the restore of big",
          () => toolsOn(env.target.port, "pg_restore").find((p) => p.argv.includes(BIG_ARG)),
          180_000,
          20,
        );
        process.kill(restore.pid, "SIGSTOP");
        const broker = listProcesses().find(
          (p) => basename(p.argv[0]!) === "nats-server" && p.argv.some((a) => a.includes(env.home)),
        );
        assert.ok(broker, "the embedded nats-server");
        process.kill(broker.pid, "SIGKILL");
        await run.waitFor(/the embedded nats-server is back; the run goes on/, 60_000);
        process.kill(restore.pid, "SIGCONT");
        // The run goes on through the new broker: the restore it held finishes and is recorded.
        await run.waitFor(new RegExp(`restore "${BIG}" done`), 120_000);
        const typedAt = Date.now();
        run.ctrlC();
        const ended = await run.result;
        const screen = (await screenLines(run.raw())).join("\n");
        assert.ok([0, 130].includes(ended.exitCode), screen); // 0 when it had already finished by then
        assert.ok(ended.endedAt - typedAt < 10_000, `exited ${ended.endedAt - typedAt} ms after Ctrl-C`);
        assert.deepEqual(await settingsOf(env.target), before, "target settings as before the run");
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
        if (ended.exitCode === 130) {
          const resumed = await runCli(args, cliEnv(env.home, env.source, env.target));
          assert.equal(resumed.exitCode, 0, resumed.stderr);
        }
        await assertMigrated(env.source, env.target, DATABASES);
        assert.deepEqual(await settingsOf(env.target), before);
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
      },
      { nats: false },
    );
  },
);

/** No log line carries a bar's remnants, no line is a stack trace. */
function assertCleanScreen(screen: string): void {
  for (const l of screen.split("\n")) {
    if (/pg-migrate:/.test(l)) {
      assert.match(l, /^pg-migrate: /, `a log line starts its own line: ${JSON.stringify(l)}`);
      assert.doesNotMatch(l, /[█░]|B\/s|ETA \d/, `a bar's remnant in a log line: ${JSON.stringify(l)}`);
    }
    assert.doesNotMatch(
      l,
      /^\s+at .*\(.*:\d+:\d+\)$|DeprecationWarning|Error:.*\n\s+at /,
      `a trace on screen: ${JSON.stringify(l)}`,
    );
  }
}

test(
  "--via stream: Ctrl-C on a terminal mid-slice: exit 130 within 10 s, target as before, no session left on either server; the same command resumes, nothing at a second attempt",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        await seed(env);
        const before = await settingsOf(env.target);
        const args = [...serverArgs(env.source, env.target), "--workers", "2", "-m", "2", "--via", "stream"];
        const run = startInPty(args, cliEnv(env.home, env.source, env.target));
        // Once big's schema is on the target, its table is locked there: its slice waits in the middle of its COPY.
        const held = await lockOnTarget(env.target, BIG, "facts");
        try {
          await sliceWaiting(env.target, BIG);
          const typedAt = Date.now();
          run.ctrlC();
          const ended = await run.result;
          const screen = (await screenLines(run.raw())).join("\n");
          assert.equal(ended.exitCode, 130, screen);
          assert.ok(ended.endedAt - typedAt < 10_000, `exited ${ended.endedAt - typedAt} ms after Ctrl-C`);
          assert.match(screen, /interrupted: run the same command again to resume run \S+/);
          assertCleanScreen(screen);
          // The snapshot holder and every slice's sessions ended with the run — the slice's target session too, while
          // the lock it waited on is still held (cancelled, not left to notice its closed connection later).
          for (const c of [env.source, env.target])
            assert.deepEqual(
              await waitFor(
                "no pg-migrate session",
                async () =>
                  (
                    await query<{ a: string }>(
                      c,
                      "postgres",
                      "SELECT application_name AS a FROM pg_stat_activity WHERE application_name LIKE 'pg-migrate%'",
                    )
                  ).length === 0 && [],
                10_000,
                100,
              ),
              [],
            );
        } finally {
          await held.release();
        }
        assert.deepEqual(await settingsOf(env.target), before, "target settings as before the run");
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);

        const resumed = await runCli(args, cliEnv(env.home, env.source, env.target));
        assert.equal(resumed.exitCode, 0, resumed.stderr);
        assert.match(resumed.stderr, /resuming run /);
        const report = await readReport(env.home, resumed.stderr);
        const big = report.databases.find((d) => d.name === BIG)!;
        assert.ok(big.verified, resumed.stderr);
        // Handed back by the stopping worker: the slice's attempt was not used up.
        assert.ok(
          big.stream!.slices.every((s) => s.attempts === 1),
          JSON.stringify(big.stream!.slices),
        );
        await assertMigrated(env.source, env.target, DATABASES);
        assert.deepEqual(await settingsOf(env.target), before);
        await assertNoLeftovers(env.home, [env.source.port, env.target.port]);
      },
      { nats: false },
    );
  },
);
