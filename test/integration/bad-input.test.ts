// Bad input: one clear line that names what to fix, a non-zero exit, and the target's settings as they were.
import assert from "node:assert/strict";
import { mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { freePort } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, databasesOf, errorLines, query, runCli, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";

test("bad input is refused with one line and leaves the target untouched", { timeout: 600_000 }, async (t) => {
  await withTestEnv(
    async ({ source, target, home }) => {
      await psqlExec(source, "postgres", demoSql());
      const before = await settingsOf(target);
      const expectRefusal = async (
        name: string,
        r: { exitCode: number; stderr: string },
        code: number,
        pattern: RegExp,
      ) => {
        assert.equal(r.exitCode, code, `${name}: exit ${r.exitCode}\n${r.stderr}`);
        const errors = errorLines(r.stderr);
        assert.equal(errors.length, 1, `${name}: one error line\n${r.stderr}`);
        assert.match(errors[0]!, pattern, name);
        assert.deepEqual(await settingsOf(target), before, `${name}: target settings unchanged`);
        assert.deepEqual(await databasesOf(target), [], `${name}: nothing created on the target`);
      };

      await t.test("wrong source password", async () => {
        const r = await runCli(
          serverArgs(source, target),
          cliEnv(home, source, target, { PGMIGRATE_FROM_PASS: "not-the-password" }),
        );
        await expectRefusal("wrong password", r, 3, /cannot connect to source .*: password authentication failed/);
      });

      await t.test(
        "a password given as a flag is warned about; one in a file that cannot be read is refused by flag",
        async () => {
          const r = await runCli(
            [...serverArgs(source, target), "--from-pass", "not-the-password"],
            cliEnv(home, source, target),
          );
          await expectRefusal("password flag", r, 3, /password authentication failed/);
          assert.match(
            r.stderr,
            /warning: --from-pass puts the password in the process list; PGMIGRATE_FROM_PASS or --from-pass-file keeps it out/,
          );
          const missing = await runCli(
            [...serverArgs(source, target), "--to-pass-file", join(home, "no-such-file")],
            cliEnv(home, source, target),
          );
          await expectRefusal("password file", missing, 2, /cannot read .*no-such-file \(--to-pass-file\): ENOENT/);
        },
      );

      await t.test("TLS required of a server without it", async () => {
        const r = await runCli(
          [...serverArgs(source, target), "--to-sslmode", "require"],
          cliEnv(home, source, target),
        );
        await expectRefusal(
          "no TLS",
          r,
          3,
          /cannot connect to target .*: the server does not accept TLS connections: enable ssl there, or use --to-sslmode prefer or disable/,
        );
      });

      await t.test("unreachable target", async () => {
        const closed = await freePort();
        const r = await runCli(
          [
            "--from-host",
            source.host,
            "--from-port",
            String(source.port),
            "--to-host",
            "127.0.0.1",
            "--to-port",
            String(closed),
          ],
          cliEnv(home, source, target),
        );
        await expectRefusal(
          "unreachable",
          r,
          3,
          new RegExp(`cannot connect to target 127\\.0\\.0\\.1:${closed}.*connection refused`),
        );
      });

      await t.test("source and target are the same server", async () => {
        const r = await runCli(serverArgs(source, source), cliEnv(home, source, source));
        await expectRefusal("same server", r, 3, /source and target are the same server/);
      });

      await t.test("-j and -m that need more connections than the servers have free", async () => {
        const r = await runCli([...serverArgs(source, target), "-j", "40", "-m", "3"], cliEnv(home, source, target));
        await expectRefusal(
          "too many connections",
          r,
          3,
          /-j 40 -m 3 needs 126 connections on each server, but the source has \d+ free and the target \d+ .*: lower -j\/-m or raise max_connections/,
        );
      });

      await t.test(
        "a dump root that cannot be created: refused at once, in the run's and plan's same words",
        async () => {
          // Node's own recursive mkdir never settles on /proc/…: the run hung there until killed.
          const started = Date.now();
          const r = await runCli(
            [...serverArgs(source, target), "--dump-root", "/proc/pgm-no-such/dumps"],
            cliEnv(home, source, target),
            30_000,
          );
          assert.ok(Date.now() - started < 20_000, `refused after ${Date.now() - started} ms`);
          const refusal =
            /the dump volume \/proc\/pgm-no-such\/dumps \(--dump-root\) is not writable: it cannot be created there/;
          await expectRefusal("dump root under /proc", r, 3, refusal);
          const planned = await runCli(
            ["plan", ...serverArgs(source, target), "--dump-root", "/proc/pgm-no-such/dumps"],
            cliEnv(home, source, target),
            30_000,
          );
          assert.equal(planned.exitCode, 3, planned.stderr);
          assert.match(planned.stdout, new RegExp(`a run would be refused: ${refusal.source}`));
          // plan says what --compress auto does on the volume it would use.
          const fine = await runCli(
            ["plan", ...serverArgs(source, target), "--dump-root", join(home, "dumps")],
            cliEnv(home, source, target),
          );
          assert.match(fine.stdout, /dumps: --compress auto → uncompressed \(auto: a local volume/);
        },
      );

      await t.test("--compress lz4 with a pg_dump older than 16", async () => {
        const r = await runCli([...serverArgs(source, target), "--compress", "lz4"], cliEnv(home, source, target));
        await expectRefusal("lz4 on 15", r, 2, /--compress lz4 needs pg_dump 16 or later \(this one is 15\)/);
      });

      await t.test("nats-server missing in embedded mode", async () => {
        // A PATH with node only, and the system's sbin folders hidden in a private mount namespace (we are root
        // in CI); where that is impossible, PGMIGRATE_NATS_SERVER names a binary that does not exist.
        const bin = await mkdtemp(join(tmpdir(), "pgm-path-"));
        try {
          for (const tool of ["pg_dump", "pg_restore", "pg_dumpall", "psql"])
            await symlink(`/usr/bin/${tool}`, join(bin, tool));
          const env = { ...cliEnv(home, source, target), PATH: bin };
          const isRoot = process.getuid?.() === 0;
          const r = isRoot
            ? await execa(
                "/usr/bin/unshare",
                [
                  "-m",
                  "/bin/sh",
                  "-c",
                  'mount -t tmpfs none /usr/sbin && mount -t tmpfs none /usr/local/sbin && PATH="$PGM_TEST_PATH" exec "$0" "$@"',
                  process.execPath,
                  BIN,
                  ...serverArgs(source, target),
                ],
                { env: { ...env, PATH: "/usr/bin:/bin", PGM_TEST_PATH: bin }, reject: false },
              ).then((x) => ({ exitCode: x.exitCode ?? -1, stderr: String(x.stderr) }))
            : await runCli(serverArgs(source, target), { ...env, PGMIGRATE_NATS_SERVER: join(bin, "nats-server") });
          await expectRefusal("no nats-server", r, 2, /nats-server not found: install it .* or pass --nats-url/);
        } finally {
          await rm(bin, { recursive: true, force: true });
        }
      });

      await t.test(
        "objects in the source's postgres database are refused while the target's holds objects of its own",
        async () => {
          await psqlExec(source, "postgres", "CREATE TABLE ops_notes (id int)");
          await psqlExec(target, "postgres", "CREATE TABLE local_notes (id int)");
          try {
            const r = await runCli(serverArgs(source, target), cliEnv(home, source, target));
            await expectRefusal(
              "postgres with objects on both sides",
              r,
              3,
              /the source's "postgres" database holds 1 user object to restore into the target's, which holds 1 of its own: empty the target's "postgres", or leave it out with --exclude-db postgres; nothing was changed/,
            );
          } finally {
            await psqlExec(source, "postgres", "DROP TABLE ops_notes");
            await psqlExec(target, "postgres", "DROP TABLE local_notes");
          }
        },
      );

      await t.test("a target database of the same name is refused by name and left as it is", async () => {
        await psqlExec(target, "postgres", "CREATE DATABASE shop");
        await psqlExec(target, "shop", "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1), (2), (3);");
        try {
          const r = await runCli(serverArgs(source, target), cliEnv(home, source, target));
          assert.equal(r.exitCode, 3, r.stderr);
          const errors = errorLines(r.stderr);
          assert.equal(errors.length, 1, r.stderr);
          assert.match(errors[0]!, /target already has database\(s\) "shop" that this run did not create/);
          assert.deepEqual(await databasesOf(target), ["shop"]);
          const tables = await query<{ t: string }>(
            target,
            "shop",
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'",
          );
          assert.deepEqual(tables, [{ t: "mine" }]);
          const rows = await query<{ n: string }>(target, "shop", "SELECT count(*) AS n FROM mine");
          assert.equal(rows[0]!.n, "3");
          assert.deepEqual(await settingsOf(target), before);
        } finally {
          await psqlExec(target, "postgres", "DROP DATABASE shop");
        }
      });
    },
    { nats: false },
  );
});

test("invalid flag values name the flag", async () => {
  for (const [args, flag] of [
    [["--jobs", "0"], "--jobs"],
    [["--from-port", "70000"], "--from-port"],
    [["-m", "x"], "--max-parallel"],
    [["--no-such-flag"], "--no-such-flag"],
  ] as const) {
    const r = await runCli([...args], { HOME: tmpdir() });
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.ok(r.stderr.includes(flag), `${args.join(" ")} names ${flag}: ${r.stderr}`);
  }
});

test("--help lists every flag with its default", async () => {
  const r = await runCli(["--help"], { HOME: tmpdir() });
  assert.equal(r.exitCode, 0);
  // One entry per option: the lines from "  -x, --flag" or "  --flag" up to the next such line.
  const entries = r.stdout.split(/\n(?= {2}-)/).map((e) => e.replace(/\s+/g, " ").trim());
  const expected: [string, string][] = [
    ["--from-host", '"localhost"'],
    ["--from-port", "5432"],
    ["--from-user", '"postgres"'],
    ["--from-db", '"postgres"'],
    ["--to-host", '"localhost"'],
    ["--to-port", "5432"],
    ["--to-user", '"postgres"'],
    ["--to-db", '"postgres"'],
    ["-j, --jobs", "this machine's cores, 2 to 8"],
    ["-m, --max-parallel", "half this machine's cores, 2 to 8"],
    ["--dump-root", '"pg_dumps"'],
    ["--migrate-globals", "true"],
    ["--compress", '"auto"'],
    ["--fast-restore", '"safe"'],
  ];
  for (const [flag, def] of expected) {
    const entry = entries.find((e) => e.startsWith(`${flag} `));
    assert.ok(entry, `${flag} listed`);
    assert.ok(entry.includes(`default: ${def}`), `${flag} default ${def}: ${entry}`);
  }
  // Passwords: where libpq would look, and the demo's as the last resort.
  for (const [flag, demo] of [
    ["--from-pass", "oldpass"],
    ["--to-pass", "newpass"],
  ] as const) {
    const entry = entries.find((e) => e.startsWith(`${flag} `));
    assert.ok(
      entry?.includes(`without one, PGPASSWORD, then ~/.pgpass (PGPASSFILE), then the demo's "${demo}"`),
      `${flag}: ${entry}`,
    );
  }
  const help = r.stdout.replace(/\s+/g, " ");
  for (const flag of [
    "--no-migrate-globals",
    "--nats-url",
    "PGMIGRATE_FROM_PASS",
    "PGMIGRATE_TO_PASS",
    "pg-migrate worker",
  ])
    assert.ok(help.includes(flag), flag);
});
