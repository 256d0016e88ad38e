// The events are a contract: a plain NATS.js subscriber (no project code) sees, for every database and each of
// dump, restore and verify (streamed: its schema, each slice and its post-data, or its one whole job),
// claimed → progress (at least one) → done, and every payload validates against the published JSON Schema in
// docs/schemas.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { connect } from "@nats-io/transport-node";
import { Ajv2020 } from "ajv/dist/2020.js";
import { execa } from "execa";
import { psqlExec } from "../../demo/cluster.js";
import { demoDatabases, demoSql } from "../../demo/generate.js";
import { BIN, cliEnv, runCli, serverArgs } from "../helpers/cli.js";
import { withTestEnv } from "../helpers/env.js";

interface Seen {
  subject: string;
  payload: {
    type: string;
    status?: string;
    kind?: string;
    jobId?: string;
    db?: { name: string };
    worker?: string;
    phase?: string;
  };
}

for (const via of ["volume", "stream"] as const)
  test(
    `a plain subscriber sees claimed → progress → done for every job, and every payload matches the schema (--via ${via})`,
    { timeout: 600_000 },
    async () => {
      await withTestEnv(async ({ source, target, home, nats }) => {
        await psqlExec(source, "postgres", demoSql());
        // Streamed, a 25 MB table makes shop a schema job, parts of that table and a post job; the others go whole.
        if (via === "stream")
          await psqlExec(
            source,
            "shop",
            "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 3) AS pad FROM generate_series(1, 200000) g",
          );
        const schema = JSON.parse(
          readFileSync(fileURLToPath(new URL("../../../docs/schemas/event.schema.json", import.meta.url)), "utf8"),
        ) as object;
        const validate = new Ajv2020({ strict: false }).compile(schema);

        const nc = await connect({ servers: nats.url });
        const seen: Seen[] = [];
        const sub = nc.subscribe("pgmigrate.events.>", {
          callback: (err, m) => {
            if (!err) seen.push({ subject: m.subject, payload: m.json() });
          },
        });
        const secret = "events-test-secret";
        const dumpRoot = join(home, "dumps");
        const workers = ["e1", "e2"].map((id) =>
          execa(process.execPath, [BIN, "worker", "--nats-url", nats.url, "--dump-root", dumpRoot, "--id", id], {
            env: { HOME: home, PGMIGRATE_SECRET: secret },
            reject: false,
          }),
        );
        try {
          // -m 1: one restore at a time, and the next dump ahead of it (asserted below).
          const r = await runCli(
            [...serverArgs(source, target), "--nats-url", nats.url, "--dump-root", dumpRoot, "-m", "1", "--via", via],
            cliEnv(home, source, target, { PGMIGRATE_SECRET: secret }),
          );
          assert.equal(r.exitCode, 0, r.stderr);
          await nc.flush();
        } finally {
          sub.unsubscribe();
          await nc.close();
          for (const w of workers) w.kill("SIGTERM");
          await Promise.all(workers);
        }

        for (const s of seen)
          assert.ok(
            validate(s.payload),
            `${s.subject}: ${JSON.stringify(validate.errors)}\n${JSON.stringify(s.payload)}`,
          );
        const runEvents = seen.filter((s) => s.payload.type === "run").map((s) => s.payload.status);
        assert.deepEqual(runEvents, ["started", "finished"]);
        assert.ok(
          seen.some((s) => s.payload.type === "worker" && s.payload.status === "joined"),
          "workers joined",
        );

        /** Every job of this kind and database that finished: each went claimed → progress (at least one) → done. */
        const doneJobs = (kind: string, db: string): string[] => {
          const mine = seen.filter(
            (s) => s.payload.type === "job" && s.payload.kind === kind && s.payload.db?.name === db,
          );
          const done = [...new Set(mine.filter((s) => s.payload.status === "done").map((s) => s.payload.jobId!))];
          for (const jobId of done) {
            const statuses = mine
              .filter((s) => s.payload.jobId === jobId)
              .map((s) => s.payload.status)
              .join(",");
            assert.match(statuses, /^claimed(,progress)+,done$/, `${kind} ${jobId} of ${db}: ${statuses}`);
          }
          return done;
        };
        const phasesOf = (db: string) =>
          seen.filter((s) => s.payload.type === "db" && s.payload.db?.name === db).map((s) => s.payload.phase);
        if (via === "stream") {
          // shop: its schema, each part of its big table, then its post-data; the others are one slice, one job each.
          assert.equal(doneJobs("schema", "shop").length, 1);
          assert.ok(doneJobs("slice", "shop").length >= 4, "big is read in parts, each its own job");
          assert.equal(doneJobs("post", "shop").length, 1);
          assert.deepEqual(phasesOf("shop"), ["copying", "restoring", "done"]);
          for (const db of demoDatabases.filter((d) => d !== "shop")) {
            assert.equal(doneJobs("whole", db).length, 1, db);
            assert.deepEqual(phasesOf(db), ["copying", "done"], db);
          }
          for (const kind of ["dump", "restore", "verify"])
            assert.ok(!seen.some((s) => s.payload.kind === kind), `no ${kind} job when streamed`);
          return;
        }
        for (const db of demoDatabases) {
          for (const kind of ["dump", "restore", "verify"])
            assert.equal(doneJobs(kind, db).length, 1, `${kind} of ${db}`);
          assert.deepEqual(phasesOf(db), ["dumping", "dumped", "restoring", "restored", "verifying", "done"], db);
        }
        // Pipelined: the second database's dump starts when the first one's restore does — before that restore ends,
        // let alone its verification (the coordinator publishes both in one step, and its events arrive in order).
        const dbEvents = seen
          .filter((s) => s.payload.type === "db")
          .map((s) => `${s.payload.db?.name}:${s.payload.phase}`);
        const [first, second] = dbEvents.filter((e) => e.endsWith(":dumping")).map((e) => e.split(":")[0]);
        assert.ok(
          dbEvents.indexOf(`${second}:dumping`) < dbEvents.indexOf(`${first}:restored`),
          `the dump of ${second} overlaps the restore of ${first}: ${dbEvents.join(" ")}`,
        );
      });
    },
  );
