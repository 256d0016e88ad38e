// npm run bench: pg-migrate against what users would pick instead, on the same data in the same invocation,
// the approaches alternating run by run. Every run starts from a reset target and ends with every table's row
// count checked against the source. Prints medians, spreads and ratios, and writes the results as JSON.
//
//   npm run bench -- [--scale 16] [--dbs 6] [--tiny 30] [--realistic 0.25] [--runs 6] [--only name,name]
//                    [--json bench/results.json]
//                    [--variant="--compress 0 -m 2"]…   pg-migrate with other flags too, side by side with its defaults
//   npm run bench -- --mode many     30 and then 300 tiny databases: how time grows with the number of databases
//   npm run bench -- --mode large    one database of --scale, then one 4× its size: how time grows with size
//   npm run bench -- --mode table [--table-gb 1.5]   one database of one big table with two indexes
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import Table from "cli-table3";
import { execa } from "execa";
import { postgresBinDir, startCluster, type LocalCluster } from "../demo/cluster.js";
import { APPROACHES, pgMigrate, type Approach, type BenchContext, type RunResult } from "./approaches.js";
import {
  generate,
  generateOneTable,
  resetTarget,
  rowCounts,
  userDatabases,
  withClient,
  type DatasetSpec,
} from "./dataset.js";
import { summarize, type Summary } from "./stats.js";

const { values: o } = parseArgs({
  options: {
    mode: { type: "string", default: "standard" },
    "table-gb": { type: "string", default: "1.5" },
    scale: { type: "string", default: "16" },
    dbs: { type: "string", default: "6" },
    tiny: { type: "string", default: "30" },
    /** Realistic (poorly compressible) rows per database as a share of pgbench's accounts rows; 0: pgbench's own rows only. */
    realistic: { type: "string", default: "0.25" },
    runs: { type: "string", default: "6" },
    only: { type: "string" },
    variant: { type: "string", multiple: true },
    json: { type: "string", default: "bench/results.json" },
  },
});
const num = (v: string | undefined, flag: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${flag} wants a number, got ${v}`);
  return n;
};

const log = (line: string) => process.stderr.write(`bench: ${line}\n`);

interface Cluster2 {
  source: LocalCluster;
  target: LocalCluster;
}

/** Two throwaway clusters with the settings a migration box would have; both are stopped afterwards. */
async function clusters(): Promise<Cluster2> {
  const settings = { shared_buffers: "512MB", max_wal_size: "2GB", max_connections: "100" };
  const [source, target] = await Promise.all([
    startCluster({ name: "bench-source", password: `bench-src-${Date.now()}`, settings }),
    startCluster({ name: "bench-target", password: `bench-tgt-${Date.now()}`, settings }),
  ]);
  return { source, target };
}

async function passfile(dir: string, c: Cluster2): Promise<string> {
  const file = join(dir, "pgpass");
  const line = (x: LocalCluster) => `${x.host}:${x.port}:*:${x.user}:${x.password}`;
  await writeFile(file, `${line(c.source)}\n${line(c.target)}\n`, { mode: 0o600 });
  return file;
}

async function databasesBySize(c: LocalCluster): Promise<string[]> {
  return withClient(c, "postgres", async (client) =>
    (
      await client.query<{ d: string }>(
        "SELECT datname AS d FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY pg_database_size(datname) DESC, 1",
      )
    ).rows.map((r) => r.d),
  );
}

async function sourceBytes(c: LocalCluster): Promise<number> {
  return withClient(c, "postgres", async (client) =>
    Number(
      (
        await client.query<{ b: string }>(
          "SELECT sum(pg_database_size(datname))::bigint AS b FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'",
        )
      ).rows[0]!.b,
    ),
  );
}

/** Runs each approach `runs` times, alternating, each from a reset target and checked row for row. */
async function measure(
  ctx: BenchContext,
  approaches: Approach[],
  runs: number,
  expected: Record<string, number>,
): Promise<Map<string, RunResult[]>> {
  const results = new Map<string, RunResult[]>(approaches.map((a) => [a.name, []]));
  for (const a of approaches) await a.prepare?.(ctx);
  for (let round = 1; round <= runs; round++) {
    for (const a of approaches) {
      await resetTarget(ctx.target);
      await rm(join(ctx.work, "scratch"), { recursive: true, force: true });
      await mkdir(join(ctx.work, "scratch"), { recursive: true });
      const r = await a.run({ ...ctx, work: join(ctx.work, "scratch") });
      const got = await rowCounts(ctx.target);
      const wrong = Object.keys(expected).filter((k) => got[k] !== expected[k]);
      if (wrong.length)
        throw new Error(
          `${a.name}, run ${round}: ${wrong.length} table(s) differ, e.g. ${wrong
            .slice(0, 3)
            .map((k) => `${k}: ${got[k]} vs ${expected[k]}`)
            .join(", ")}`,
        );
      results.get(a.name)!.push(r);
      log(
        `round ${round}/${runs}: ${a.name}: ${(r.wallMs / 1000).toFixed(2)}s${r.rss ? ` (peak RSS coordinator ${mb(r.rss.coordinator)}, worker ${mb(r.rss.worker)})` : ""}`,
      );
    }
  }
  return results;
}

const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function withBench<T>(fn: (ctx: BenchContext, c: Cluster2) => Promise<T>): Promise<T> {
  const work = await mkdtemp(join(tmpdir(), "pgm-bench-"));
  const c = await clusters();
  try {
    const pgBin =
      (await execa("bash", ["-c", 'dirname "$(command -v pg_dump)"'])).stdout.trim() || (await postgresBinDir());
    const ctx: BenchContext = {
      source: c.source,
      target: c.target,
      work,
      passfile: await passfile(work, c),
      databases: [],
      floorDumps: join(work, "floor"),
      pgBin,
    };
    return await fn(ctx, c);
  } finally {
    await Promise.allSettled([c.source.stop(), c.target.stop()]);
    await rm(work, { recursive: true, force: true });
  }
}

async function available(base: Approach[]): Promise<Approach[]> {
  const variants = (o.variant ?? []).map((v) => pgMigrate(`pg-migrate ${v.trim()}`, v.trim().split(/\s+/)));
  const at = base.findIndex((a) => a.name.startsWith("pg-migrate"));
  const approaches = [...base.slice(0, at + 1), ...variants, ...base.slice(at + 1)];
  const pgcopydb = await execa("bash", ["-c", "command -v pgcopydb"], { reject: false });
  const only = o.only?.split(",").map((x) => x.trim().toLowerCase());
  return approaches.filter((a) => {
    if (a.name.startsWith("pgcopydb") && pgcopydb.exitCode !== 0) {
      log("pgcopydb is not installed (Debian: apt-get install pgcopydb): left out");
      return false;
    }
    return !only || only.some((x) => a.name.toLowerCase().includes(x));
  });
}

async function standard(): Promise<unknown> {
  const spec: DatasetSpec = {
    pgbenchDbs: num(o.dbs, "dbs"),
    scale: num(o.scale, "scale"),
    realisticShare: num(o.realistic, "realistic"),
    tinyDbs: num(o.tiny, "tiny"),
    roles: 20,
  };
  const runs = num(o.runs, "runs");
  return withBench(async (ctx) => {
    await generate(ctx.source, spec, log);
    ctx.databases = await databasesBySize(ctx.source);
    const bytes = await sourceBytes(ctx.source);
    const expected = await rowCounts(ctx.source);
    log(
      `source: ${ctx.databases.length} databases, ${(bytes / 2 ** 30).toFixed(2)} GiB, ${Object.keys(expected).length} tables`,
    );
    const approaches = await available(APPROACHES);
    const results = await measure(ctx, approaches, runs, expected);
    const summaries = summarize(results, "shell loop: pg_dump", "floor:");
    // Per-database cost on the tiny databases alone: a cluster holding only those.
    const tiny = spec.tinyDbs ? await tinyCost(spec.tinyDbs, Math.min(runs, 3)) : undefined;
    print(summaries, tiny);
    return { spec, sourceBytes: bytes, runs, summaries, tiny };
  });
}

async function tinyCost(count: number, runs: number): Promise<Summary[]> {
  return withBench(async (ctx) => {
    await generate(ctx.source, { pgbenchDbs: 0, scale: 0, realisticShare: 0, tinyDbs: count, roles: 0 }, log);
    ctx.databases = await userDatabases(ctx.source);
    const expected = await rowCounts(ctx.source);
    const approaches = (await available(APPROACHES)).filter(
      (a) => a.name.startsWith("shell loop: pg_dump") || a.name.startsWith("pg-migrate"),
    );
    const results = await measure(ctx, approaches, runs, expected);
    return summarize(results, "shell loop: pg_dump", undefined).map((x) => ({
      ...x,
      perDatabaseMs: x.medianMs / count,
    }));
  });
}

async function many(): Promise<unknown> {
  const runs = Math.max(1, Math.min(num(o.runs, "runs"), 3));
  const out: Record<string, Summary[]> = {};
  for (const count of [30, 300]) {
    out[count] = await withBench(async (ctx) => {
      await generate(ctx.source, { pgbenchDbs: 0, scale: 0, realisticShare: 0, tinyDbs: count, roles: 0 }, log);
      ctx.databases = await userDatabases(ctx.source);
      const approaches = (await available(APPROACHES)).filter(
        (a) => a.name.startsWith("pg-migrate") || a.name.startsWith("shell loop: pg_dump"),
      );
      const results = await measure(ctx, approaches, runs, await rowCounts(ctx.source));
      return summarize(results, "shell loop: pg_dump", undefined);
    });
  }
  const growth = out[30]!.map((a) => {
    const big = out[300]!.find((b) => b.name === a.name)!;
    // The cost of one more database, the run's fixed start and end set aside.
    return {
      name: a.name,
      ms30: a.medianMs,
      ms300: big.medianMs,
      ratioTo10x: big.medianMs / (10 * a.medianMs),
      perExtraDbMs: (big.medianMs - a.medianMs) / 270,
      peakRss300: big.peakRss,
    };
  });
  const t = new Table({
    head: [
      "approach",
      "30 tiny dbs",
      "300 tiny dbs",
      "300 / (10 × 30)",
      "per database beyond 30",
      "peak RSS at 300 coord / worker",
    ],
    style: { head: [], border: [] },
  });
  for (const g of growth)
    t.push([
      g.name,
      s(g.ms30),
      s(g.ms300),
      g.ratioTo10x.toFixed(2),
      `${g.perExtraDbMs.toFixed(0)} ms`,
      g.peakRss300 ? `${mb(g.peakRss300.coordinator)} / ${mb(g.peakRss300.worker)}` : "",
    ]);
  process.stdout.write(`${t.toString()}\n`);
  return { runs, growth };
}

async function large(): Promise<unknown> {
  const scale = num(o.scale, "scale");
  const runs = Math.max(1, Math.min(num(o.runs, "runs"), 3));
  const out: { scale: number; bytes: number; summaries: Summary[] }[] = [];
  for (const sc of [scale, scale * 4]) {
    out.push(
      await withBench(async (ctx) => {
        await generate(ctx.source, { pgbenchDbs: 1, scale: sc, realisticShare: 0.25, tinyDbs: 0, roles: 0 }, log);
        ctx.databases = await userDatabases(ctx.source);
        const approaches = (await available(APPROACHES)).filter(
          (a) =>
            a.name.startsWith("pg-migrate") || a.name.startsWith("shell loop: pg_dump") || a.name.startsWith("floor"),
        );
        const results = await measure(ctx, approaches, runs, await rowCounts(ctx.source));
        return {
          scale: sc,
          bytes: await sourceBytes(ctx.source),
          summaries: summarize(results, "shell loop: pg_dump", "floor:"),
        };
      }),
    );
  }
  const t = new Table({
    head: ["approach", `1 db, scale ${scale}`, `1 db, scale ${scale * 4}`, "time ratio", "size ratio"],
    style: { head: [], border: [] },
  });
  for (const a of out[0]!.summaries) {
    const b = out[1]!.summaries.find((x) => x.name === a.name)!;
    t.push([
      a.name,
      s(a.medianMs),
      s(b.medianMs),
      (b.medianMs / a.medianMs).toFixed(2),
      (out[1]!.bytes / out[0]!.bytes).toFixed(2),
    ]);
  }
  process.stdout.write(`${t.toString()}\n`);
  return { runs, sizes: out };
}

/** One database whose weight is one table (heap of --table-gb GiB, two indexes): the case slices split. */
async function oneTable(): Promise<unknown> {
  const runs = Math.max(1, Math.min(num(o.runs, "runs"), 3));
  return withBench(async (ctx) => {
    const sizes = await generateOneTable(ctx.source, num(o["table-gb"], "table-gb") * 2 ** 30, log);
    ctx.databases = await userDatabases(ctx.source);
    const approaches = (await available(APPROACHES)).filter(
      (a) => a.name.startsWith("pg-migrate") || a.name.startsWith("shell loop") || a.name.startsWith("floor"),
    );
    const results = await measure(ctx, approaches, runs, await rowCounts(ctx.source));
    const summaries = summarize(results, "shell loop: pg_dump", "floor:");
    print(summaries, undefined);
    return { ...sizes, runs, summaries };
  });
}

function print(summaries: Summary[], tiny: Summary[] | undefined): void {
  const t = new Table({
    head: ["approach", "median", "min", "max", "× shell loop", "× floor", "peak RSS coord / worker"],
    style: { head: [], border: [] },
  });
  for (const x of summaries) {
    t.push([
      x.name,
      s(x.medianMs),
      s(x.minMs),
      s(x.maxMs),
      x.vsReference?.toFixed(2) ?? "-",
      x.vsFloor?.toFixed(2) ?? "-",
      x.peakRss ? `${mb(x.peakRss.coordinator)} / ${mb(x.peakRss.worker)}` : "",
    ]);
  }
  process.stdout.write(`${t.toString()}\n`);
  if (tiny)
    for (const x of tiny)
      process.stdout.write(
        `tiny databases, ${x.name}: ${(x.perDatabaseMs ?? 0).toFixed(0)} ms per database (median ${s(x.medianMs)})\n`,
      );
}

const started = new Date();
const mode = o.mode ?? "standard";
const body =
  mode === "many"
    ? await many()
    : mode === "large"
      ? await large()
      : mode === "table"
        ? await oneTable()
        : await standard();
const machine = {
  cpus: cpus().length,
  cpuModel: cpus()[0]?.model,
  memGiB: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  pgDump: (await execa("pg_dump", ["--version"])).stdout.trim(),
};
const file = o.json!.replace(/\.json$/, mode === "standard" ? ".json" : `-${mode}.json`);
await writeFile(file, JSON.stringify({ mode, date: started.toISOString(), machine, ...(body as object) }, null, 2));
log(`results written to ${file}`);
