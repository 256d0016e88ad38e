// The demo: two throwaway clusters, the project's own demo data on one, a real pg-migrate run to the other.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { startCluster, psqlExec, type LocalCluster } from "./cluster.js";
import { demoSql } from "./generate.js";

const BIN = fileURLToPath(new URL("../../bin/pg-migrate.js", import.meta.url));
const password = (prefix: string) => `${prefix}-${Math.random().toString(36).slice(2)}`;

const clusters: LocalCluster[] = [];
const home = await mkdtemp(join(tmpdir(), "pg-migrate-demo-"));
let code = 1;
try {
  console.log("starting two throwaway PostgreSQL clusters…");
  const [source, target] = await Promise.all([
    startCluster({ name: "demo-source", password: password("src") }),
    startCluster({ name: "demo-target", password: password("tgt") }),
  ]);
  clusters.push(source, target);
  console.log(`source 127.0.0.1:${source.port}, target 127.0.0.1:${target.port}; generating demo data…`);
  await psqlExec(source, "postgres", demoSql());
  const args = [
    "--from-host",
    source.host,
    "--from-port",
    String(source.port),
    "--to-host",
    target.host,
    "--to-port",
    String(target.port),
    ...process.argv.slice(2),
  ];
  console.log(`$ pg-migrate ${args.join(" ")}   (passwords in PGMIGRATE_FROM_PASS / PGMIGRATE_TO_PASS)\n`);
  const r = await execa(process.execPath, [BIN, ...args], {
    env: { HOME: home, PGMIGRATE_FROM_PASS: source.password, PGMIGRATE_TO_PASS: target.password },
    stdio: "inherit",
    reject: false,
  });
  code = r.exitCode ?? 1;
  console.log(`\npg-migrate exited ${code}`);
} finally {
  await Promise.all(clusters.map((c) => c.stop()));
  await rm(home, { recursive: true, force: true });
}
process.exitCode = code;
