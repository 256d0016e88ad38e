// Authenticated and encrypted connections: a source that takes only TLS (hostssl) reached with verify-full by
// the coordinator and by the workers' native tools, and a NATS server that wants a user, a password and a
// client certificate over TLS. Certificates come from a CA the test makes with openssl.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { psqlExec, startNats } from "../../demo/cluster.js";
import { demoSql } from "../../demo/generate.js";
import { makeCa, type TestCa } from "../helpers/certs.js";
import { BIN, cliEnv, databasesOf, errorLines, query, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { assertMigrated } from "../helpers/faults.js";

const NATS_USER = "migrator";
const NATS_PASS = `Nats-Pw-${Date.now()}`;

test(
  "verify-full TLS to a hostssl-only source, and NATS with a user, a password and client certificates over TLS",
  { timeout: 600_000 },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgm-tls-"));
    try {
      const ca: TestCa = await makeCa(dir);
      const otherCa: TestCa = await makeCa(await mkdtemp(join(dir, "other-")));
      // The PostgreSQL certificate names only the address the tool is given: verify-full checks that.
      const pgCert = await ca.leaf("pg-source", ["IP:127.0.0.1"]);
      const natsCert = await ca.leaf("nats", ["IP:127.0.0.1", "DNS:localhost"]);
      const client = await ca.leaf("client", ["DNS:pg-migrate-client"]);
      const natsConf = join(dir, "nats.conf");
      await writeFile(
        natsConf,
        `authorization { user: "${NATS_USER}", password: "${NATS_PASS}" }\n` +
          `tls { cert_file: "${natsCert.cert}", key_file: "${natsCert.key}", ca_file: "${ca.caFile}", verify: true, timeout: 5 }\n`,
      );

      await withTestEnv(
        async ({ source, target, home, nats }) => {
          const tlsSource = { ...source, ssl: { ca: ca.caPem } };
          // The server really refuses a connection without TLS.
          await assert.rejects(query({ ...source, ssl: false }, "postgres", "SELECT 1"), /no encryption/);
          await psqlExec(source, "postgres", demoSql());
          const sourceDbs = (
            await query<{ datname: string }>(
              tlsSource,
              "postgres",
              "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'",
            )
          ).map((r) => r.datname);
          assert.ok(sourceDbs.length >= 2, `demo databases on the source: ${sourceDbs.join(", ")}`);

          const tlsUrl = `tls://127.0.0.1:${nats.port}`;
          const dumpRoot = join(home, "dumps");
          const natsEnv = {
            PGMIGRATE_NATS_USER: NATS_USER,
            PGMIGRATE_NATS_PASS: NATS_PASS,
            PGMIGRATE_NATS_CA: ca.caFile,
            PGMIGRATE_NATS_CERT: client.cert,
            PGMIGRATE_NATS_KEY: client.key,
          };
          const secret = `tls-test-key-${Date.now()}`;
          const sourceTls = ["--from-sslmode", "verify-full", "--from-sslrootcert", ca.caFile];

          // Without the NATS credentials: one clear line naming what to set, nothing created on the target.
          const noCreds = await runCli(
            [
              ...serverArgs(source, target),
              ...sourceTls,
              "--nats-url",
              tlsUrl,
              "--nats-ca",
              ca.caFile,
              "--nats-cert",
              client.cert,
              "--nats-key",
              client.key,
              "--dump-root",
              dumpRoot,
            ],
            cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
            120_000,
          );
          assert.notEqual(noCreds.exitCode, 0);
          assert.equal(errorLines(noCreds.stderr).length, 1, noCreds.stderr);
          assert.match(noCreds.stderr, /refused our credentials: set --nats-user with PGMIGRATE_NATS_PASS/);
          // Without the CA, the broker's certificate is not trusted, and the message says which flag gives it.
          const noCa = await runCli(
            [...serverArgs(source, target), ...sourceTls, "--nats-url", tlsUrl, "--dump-root", dumpRoot],
            cliEnv(home, source, target, {
              PGMIGRATE_SECRET: secret,
              PGMIGRATE_NATS_USER: NATS_USER,
              PGMIGRATE_NATS_PASS: NATS_PASS,
              PGMIGRATE_NATS_TLS: "1",
            }),
            120_000,
          );
          assert.notEqual(noCa.exitCode, 0);
          assert.match(noCa.stderr, /--nats-ca/, noCa.stderr);
          // verify-full without a CA (libpq refuses it too), against another CA, and by a name the certificate does
          // not hold: refused, naming the fix.
          const noRoot = await runCli(
            ["plan", ...serverArgs(source, target), "--from-sslmode", "verify-full"],
            cliEnv(home, source, target),
          );
          assert.equal(noRoot.exitCode, 2, noRoot.stderr);
          assert.match(noRoot.stderr, /--from-sslmode verify-full needs the CA .*--from-sslrootcert/);
          const untrusted = await runCli(
            [
              "plan",
              ...serverArgs(source, target),
              "--from-sslmode",
              "verify-ca",
              "--from-sslrootcert",
              otherCa.caFile,
            ],
            cliEnv(home, source, target),
          );
          assert.equal(untrusted.exitCode, 3, untrusted.stderr);
          assert.match(untrusted.stderr, /not signed by a CA this host trusts .*--from-sslrootcert/);
          const wrongName = await runCli(
            ["plan", ...serverArgs(source, target), ...sourceTls, "--from-host", "localhost"],
            cliEnv(home, source, target),
          );
          assert.equal(wrongName.exitCode, 3, wrongName.stderr);
          assert.match(wrongName.stderr, /does not name localhost/);
          assert.deepEqual(await databasesOf(target), [], "nothing created on the target by the refused runs");

          // Workers with their own NATS credentials from the environment; the passwords reach them sealed in the jobs.
          const workers = ["t1", "t2"].map((id) =>
            execa(process.execPath, [BIN, "worker", "--nats-url", tlsUrl, "--dump-root", dumpRoot, "--id", id], {
              env: { HOME: home, PGMIGRATE_SECRET: secret, ...natsEnv },
              reject: false,
            }),
          );
          try {
            const r = await runCli(
              [
                ...serverArgs(source, target),
                ...sourceTls,
                "--nats-url",
                tlsUrl,
                "--dump-root",
                dumpRoot,
                "--max-parallel",
                "2",
              ],
              cliEnv(home, source, target, { PGMIGRATE_SECRET: secret, ...natsEnv }),
            );
            assert.equal(r.exitCode, 0, r.stderr);
          } finally {
            for (const w of workers) w.kill("SIGTERM");
            const ended = await Promise.all(workers);
            for (const w of ended)
              assert.doesNotMatch(String(w.stderr), /cannot connect/, "workers connected to the TLS broker");
          }
          await assertMigrated(tlsSource, target, sourceDbs);
        },
        { sourceTls: { cert: pgCert.certPem, key: pgCert.keyPem, only: true }, natsArgs: ["-c", natsConf] },
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
);

test(
  "a NATS token from a file is accepted; without it the broker's refusal names the flags",
  { timeout: 120_000 },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgm-token-"));
    const token = `Tok-${Date.now()}-q`;
    const conf = join(dir, "nats.conf");
    await writeFile(conf, `authorization { token: "${token}" }\n`);
    const tokenFile = join(dir, "token");
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    const nats = await startNats({ args: ["-c", conf] });
    try {
      const env = { HOME: dir };
      // Connected and authenticated: the KV simply holds no run yet.
      const ok = await runCli(["status", "--nats-url", nats.url, "--nats-token-file", tokenFile], env, 60_000);
      assert.match(ok.stderr, /no pg-migrate run in the KV of nats:\/\/127\.0\.0\.1:\d+/, ok.stderr);
      const viaEnv = await runCli(["status", "--nats-url", nats.url], { ...env, PGMIGRATE_NATS_TOKEN: token }, 60_000);
      assert.match(viaEnv.stderr, /no pg-migrate run in the KV/, viaEnv.stderr);
      const refused = await runCli(["status", "--nats-url", nats.url], env, 60_000);
      assert.notEqual(refused.exitCode, 0);
      assert.match(
        refused.stderr,
        /cannot connect to NATS at .*: the server refused our credentials: set .*PGMIGRATE_NATS_TOKEN \(or --nats-token-file\)/,
      );
    } finally {
      await nats.stop();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
