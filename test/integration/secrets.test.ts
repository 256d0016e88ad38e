// Passwords and the shared key never leave the places they belong (the environment of the processes that need
// them): not in any process's argv (sampled every 50 ms), not on any NATS subject during the run, not in any
// message kept in any JetStream stream or bucket afterwards, not in any file the run wrote.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, query, readReport, runCli, serverArgs, tableCounts } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { listProcesses } from "../helpers/procs.js";

function dirsUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? [join(dir, e.name), ...dirsUnder(join(dir, e.name))] : [],
  );
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? filesUnder(p) : e.isFile() ? [p] : [];
  });
}

for (const via of ["volume", "stream"] as const)
  test(
    `no password and no shared key in argv, on NATS, in the streams or in any file the run wrote (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      // The broker wants a password too (from a config file: a password in nats-server's own argv would be ours to find).
      const outside = await mkdtemp(join(tmpdir(), "pgm-secrets-"));
      const natsUser = "mig";
      const natsPass = `Nats-Pw-${Date.now()}-kx`;
      const natsConf = join(outside, "nats.conf");
      await writeFile(natsConf, `authorization { user: "${natsUser}", password: "${natsPass}" }\n`);
      try {
        await withTestEnv(
          async ({ source, target, home, nats }) => {
            await psqlExec(source, "postgres", demoSql());
            // Streamed, a table big enough for parts: schema, slice and post jobs all go over the bus.
            if (via === "stream")
              await psqlExec(
                source,
                "shop",
                "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 3) AS pad FROM generate_series(1, 200000) g",
              );
            const secret = `Shared-Key-${Date.now()}-zq`;
            // Role password verifiers are secrets too: pg_dumpall hands them over, and they must go nowhere but the target.
            const verifiers = (
              await query<{ v: string }>(
                source,
                "postgres",
                "SELECT rolpassword AS v FROM pg_authid WHERE rolpassword IS NOT NULL",
              )
            ).map((r) => r.v);
            assert.ok(verifiers.length >= 1, "the source has password verifiers");
            const secrets = [source.password, target.password, secret, natsPass, ...verifiers];
            // The source password from a file (outside HOME, which is searched below), the target's from the environment.
            const sourcePassFile = join(outside, "source.pw");
            await writeFile(sourcePassFile, `${source.password}\n`, { mode: 0o600 });
            const natsEnv = { PGMIGRATE_NATS_USER: natsUser, PGMIGRATE_NATS_PASS: natsPass };
            const found = (text: string) => secrets.filter((s) => text.includes(s));

            // The sampler: every process's command line, every 50 ms, for the whole run.
            const inArgv = new Set<string>();
            let samples = 0;
            const sampler = setInterval(() => {
              samples++;
              for (const p of listProcesses())
                for (const s of found(p.argv.join(" "))) inArgv.add(`${s.slice(0, 6)}… in ${p.argv[0]}`);
            }, 50);

            const nc = await connect({ servers: nats.url, user: natsUser, pass: natsPass });
            const onTheWire: string[] = [];
            let messages = 0;
            nc.subscribe(">", {
              callback: (_err, m) => {
                messages++;
                for (const s of found(new TextDecoder().decode(m.data)))
                  onTheWire.push(`${s.slice(0, 6)}… on ${m.subject}`);
              },
            });
            const dumpRoot = join(home, "dumps");
            const workers = ["s1", "s2"].map((id) =>
              execa(
                process.execPath,
                [BIN, "worker", "--nats-url", nats.url, "--dump-root", dumpRoot, "--id", id, "--log-level", "debug"],
                {
                  env: { HOME: home, PGMIGRATE_SECRET: secret, ...natsEnv },
                  reject: false,
                },
              ),
            );
            let workerOutput = "";
            try {
              const r = await runCli(
                [
                  ...serverArgs(source, target),
                  "--from-pass-file",
                  sourcePassFile,
                  "--nats-url",
                  nats.url,
                  "--dump-root",
                  dumpRoot,
                  "--log-level",
                  "debug",
                  "--keep-dumps",
                  "--via",
                  via,
                ],
                {
                  ...cliEnv(home, source, target, { PGMIGRATE_SECRET: secret, ...natsEnv }),
                  PGMIGRATE_FROM_PASS: undefined,
                },
              );
              assert.equal(r.exitCode, 0, r.stderr);
              assert.deepEqual(found(r.stdout + r.stderr), [], "coordinator output");
              // The report says where the dumps are and that they stay (--keep-dumps); no one else can open them.
              const report = await readReport(home, r.stderr);
              assert.deepEqual([report.dumps.kept, report.dumps.why], [true, "--keep-dumps"]);
              assert.ok(report.dumps.path.startsWith(dumpRoot), report.dumps.path);
              // Streamed, nothing is dumped: what is there (the workers' scratch) is private all the same.
              const dirs = [dumpRoot, ...dirsUnder(dumpRoot)].filter((d) => existsSync(d));
              if (via === "volume") assert.ok(dirs.length > 3, `dump directories: ${dirs.join(", ")}`);
              else
                assert.ok(
                  report.databases.some((d) => (d.stream?.slices.length ?? 0) > 1),
                  "a database was read in several slices",
                );
              for (const d of dirs)
                assert.equal(
                  statSync(d).mode & 0o077,
                  0,
                  `${d} is private (mode ${(statSync(d).mode & 0o777).toString(8)})`,
                );
            } finally {
              clearInterval(sampler);
              for (const w of workers) w.kill("SIGTERM");
              for (const w of await Promise.all(workers)) workerOutput += String(w.stdout) + String(w.stderr);
            }
            await nc.flush();
            assert.ok(samples > 20 && messages > 20, `the sampler ran (${samples} samples, ${messages} messages)`);
            assert.deepEqual([...inArgv], [], "argv");
            assert.deepEqual(onTheWire, [], "NATS traffic");
            assert.deepEqual(found(workerOutput), [], "worker output");

            // Every message still stored in every stream (the JOBS stream, the EVENTS stream, the KV buckets).
            const jsm = await jetstreamManager(nc);
            let stored = 0;
            for await (const si of jsm.streams.list()) {
              for (let seq = si.state.first_seq; seq <= si.state.last_seq && si.state.messages > 0; seq++) {
                const m = await jsm.streams.getMessage(si.config.name, { seq }).catch(() => null);
                if (!m) continue;
                stored++;
                assert.deepEqual(
                  found(new TextDecoder().decode(m.data)),
                  [],
                  `${si.config.name} #${seq} (${m.subject})`,
                );
              }
            }
            assert.ok(stored > 20, `${stored} stored messages read back`);
            await nc.close();

            // Every file under HOME: logs, state, reports, locks, and the dumps themselves.
            const files = filesUnder(home).filter((f) => statSync(f).size < 64 * 2 ** 20);
            assert.ok(
              files.some((f) => f.includes("/logs/")) &&
                files.some((f) => f.includes("/reports/")) &&
                files.some((f) => f.includes("/state/")),
            );
            for (const f of files) assert.deepEqual(found(readFileSync(f, "latin1")), [], f);
          },
          { natsArgs: ["-c", natsConf] },
        );
      } finally {
        await rm(outside, { recursive: true, force: true });
      }
    },
  );

test(
  "a worker without the shared key fails its job with a message that names the missing key",
  { timeout: 300_000 },
  async () => {
    await withTestEnv(async ({ source, target, home, nats }) => {
      await psqlExec(
        source,
        "postgres",
        "CREATE DATABASE keyless; \\connect keyless\nCREATE TABLE t AS SELECT g FROM generate_series(1, 10) g;",
      );
      const dumpRoot = join(home, "dumps");
      // No PGMIGRATE_SECRET and no passwords of its own.
      const worker = execa(
        process.execPath,
        [BIN, "worker", "--nats-url", nats.url, "--dump-root", dumpRoot, "--id", "keyless"],
        { env: { HOME: home }, reject: false },
      );
      try {
        const r = await runCli(
          [...serverArgs(source, target), "--nats-url", nats.url, "--dump-root", dumpRoot, "--worker-wait", "30"],
          cliEnv(home, source, target, { PGMIGRATE_SECRET: `the-coordinators-key-${Date.now()}` }),
        );
        assert.equal(r.exitCode, 1, r.stderr);
        assert.match(r.stderr, /"keyless" failed/);
        assert.match(
          r.stderr,
          /the job carries the source password sealed, but this worker has no shared key: set PGMIGRATE_SECRET/,
        );
        const report = await readReport(home, r.stderr);
        assert.match(
          report.databases.find((d) => d.name === "keyless")?.error ?? "",
          /no shared key: set PGMIGRATE_SECRET/,
        );
        // The dump never ran, so nothing reached the target.
        assert.deepEqual(await tableCounts(target, "keyless").catch(() => ({})), {});
      } finally {
        worker.kill("SIGTERM");
        await worker;
      }
    });
  },
);
