// The coordinator on a terminal: run under a pseudo-terminal (util-linux `script`), it draws a run bar and a bar
// per database in flight, and its summary table comes out whole after the bars stop.
import assert from "node:assert/strict";
import { test } from "node:test";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { screenLines } from "../helpers/pty.js";

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

for (const via of ["volume", "stream"] as const)
  test(
    `on a terminal: progress bars while it runs, then an unbroken summary table (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(
        async ({ source, target, home }) => {
          await psqlExec(source, "postgres", demoSql({ scale: 10 }));
          const quote = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
          const command = [
            process.execPath,
            BIN,
            ...serverArgs(source, target),
            "--workers",
            "2",
            "-m",
            "2",
            "--via",
            via,
          ]
            .map(quote)
            .join(" ");
          const r = await execa("script", ["-qfec", command, "/dev/null"], {
            env: { ...cliEnv(home, source, target), TERM: "xterm", COLUMNS: "140", LINES: "50" },
            reject: false,
            timeout: 300_000,
          });
          assert.equal(r.exitCode, 0, r.stdout);
          const screen = String(r.stdout).replace(ANSI, "");
          const lines = screen.split(/\r?\n|\r/);

          assert.ok(
            lines.some((l) => /^run {2,}[█░]{24} +\d+% \d+\/4 databases/.test(l)),
            `a run bar:\n${screen}`,
          );
          assert.ok(
            // Streamed: a database's bar follows its rows and bytes across the workers copying its slices.
            lines.some((l) =>
              (via === "volume"
                ? /^(dump|restore|verify) \S.* [█░]{24} +\d+% /
                : /^copy \S.* [█░]{24} +\d+% .+ of \d/
              ).test(l),
            ),
            `a database bar:\n${screen}`,
          );

          // The rest as a terminal draws it (the bars are gone when they stop, so the stream alone would glue the
          // table's first line to the last bar's text).
          const drawn = await screenLines(String(r.stdout));
          const top = drawn.findIndex((l) => l.startsWith("┌"));
          const bottom = drawn.findIndex((l, i) => i > top && l.startsWith("└"));
          assert.ok(top >= 0 && bottom > top, `a summary table:\n${drawn.join("\n")}`);
          const table = drawn.slice(top, bottom + 1);
          for (const l of table) {
            assert.match(l, /^[┌│├└]/, `table line starts with a border: ${JSON.stringify(l)}`);
            assert.equal([...l].length, [...table[0]!].length, `table lines of one width: ${JSON.stringify(l)}`);
          }
          for (const db of demoDatabases)
            assert.ok(
              table.some((l) => l.startsWith(`│ ${db} `)),
              `${db} in the summary`,
            );
          assert.match(drawn.join("\n"), /all 4 databases migrated and verified/);

          // No log line carries a bar's remnants ("… done in 0.5s (ANALYZE 0.2s)0 B 0 B/s"), and no bar is left drawn.
          assert.deepEqual(
            drawn.filter((l) => /[█░]{24}/.test(l)),
            [],
            "bars left on the screen",
          );
          const logLines = drawn.filter((l) => l.includes("pg-migrate:"));
          assert.ok(logLines.length >= 10, drawn.join("\n"));
          for (const l of logLines) {
            assert.match(l, /^pg-migrate: /, `a log line starts its own line: ${JSON.stringify(l)}`);
            assert.doesNotMatch(l, /[█░]|B\/s|ETA \d/, `a bar's remnant in a log line: ${JSON.stringify(l)}`);
          }
        },
        { nats: false },
      );
    },
  );
