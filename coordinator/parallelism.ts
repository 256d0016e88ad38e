// How much runs at once: pg_dump/pg_restore -j for one database, and --max-parallel databases restoring at once
// (with as many dumping ahead of them). Defaults follow the cores of the machine the coordinator runs on — the
// one machine in embedded mode — and are then fitted to the connections both servers have left; an explicit
// -j or -m that does not fit is refused before anything starts, rather than failing mid-run on "too many clients".
import { PreflightError } from "../shared/errors.js";

export interface Parallelism {
  jobs: number;
  maxParallel: number;
}

const clamp = (n: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, n));

/**
 * Pure: the defaults for this many cores. On two cores the bench (bench/RESULTS.md) found -m 2 well ahead of
 * -m 4 once dumps overlap restores (four restores and four dumps at once only thrash), and -j 2 level with -j 4;
 * so -j follows the cores and -m half of them, each at least 2 and at most 8.
 */
export function defaultParallelism(cores: number): Parallelism {
  return { jobs: clamp(cores, 2, 8), maxParallel: clamp(Math.round(cores / 2), 2, 8) };
}

/** A database's size per -j worker: below it, a parallel worker does not earn its connection and its process. */
export const BYTES_PER_JOB = 64 * 2 ** 20;

/**
 * Pure: -j for one database. A tiny database dumped and restored with -j 4 opens ten connections for one table;
 * with -j 1 it opens two (bench/RESULTS.md: the per-database cost on tiny databases).
 */
export const jobsFor = (sizeBytes: number, jobs: number): number =>
  clamp(Math.floor(sizeBytes / BYTES_PER_JOB), 1, jobs);

/**
 * Connections the run holds on each server at most: on the source, each dump's pg_dump leader and -j workers and
 * the snapshot that counts rows; on the target, each restore's -j and its progress reader, and a verify beside
 * each restore.
 */
export const connectionsNeeded = (p: Parallelism): number => p.maxParallel * (p.jobs + 2);

/**
 * Pure: the parallelism that fits the connections the servers have free (max_connections less the reserved
 * ones and those in use). Defaults shrink (-j first, then -m) with a note; what the user gave is refused.
 */
export function fitConnections(
  wanted: Parallelism,
  free: { source: number; target: number },
  given: { jobs: boolean; maxParallel: boolean },
): Parallelism & { note?: string } {
  const fits = (p: Parallelism) => connectionsNeeded(p) <= Math.min(free.source, free.target);
  if (fits(wanted)) return wanted;
  const p = { ...wanted };
  while (!fits(p) && !given.jobs && p.jobs > 1) p.jobs--;
  while (!fits(p) && !given.maxParallel && p.maxParallel > 1) p.maxParallel--;
  const need = `-j ${wanted.jobs} -m ${wanted.maxParallel} needs ${connectionsNeeded(wanted)} connections on each server`;
  const have = `the source has ${free.source} free and the target ${free.target} (max_connections less reserved and used ones)`;
  if (!fits(p)) {
    const flags = [given.jobs ? "-j" : "", given.maxParallel ? "-m" : ""].filter(Boolean).join("/") || "-j/-m";
    throw new PreflightError(`${need}, but ${have}: lower ${flags} or raise max_connections`);
  }
  return { ...p, note: `${need}, but ${have}: using -j ${p.jobs} -m ${p.maxParallel}` };
}

/** The connections a server has left for this run: max_connections less the reserved slots and the sessions open now. */
export const FREE_CONNECTIONS_SQL = `
  SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(current_setting('reserved_connections', true)::int, 0)
       - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS free`;
