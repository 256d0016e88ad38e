// The events are a contract: a plain NATS.js subscriber (no project code) sees, for every database and each of
// dump, restore and verify, claimed → progress (at least one) → done, and every payload validates against the
// published JSON Schema in docs/schemas.
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

test(
  "a plain subscriber sees claimed → progress → done for every job, and every payload matches the schema",
  { timeout: 600_000 },
  async () => {
    await withTestEnv(async ({ source, target, home, nats }) => {
      await psqlExec(source, "postgres", demoSql());
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
          [...serverArgs(source, target), "--nats-url", nats.url, "--dump-root", dumpRoot, "-m", "1"],
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

      for (const db of demoDatabases) {
        for (const kind of ["dump", "restore", "verify"]) {
          const mine = seen.filter(
            (s) => s.payload.type === "job" && s.payload.kind === kind && s.payload.db?.name === db,
          );
          const doneJob = mine.find((s) => s.payload.status === "done")?.payload.jobId;
          assert.ok(doneJob, `${kind} of ${db} done`);
          const statuses = mine
            .filter((s) => s.payload.jobId === doneJob)
            .map((s) => s.payload.status)
            .join(",");
          assert.match(statuses, /^claimed(,progress)+,done$/, `${kind} of ${db}: ${statuses}`);
        }
        const phases = seen
          .filter((s) => s.payload.type === "db" && s.payload.db?.name === db)
          .map((s) => s.payload.phase);
        assert.deepEqual(phases, ["dumping", "dumped", "restoring", "restored", "verifying", "done"], db);
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
