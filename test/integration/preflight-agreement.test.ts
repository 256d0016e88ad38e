// Plan and run decide on one preflight (coordinator/preflight.ts): for each situation below, `plan`'s verdict and
// words are the run's. A refused run ends with the very line plan printed after "a run would be refused: ", and
// changes nothing on the target; a run that goes on says every warning plan said, and about an unfinished earlier
// run the same sentence.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { psqlExec, type LocalCluster } from "../../demo/cluster.js";
import { extensionOnlyOnSource } from "../helpers/extension.js";
import { cliEnv, databasesOf, errorLines, serverArgs, settingsOf } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";
import { startCli } from "../helpers/live.js";
import { serverOfMajor } from "../helpers/majors.js";

interface Situation {
  name: string;
  /** Makes the situation on the servers (and under HOME); runs just before plan. */
  setup?: (env: { source: LocalCluster; target: LocalCluster; home: string }) => Promise<unknown>;
  /** Flags beyond the servers'. */
  args?: string[];
  /** A command the CLI runs under (a small dump volume). */
  prefix?: (home: string) => string[];
  verdict: "refused" | "starts";
  /** What both must say: in the refusal (refused), or among the warnings and lines (starts). */
  says: RegExp;
}

const warningsOf = (stderr: string) => stderr.split("\n").filter((l) => l.startsWith("pg-migrate: warning: "));

/** Plan, then the run, in one situation: their verdicts and words compared. */
async function agree(
  s: Situation,
  env: { source: LocalCluster; target: LocalCluster; home: string },
  base: string[],
): Promise<void> {
  const { source, target, home } = env;
  await s.setup?.(env);
  const args = [...serverArgs(source, target), ...base, ...(s.args ?? [])];
  const prefix = s.prefix?.(home);
  const cli = (a: string[]) => startCli(a, cliEnv(home, source, target), prefix ? { prefix } : {}).result;
  const before = { databases: await databasesOf(target), settings: await settingsOf(target) };

  const plan = await cli(["plan", ...args]);
  const run = await cli(args);
  const planWarnings = warningsOf(plan.stderr);
  for (const w of planWarnings) assert.ok(run.stderr.includes(w), `${s.name}: the run says plan's warning ${w}`);

  if (s.verdict === "refused") {
    assert.equal(plan.exitCode, 3, `${s.name}: plan refuses\n${plan.stdout}${plan.stderr}`);
    assert.equal(run.exitCode, 3, `${s.name}: the run refuses\n${run.stderr}`);
    const planned = /^a run would be refused: (.*)$/m.exec(plan.stdout)?.[1];
    assert.ok(planned, plan.stdout);
    assert.match(planned, s.says, `${s.name}: plan names it`);
    assert.deepEqual(errorLines(run.stderr), [`pg-migrate: error: ${planned}`], `${s.name}: the same words`);
    // Every warning the refused run said, plan said: the run stopped at the preflight.
    assert.deepEqual(warningsOf(run.stderr), planWarnings, `${s.name}: the same warnings`);
    assert.deepEqual(
      { databases: await databasesOf(target), settings: await settingsOf(target) },
      before,
      `${s.name}: nothing changed on the target`,
    );
  } else {
    assert.equal(plan.exitCode, 0, `${s.name}: plan approves\n${plan.stdout}${plan.stderr}`);
    assert.match(plan.stdout, /nothing was changed; a run with these flags would start/);
    assert.notEqual(run.exitCode, 3, `${s.name}: the run is not refused\n${run.stderr}`);
    assert.deepEqual(errorLines(run.stderr), [], run.stderr);
    const planSays = [...planWarnings, ...plan.stdout.split("\n")].filter((l) => s.says.test(l));
    assert.ok(planSays.length, `${s.name}: plan says it\n${plan.stdout}${plan.stderr}`);
    for (const l of planSays) {
      const words = l.replace(/^(pg-migrate: warning: |a run with these flags: )/, "");
      assert.ok(run.stderr.includes(words), `${s.name}: the run says ${JSON.stringify(words)}\n${run.stderr}`);
    }
  }
}

test(
  "plan and run agree: a conflicting database, too few connections, a missing extension, an unfinished run, a full volume",
  { timeout: 900_000 },
  async (t) => {
    await withTestEnv(
      async (env) => {
        const { source, target } = env;
        await psqlExec(
          source,
          "postgres",
          "CREATE DATABASE shop; CREATE DATABASE inventory; CREATE DATABASE bulky; CREATE ROLE app LOGIN PASSWORD 'app-Pw-1';",
        );
        await psqlExec(
          source,
          "shop",
          "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 2000) g;",
        );
        // About 24 MB: more than a 4 MB dump volume could hold a share of.
        await psqlExec(
          source,
          "bulky",
          "CREATE EXTENSION pgcrypto; CREATE TABLE noise AS SELECT g AS id, gen_random_bytes(1024) AS b FROM generate_series(1, 24000) g;",
        );
        const ext = await extensionOnlyOnSource(source, "inventory");
        const volume = join(env.home, "small-volume");
        const situations: Situation[] = [
          {
            name: "a conflicting target database",
            setup: () => psqlExec(target, "postgres", "CREATE DATABASE shop"),
            verdict: "refused",
            says: /the target already has database\(s\) "shop" that this run did not create/,
          },
          {
            name: "too few free connections (the source allows 12, -j 4 -m 2 needs 12 more than it has)",
            setup: () => psqlExec(target, "postgres", "DROP DATABASE shop"),
            args: ["-j", "4", "-m", "2"],
            verdict: "refused",
            says: /-j 4 -m 2 needs 12 connections on each server, but the source has \d+ free .*: lower -j\/-m or raise max_connections/,
          },
          {
            name: "a full dump volume",
            prefix: () => [
              "/usr/bin/unshare",
              "-m",
              "/bin/sh",
              "-c",
              `mkdir -p "${volume}" && mount -t tmpfs -o size=4m pgm-agree "${volume}" && exec "$0" "$@"`,
            ],
            args: ["--dump-root", volume],
            verdict: "refused",
            says: new RegExp(`the dump volume ${volume} \\(--dump-root\\) has 0\\.00 GiB free, too little for dumps`),
          },
          {
            name: "a missing extension: that database fails, the others go on",
            verdict: "starts",
            says: new RegExp(
              `"inventory" uses extension\\(s\\) "${ext}" that the target has not installed; that database fails before anything is created for it`,
            ),
          },
          {
            // The run before failed "inventory": its run is unfinished, and a run with the same flags resumes it.
            name: "an unfinished earlier run",
            verdict: "starts",
            says: /resuming run \S+ \(started [^)]+\); --restart starts over/,
          },
          {
            name: "an unfinished earlier run and --restart without --yes",
            args: ["--restart"],
            verdict: "refused",
            says: /--restart drops the 2 databases run \S+ created on the target \("(bulky|shop)", "(bulky|shop)"\): add --yes to confirm/,
          },
        ];
        for (const s of situations) await t.test(s.name, () => agree(s, env, ["-j", "1", "-m", "1", "--workers", "1"]));
      },
      { nats: false, sourceSettings: { max_connections: "15" } },
    );
  },
);

test("plan and run agree: pg_dump older than the source", { timeout: 600_000 }, async () => {
  await withTestEnv(
    async (env) => {
      await psqlExec(env.source, "postgres", "CREATE DATABASE shop");
      await agree(
        {
          name: "an old pg_dump",
          verdict: "refused",
          says: /pg_dump 15 is older than the source server \(PostgreSQL 16\.\d+\) and cannot dump it/,
        },
        env,
        [],
      );
    },
    { nats: false, sourceServer: await serverOfMajor(16), targetServer: await serverOfMajor(17) },
  );
});
