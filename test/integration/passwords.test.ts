// Passwords as libpq users expect them: with none given, PGPASSWORD, then ~/.pgpass — enough on its own for the
// coordinator and for its workers, embedded or started by hand — and a refused login names where its password
// came from.
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { BIN, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertMigrated } from "../helpers/faults.js";

/** A password file with one line per server (libpq ignores one that others may read). */
async function pgpass(
  path: string,
  entries: { host: string; port: number; user: string; password: string }[],
): Promise<void> {
  const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/:/g, "\\:");
  await writeFile(path, entries.map((e) => `${e.host}:${e.port}:*:${e.user}:${esc(e.password)}\n`).join(""), {
    mode: 0o600,
  });
}

test(
  "a ~/.pgpass entry alone serves the coordinator and its workers, embedded and distributed; a refused login names its source",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async ({ source, target, home, nats }) => {
      await psqlExec(source, "postgres", demoSql({ scale: 0.2 }));
      // Nothing but HOME: no PGMIGRATE_*_PASS, no PGPASSWORD (the test runner's own environment has none either).
      const env = { HOME: home };
      assert.equal(process.env.PGPASSWORD, undefined);

      // No password anywhere: the demo's defaults are tried, and the refusal says so.
      const none = await runCli(["plan", ...serverArgs(source, target)], env);
      assert.equal(none.exitCode, 3, none.stderr);
      assert.match(
        none.stderr,
        /^pg-migrate: warning: no source password given, none in PGPASSWORD or ~\/\.pgpass: trying the demo's "oldpass"/m,
      );
      assert.match(
        none.stderr,
        /^pg-migrate: error: cannot connect to source .*: password authentication failed \(the password came from the demo's default "oldpass" \(none given, no PGPASSWORD, no ~\/\.pgpass entry\); check it\)$/m,
      );

      // A wrong entry in ~/.pgpass: named as the source of the password.
      await pgpass(join(home, ".pgpass"), [
        { ...source, password: "not-it" },
        { ...target, password: target.password },
      ]);
      const wrong = await runCli(["plan", ...serverArgs(source, target)], env);
      assert.equal(wrong.exitCode, 3, wrong.stderr);
      assert.match(
        wrong.stderr,
        /cannot connect to source .*: password authentication failed \(the password came from ~\/\.pgpass; check it\)/,
      );

      // PGPASSWORD comes before the file, as in libpq: here it is the target's, so the source is refused naming it.
      const viaEnv = await runCli(["plan", ...serverArgs(source, target)], { ...env, PGPASSWORD: "also-not-it" });
      assert.match(viaEnv.stderr, /password authentication failed \(the password came from PGPASSWORD; check it\)/);

      // The right entries: an embedded run needs nothing else.
      await pgpass(join(home, ".pgpass"), [source, target]);
      const embedded = await runCli([...serverArgs(source, target), "--workers", "2"], env);
      assert.equal(embedded.exitCode, 0, embedded.stderr);
      await assertMigrated(source, target, demoDatabases);

      // Distributed, no shared key: jobs carry no password, and a worker with only its own ~/.pgpass does them.
      await psqlExec(source, "postgres", "CREATE DATABASE later; ");
      await psqlExec(
        source,
        "later",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500);",
      );
      const dumpRoot = join(home, "dumps");
      const worker = execa(
        process.execPath,
        [BIN, "worker", "--nats-url", nats.url, "--dump-root", dumpRoot, "--id", "pgpass-only"],
        { env, reject: false },
      );
      try {
        const distributed = await runCli(
          [...serverArgs(source, target), "--nats-url", nats.url, "--dump-root", dumpRoot, "--include-db", "later"],
          env,
        );
        assert.equal(distributed.exitCode, 0, distributed.stderr);
        assert.match(distributed.stderr, /no PGMIGRATE_SECRET: jobs carry no passwords/);
        assert.match(distributed.stderr, /dump "later" started on pgpass-only-\S+ \(attempt 1 of 3\)/);
        await assertMigrated(source, target, ["later"]);
        // The same long-lived worker, a second run with another --max-deliver: the worker goes by this run's.
        await psqlExec(source, "postgres", "CREATE DATABASE later2");
        const second = await runCli(
          [
            ...serverArgs(source, target),
            "--nats-url",
            nats.url,
            "--dump-root",
            dumpRoot,
            "--include-db",
            "later2",
            "--max-deliver",
            "5",
          ],
          env,
        );
        assert.equal(second.exitCode, 0, second.stderr);
        assert.match(second.stderr, /dump "later2" started on pgpass-only-\S+ \(attempt 1 of 5\)/);
      } finally {
        worker.kill("SIGTERM");
        const w = await worker;
        // It started before any coordinator had used this broker, and said so rather than nothing.
        assert.match(String(w.stderr), /waiting for a coordinator: no run has used this NATS server yet/);
      }
    });
  },
);
