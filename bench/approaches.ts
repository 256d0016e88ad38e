// What a user would pick instead of pg-migrate, and pg-migrate itself, each as one timed command against the same
// source and a freshly reset target. Connections go through a 0600 passfile: no password in any argv.
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import type { LocalCluster } from "../demo/cluster.js";
import { PeakRss } from "./rss.js";

const BIN = fileURLToPath(new URL("../../bin/pg-migrate.js", import.meta.url));

export interface BenchContext {
  source: LocalCluster;
  target: LocalCluster;
  /** Scratch space for dumps; emptied before each run. */
  work: string;
  /** A libpq passfile holding both servers' passwords. */
  passfile: string;
  /** The source's user databases, largest first (the order a careful shell loop would take). */
  databases: string[];
  /** Uncompressed dumps made once, for the restore-only floor. */
  floorDumps: string;
  /** Folder of the PostgreSQL client tools. */
  pgBin: string;
}

export interface RunResult {
  wallMs: number;
  /** Peak RSS in bytes of the pg-migrate coordinator and of its largest worker. */
  rss?: { coordinator: number; worker: number };
}

export interface Approach {
  name: string;
  /** Not timed: what the run needs first (e.g. the floor's dumps). */
  prepare?(ctx: BenchContext): Promise<void>;
  run(ctx: BenchContext): Promise<RunResult>;
}

const conn = (c: LocalCluster) => `-h ${c.host} -p ${c.port} -U ${c.user}`;

/** bash with the passfile, the client tools first on PATH, and strict failure. */
async function sh(ctx: BenchContext, script: string, env: Record<string, string> = {}): Promise<number> {
  const t0 = performance.now();
  const r = await execa("bash", ["-euo", "pipefail", "-c", script], {
    env: { PATH: `${ctx.pgBin}:${process.env.PATH}`, PGPASSFILE: ctx.passfile, PGCONNECT_TIMEOUT: "15", ...env },
    extendEnv: false,
    // Not a socket: bash reads bashrc when its stdin is one (it takes that for rshd).
    stdin: "ignore",
    reject: false,
    all: true,
  });
  if (r.exitCode !== 0)
    throw new Error(`bench step failed (exit ${r.exitCode}):\n${script}\n${String(r.all).slice(-3000)}`);
  return performance.now() - t0;
}

/** Roles as the shell loop moves them: everything but the target's own superuser, whose password must stay. */
const globalsStep = (ctx: BenchContext) =>
  `pg_dumpall ${conn(ctx.source)} --globals-only -l postgres | grep -Ev '^(CREATE|ALTER) ROLE ${ctx.target.user}[ ;]' | psql -X -q ${conn(ctx.target)} -d postgres >/dev/null`;

/** Per database, `par` at a time (largest first), a command built from $DB. */
function perDatabase(ctx: BenchContext, par: number, body: string): string {
  return `printf '%s\\n' ${ctx.databases.join(" ")} | xargs -P ${par} -I{} bash -euo pipefail -c 'DB={}; ${body.replace(/'/g, `'\\''`)}'`;
}

export const APPROACHES: Approach[] = [
  {
    name: "pg_dumpall | psql",
    async run(ctx) {
      // psql carries on past "role postgres already exists", as a user piping it would.
      return {
        wallMs: await sh(
          ctx,
          `pg_dumpall ${conn(ctx.source)} -l postgres | grep -Ev '^(CREATE|ALTER) ROLE ${ctx.target.user}[ ;]' | psql -X -q ${conn(ctx.target)} -d postgres >/dev/null 2>&1`,
        ),
      };
    },
  },
  shellLoop("shell loop: pg_dump -Fd -j4 (gzip) | pg_restore -j4, 2 at a time", ""),
  shellLoop("shell loop without compression", "-Z0"),
  {
    name: "pgcopydb clone, per database, 2 at a time",
    async run(ctx) {
      const body =
        `createdb ${conn(ctx.target)} -T template0 "$DB" && ` +
        `pgcopydb clone --source "host=${ctx.source.host} port=${ctx.source.port} user=${ctx.source.user} dbname=$DB" ` +
        `--target "host=${ctx.target.host} port=${ctx.target.port} user=${ctx.target.user} dbname=$DB" ` +
        `--table-jobs 4 --index-jobs 4 --dir "${ctx.work}/$DB" >/dev/null 2>&1`;
      return { wallMs: await sh(ctx, `${globalsStep(ctx)}; ${perDatabase(ctx, 2, body)}`) };
    },
  },
  pgMigrate("pg-migrate (defaults, embedded)", []),
  {
    name: "floor: pg_restore -j4 of existing uncompressed dumps",
    async prepare(ctx) {
      await rm(ctx.floorDumps, { recursive: true, force: true });
      await mkdir(ctx.floorDumps, { recursive: true });
      await sh(ctx, perDatabase(ctx, 2, `pg_dump ${conn(ctx.source)} -Fd -Z0 -j4 -f "${ctx.floorDumps}/$DB" "$DB"`));
    },
    async run(ctx) {
      const body = `createdb ${conn(ctx.target)} -T template0 "$DB" && pg_restore ${conn(ctx.target)} -j4 -d "$DB" "${ctx.floorDumps}/$DB"`;
      return { wallMs: await sh(ctx, `${globalsStep(ctx)}; ${perDatabase(ctx, 2, body)}`) };
    },
  },
];

function shellLoop(name: string, compress: string): Approach {
  return {
    name,
    async run(ctx) {
      const body =
        `createdb ${conn(ctx.target)} -T template0 "$DB" && ` +
        `pg_dump ${conn(ctx.source)} -Fd ${compress} -j4 -f "${ctx.work}/$DB" "$DB" && ` +
        `pg_restore ${conn(ctx.target)} -j4 -d "$DB" "${ctx.work}/$DB" && rm -rf "${ctx.work}/$DB"`;
      return { wallMs: await sh(ctx, `${globalsStep(ctx)}; ${perDatabase(ctx, 2, body)}`) };
    },
  };
}

/** pg-migrate in embedded mode with these extra flags (none: its defaults). */
export function pgMigrate(name: string, extra: string[]): Approach {
  return {
    name,
    async run(ctx) {
      const home = join(ctx.work, "home");
      await mkdir(home, { recursive: true });
      const rss = new PeakRss((argv) => argv.some((a) => a.endsWith("bin/pg-migrate.js")));
      const t0 = performance.now();
      const r = await execa(
        process.execPath,
        [
          BIN,
          "--from-host",
          ctx.source.host,
          "--from-port",
          String(ctx.source.port),
          "--to-host",
          ctx.target.host,
          "--to-port",
          String(ctx.target.port),
          "--pg-bin",
          ctx.pgBin,
          ...extra,
        ],
        {
          env: { HOME: home, PGMIGRATE_FROM_PASS: ctx.source.password, PGMIGRATE_TO_PASS: ctx.target.password },
          reject: false,
          all: true,
        },
      );
      const wallMs = performance.now() - t0;
      const peaks = rss.stop();
      if (r.exitCode !== 0) throw new Error(`pg-migrate exited ${r.exitCode}:\n${String(r.all).slice(-3000)}`);
      const worker = Math.max(0, ...[...peaks].filter(([argv]) => argv.includes(" worker ")).map(([, b]) => b));
      const coordinator = Math.max(0, ...[...peaks].filter(([argv]) => !argv.includes(" worker ")).map(([, b]) => b));
      await rm(home, { recursive: true, force: true });
      return { wallMs, rss: { coordinator, worker } };
    },
  };
}
