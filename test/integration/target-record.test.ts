// The target carries its own truth: a run's fast-restore originals are written onto the target (a custom setting in
// its postgresql.auto.conf) before the first fast value, so a coordinator from any other home — another host, a
// container whose state volume is gone — finds them, never takes the fast values for the target's own, and puts
// back exactly what was there, also after a crash half-way through the switch.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { cliEnv, runCli, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertEndState } from "../helpers/faults.js";
import { startCli } from "../helpers/live.js";
import { assertNoLeftovers } from "../helpers/procs.js";

const autoConf = (dataDir: string) => readFile(join(dataDir, "postgresql.auto.conf"), "utf8");

test(
  "a crashed run's fast-restore settings are found on the target by a coordinator of another home, shown by plan and reverted to the originals",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
        const before = await settingsOf(target);
        const fileBefore = await autoConf(target.dataDir);
        const args = [...serverArgs(source, target), "--workers", "1", "-m", "1", "--fast-restore", "full"];

        const first = startCli(args, cliEnv(home, source, target));
        const runId = (await first.waitFor(/run (\S+): logs in/))[1]!;
        await first.waitFor(/target switched to fast-restore mode/);
        first.child.kill("SIGKILL");
        await first.result;
        await assertNoLeftovers(home, [source.port, target.port]);
        assert.notDeepEqual(await settingsOf(target), before, "the killed run left its fast settings");

        // status reads the target too: the killed run's settings are still on it, and what they go back to.
        const shown = await runCli(["status"], cliEnv(home, source, target));
        assert.equal(shown.exitCode, 0, shown.stderr);
        assert.match(
          shown.stdout,
          /target: in this run's fast-restore mode \(full\) since \S+, recorded on the target; put back at the run's end, or by pg-migrate revert-settings, to [^\n]*fsync=on/,
        );

        // Another home knows nothing of that run: the target tells it.
        const elsewhere = join(home, "another-host");
        const planned = await runCli(["plan", ...args], cliEnv(elsewhere, source, target));
        assert.equal(planned.exitCode, 0, planned.stderr);
        assert.match(
          planned.stdout,
          new RegExp(
            `the target still carries the fast-restore settings of run ${runId} \\(since [^)]+\\), never put back: a run reverts them first, to [^;]*fsync=on`,
          ),
        );

        const r = await runCli(args, cliEnv(elsewhere, source, target));
        assert.equal(r.exitCode, 0, r.stderr);
        assert.match(
          r.stderr,
          new RegExp(
            `the target carried fast-restore settings of run ${runId} \\(since [^)]+\\) that were never put back: reverted them to `,
          ),
        );
        // Not "reverted" to the fast values it found: to what the target had before any run.
        await assertEndState(env, before, demoDatabases);
        assert.equal(await autoConf(target.dataDir), fileBefore, "postgresql.auto.conf as before the first run");
        const after = await runCli(["status", "--json"], cliEnv(elsewhere, source, target));
        assert.equal(after.exitCode, 0, after.stderr);
        assert.deepEqual(JSON.parse(after.stdout).target, { read: true, fastRestore: null });
      },
      { nats: false },
    );
  },
);

test(
  "a switch cut short (the record and a fast value written, not yet reloaded) is reverted from any home, never activated",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async (env) => {
        const { source, target, home } = env;
        await psqlExec(source, "postgres", demoSql({ scale: 0.2 }));
        const before = await settingsOf(target);
        const fileBefore = await autoConf(target.dataDir);
        // Exactly what a coordinator killed between two statements of the switch leaves: its record of the originals
        // and the first fast value in postgresql.auto.conf, no reload yet (so pg_settings still shows the original).
        const record = {
          v: 1,
          runId: "20260101-000000-cutshort",
          mode: "safe",
          at: "2026-01-01T00:00:00.000Z",
          original: [{ name: "synchronous_commit", setting: before.synchronous_commit!, autoConf: null }],
        };
        await psqlExec(
          target,
          "postgres",
          `SET pg_migrate.fast_restore = ''; ALTER SYSTEM SET pg_migrate.fast_restore = '${JSON.stringify(record)}'; ALTER SYSTEM SET synchronous_commit = 'off';`,
        );
        assert.equal(
          (await settingsOf(target)).synchronous_commit,
          before.synchronous_commit,
          "not reloaded: the original still in effect",
        );

        // revert-settings from a home with no record at all finds it on the target.
        const reverted = await runCli(
          ["revert-settings", "--to-host", target.host, "--to-port", String(target.port)],
          cliEnv(join(home, "h1"), source, target),
        );
        assert.equal(reverted.exitCode, 0, reverted.stderr);
        assert.match(
          reverted.stderr,
          /run 20260101-000000-cutshort \(recorded on the target\): reverted synchronous_commit=on and flushed the WAL/,
        );
        assert.equal(await autoConf(target.dataDir), fileBefore);
        assert.deepEqual(await settingsOf(target), before);

        // Cut short once more, then a run from yet another home: it reverts first, and its own end leaves the original.
        await psqlExec(
          target,
          "postgres",
          `SET pg_migrate.fast_restore = ''; ALTER SYSTEM SET pg_migrate.fast_restore = '${JSON.stringify(record)}'; ALTER SYSTEM SET synchronous_commit = 'off';`,
        );
        const r = await runCli(
          [...serverArgs(source, target), "--workers", "1"],
          cliEnv(join(home, "h2"), source, target),
        );
        assert.equal(r.exitCode, 0, r.stderr);
        assert.match(r.stderr, /the target carried fast-restore settings of run 20260101-000000-cutshort/);
        await assertEndState({ ...env, home: join(home, "h2") }, before, demoDatabases);
        assert.equal(await autoConf(target.dataDir), fileBefore, "postgresql.auto.conf as before");
      },
      { nats: false },
    );
  },
);
