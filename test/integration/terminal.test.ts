// The terminal as a person sees it: help piped into head, a mistyped command, --version, log lines on a terminal
// one per entry, and watch redrawing its table in place with bytes, rate and ETA.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { toolsOn, waitFor } from "../helpers/procs.js";
import { screenLines, startInPty } from "../helpers/pty.js";

const VERSION = (
  JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }
).version;

test("--help into a pipe that closes early ends quietly with 0; a mistyped command gets a suggestion; --version answers", async () => {
  for (const reader of ["head -1", "true"]) {
    // `true` closes its end before pg-migrate writes: the write surely meets EPIPE.
    const r = await execa(
      "bash",
      ["-c", `set -o pipefail; ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} --help | ${reader}`],
      { reject: false },
    );
    assert.equal(r.exitCode, 0, `--help | ${reader}: ${r.stderr}`);
    assert.equal(r.stderr, "", `--help | ${reader} printed on stderr`);
  }
  const typo = await runCli(["stauts"], {});
  assert.equal(typo.exitCode, 2);
  assert.deepEqual(typo.stderr.trim().split("\n"), [
    'pg-migrate: error: unknown command "stauts" (did you mean "status"?); the commands are worker, plan, status, watch, revert-settings, cutover, abort (pg-migrate --help)',
  ]);
  const unrelated = await runCli(["frobnicate"], {});
  assert.equal(unrelated.exitCode, 2);
  assert.doesNotMatch(unrelated.stderr, /did you mean/);
  for (const args of [["--version"], ["worker", "--version"]]) {
    const v = await runCli(args, {});
    assert.equal(v.exitCode, 0, v.stderr);
    assert.match(v.stdout, new RegExp(`^(pg-migrate )?${VERSION.replace(/\./g, "\\.")}\\n?$`));
  }
});

test(
  "on a terminal: --log-level gives one line per log entry; watch redraws one table in place, with bytes, rate and ETA",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(
      async ({ source, target, home }) => {
        await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
        // One database big enough for its jobs to report progress a few times.
        await psqlExec(source, "postgres", "CREATE DATABASE big");
        await psqlExec(
          source,
          "big",
          "CREATE TABLE facts (id bigint PRIMARY KEY, note text); INSERT INTO facts SELECT g, repeat('y', 60) || g FROM generate_series(1, 700000) g;",
        );
        const env = cliEnv(home, source, target);

        const logged = startInPty(
          [...serverArgs(source, target), "--workers", "1", "-m", "1", "--log-level", "info"],
          env,
        );
        const watching = (async () => {
          await logged.waitFor(/run \S+: logs in/);
          const watch = startInPty(["watch"], env);
          const r = await watch.result;
          return { exitCode: r.exitCode, raw: watch.raw() };
        })();
        // The restore of big, held for a few seconds mid-way, so that its progress is seen more than once.
        const restore = await waitFor(
          "the restore of big",
          () => toolsOn(target.port, "pg_restore").find((p) => p.argv.includes("--dbname=dbname='big'")),
          180_000,
          20,
        );
        await new Promise((r) => setTimeout(r, 300));
        process.kill(restore.pid, "SIGSTOP");
        await new Promise((r) => setTimeout(r, 5_000));
        process.kill(restore.pid, "SIGCONT");
        const ended = await logged.result;
        const screen = await screenLines(logged.raw());
        assert.equal(ended.exitCode, 0, screen.join("\n"));
        // pino-pretty's default puts each field of an entry on a line of its own ("    runId: ..."): not here.
        const entries = screen.filter((l) => /^\[\d\d:\d\d:\d\d(\.\d+)?\] (INFO|WARN|ERROR)/.test(l));
        assert.ok(entries.length >= 5, `log entries on the terminal:\n${screen.join("\n")}`);
        assert.deepEqual(
          screen.filter((l) => /^\s{4}\S+: /.test(l)),
          [],
          "continuation lines of a log entry",
        );

        const w = await watching;
        assert.equal(w.exitCode, 0, w.raw);
        const final = await screenLines(w.raw);
        // Redrawn, not appended: the rendered terminal, scrollback and all, holds the table once.
        assert.equal(final.filter((l) => /^run \S+: /.test(l)).length, 1, final.join("\n"));
        assert.ok(
          final.some((l) => /^run \S+: finished/.test(l)),
          final.join("\n"),
        );
        // While it ran, some frame showed a job's bytes against its total, its rate and what was left.
        const frames = w.raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
        assert.match(
          frames,
          /\d+(\.\d)? (B|KiB|MiB) of \d+(\.\d)? (KiB|MiB|GiB), \d+(\.\d)? (B|KiB|MiB)\/s(, ETA \d+s)?/,
        );
        assert.match(frames, /ETA \d+s/);
      },
      { nats: false },
    );
  },
);
