// --via auto, the default: which databases stream and which go through the dump volume. Measured side by side
// (bench/RESULTS.md, 2026-12-03): a database whose weight is one big table streams in parallel parts in about half
// the volume path's time, where the volume path runs its dump and then its restore on one worker; but a cluster of
// several mid-sized databases is faster through the volume, whose -m databases at once already keep every core
// busy, and a small database costs more streamed (its snapshot holder, a schema archive and two pg_restore runs).
import type { Via } from "./config.js";
import { SPLIT_FROM_VERSION } from "./slices.js";

export type DbVia = Exclude<Via, "auto">;

/** The smallest database --via auto streams: below it the streamed path's fixed cost is more than it saves. */
export const STREAM_MIN_BYTES = 256 * 2 ** 20;

/**
 * Pure: each database's path. auto streams a database that is big (STREAM_MIN_BYTES) and holds at least a
 * 1/maxParallel share of the cluster's bytes — the one the other databases cannot keep the workers busy beside —
 * from a source whose tables can be split; everything else goes through the volume.
 */
export function chooseVia(
  databases: readonly { name: string; sizeBytes: number }[],
  opts: { via: Via; maxParallel: number; sourceVersionNum: number },
): Map<string, DbVia> {
  const { via } = opts;
  if (via !== "auto") return new Map(databases.map((d) => [d.name, via]));
  const total = databases.reduce((s, d) => s + d.sizeBytes, 0);
  const streams = (d: { sizeBytes: number }) =>
    opts.sourceVersionNum >= SPLIT_FROM_VERSION &&
    d.sizeBytes >= STREAM_MIN_BYTES &&
    d.sizeBytes * opts.maxParallel >= total;
  return new Map(databases.map((d) => [d.name, streams(d) ? "stream" : "volume"]));
}

/** The plan's and the run's line about it: how many databases take which path, and why. */
export function viaLine(vias: ReadonlyMap<string, DbVia>, via: Via): string | undefined {
  const streamed = [...vias].filter(([, v]) => v === "stream").map(([n]) => JSON.stringify(n));
  if (via !== "auto" || streamed.length === 0) return undefined;
  const rest = vias.size - streamed.length;
  return `--via auto: ${streamed.length === 1 ? "database" : "databases"} ${streamed.join(", ")} streamed in table slices (each at least ${STREAM_MIN_BYTES / 2 ** 20} MiB and a 1/-m share of the cluster); ${rest === 1 ? "1 other" : `${rest} others`} through the dump volume`;
}
