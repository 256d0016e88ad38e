// The README works as written: every `pg-migrate` command line in its examples is run here exactly as it stands
// there, by bash, with `pg-migrate` on PATH the way the README installs it (npm install --global ., into a
// throwaway npm prefix) and the environment the README tells the reader to set (PGMIGRATE_*) pointing at throwaway
// servers. A README example this test does not know fails it, and so does one it knows that the README lost.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { databasesOf, query, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertMigrated } from "../helpers/faults.js";
import { assertNoLeftovers } from "../helpers/procs.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Every line of the README's code blocks that runs pg-migrate (the podman ones belong to the container test). */
async function readmeCommandLines(): Promise<string[]> {
  const text = await readFile(join(ROOT, "README.md"), "utf8");
  const lines: string[] = [];
  let inBlock = false;
  for (const raw of text.split("\n")) {
    if (/^\s*```/.test(raw)) {
      inBlock = !inBlock;
      continue;
    }
    const line = raw.trim();
    if (inBlock && /^pg-migrate(\s|$)/.test(line)) lines.push(line);
  }
  return lines;
}

/** The README's lines, each as this test runs it. */
const KNOWN = {
  version: "pg-migrate --version",
  plan: "pg-migrate plan    # what a run would do; changes nothing",
  run: "pg-migrate         # the migration: -j and -m follow this machine's cores unless given",
  status: "pg-migrate status    # the run's databases, their phase, worker and progress, and the live workers",
  watch: "pg-migrate watch     # the same, redrawn in place until the run ends",
  worker: "pg-migrate worker    # on each worker host: runs until stopped (SIGTERM hands its job back)",
  coordinator: "pg-migrate           # on the coordinator host, with PGMIGRATE_FROM_* / PGMIGRATE_TO_* as above",
  revert:
    "pg-migrate revert-settings    # with the same PGMIGRATE_TO_* (or --to-host, --to-port, --to-user) as the run",
} as const;

test("every pg-migrate command line of the README runs as written", { timeout: 600_000 }, async () => {
  const lines = await readmeCommandLines();
  assert.deepEqual(
    [...lines].sort(),
    Object.values(KNOWN).sort(),
    "the README's pg-migrate lines and the ones this test runs",
  );

  const prefix = await mkdtemp(join(tmpdir(), "pgm-npm-prefix-"));
  try {
    // "npm install --global ." as the README says, with npm's prefix pointed at a throwaway folder.
    const install = await execa("npm", ["install", "--global", "."], {
      cwd: ROOT,
      env: { npm_config_prefix: prefix },
      reject: false,
    });
    assert.equal(install.exitCode, 0, String(install.stderr));
    const PATH = `${join(prefix, "bin")}:${process.env.PATH}`;

    await withTestEnv(async ({ source, target, nats, home }) => {
      await psqlExec(source, "postgres", demoSql({ scale: 0.3 }));
      const before = await settingsOf(target);
      // What the README has the reader export, with this test's servers in it.
      const servers = {
        PGMIGRATE_FROM_HOST: source.host,
        PGMIGRATE_FROM_PORT: String(source.port),
        PGMIGRATE_FROM_PASS: source.password,
        PGMIGRATE_TO_HOST: target.host,
        PGMIGRATE_TO_PORT: String(target.port),
        PGMIGRATE_TO_PASS: target.password,
      };
      const env = { HOME: home, PATH, ...servers };
      const sh = (line: string, extra: Record<string, string> = {}): ResultPromise =>
        execa("bash", ["-c", line], {
          cwd: home,
          env: { ...env, ...extra },
          extendEnv: false,
          reject: false,
          stdin: "ignore",
        });

      const version = await sh(KNOWN.version);
      assert.equal(version.exitCode, 0, String(version.stderr));
      assert.match(String(version.stdout), /^pg-migrate \d+\.\d+\.\d+/);

      const plan = await sh(KNOWN.plan);
      assert.equal(plan.exitCode, 0, String(plan.stderr));
      assert.match(String(plan.stdout), /nothing was changed; a run with these flags would start/);

      // The migration, and status and watch beside it.
      const run = sh(KNOWN.run);
      let runErr = "";
      run.stderr!.on("data", (b: Buffer) => (runErr += b.toString()));
      for (let i = 0; i < 600 && !/logs in/.test(runErr); i++) await new Promise((r) => setTimeout(r, 50));
      const status = await sh(KNOWN.status);
      assert.equal(status.exitCode, 0, String(status.stderr));
      assert.match(String(status.stdout), /^run \S+: /);
      const watch = await sh(KNOWN.watch);
      assert.equal(watch.exitCode, 0, String(watch.stderr));
      const ran = await run;
      assert.equal(ran.exitCode, 0, runErr);
      assert.match(String(watch.stdout), /run \S+: finished/);
      await assertMigrated(source, target, demoDatabases);

      const revert = await sh(KNOWN.revert);
      assert.equal(revert.exitCode, 0, String(revert.stderr));
      assert.deepEqual(await settingsOf(target), before);

      // Distributed: the same servers, emptied again, through a broker and a worker started by hand.
      for (const db of await databasesOf(target))
        await query(target, "postgres", `DROP DATABASE "${db.replace(/"/g, '""')}" WITH (FORCE)`);
      const secretFile = join(home, "secret");
      await writeFile(secretFile, "a-shared-key-for-the-readme-test\n", { mode: 0o600 });
      const distributed = {
        PGMIGRATE_NATS_URL: nats.url,
        PGMIGRATE_SECRET_FILE: secretFile,
        PGMIGRATE_DUMP_ROOT: join(home, "shared-dumps"),
      };
      // A worker host has the broker, the key and the volume, not the source's or the target's passwords.
      const worker = execa("bash", ["-c", KNOWN.worker], {
        cwd: home,
        env: { HOME: home, PATH, ...distributed },
        extendEnv: false,
        reject: false,
        stdin: "ignore",
      });
      try {
        const coordinator = await sh(KNOWN.coordinator, distributed);
        assert.equal(coordinator.exitCode, 0, String(coordinator.stderr));
        assert.match(String(coordinator.stderr), /1 worker present/);
        await assertMigrated(source, target, demoDatabases);
      } finally {
        worker.kill("SIGTERM");
        const w = await worker;
        assert.equal(w.exitCode, 0, `the worker stops cleanly on SIGTERM: ${String(w.stderr)}`);
      }
      assert.deepEqual(await settingsOf(target), before);
      await assertNoLeftovers(home, [source.port, target.port]);
    });
  } finally {
    await rm(prefix, { recursive: true, force: true });
  }
});
