// Medians and ratios: runs alternate between approaches, so a slow moment of the machine hits them alike.
import type { RunResult } from "./approaches.js";

export interface Summary {
  name: string;
  runs: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Median against the reference approach's median (the shell loop). */
  vsReference?: number;
  /** Median against the restore-only floor's median. */
  vsFloor?: number;
  peakRss?: { coordinator: number; worker: number };
  perDatabaseMs?: number;
}

export function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function summarize(
  results: Map<string, RunResult[]>,
  referencePrefix: string,
  floorPrefix: string | undefined,
): Summary[] {
  const base = [...results].map(([name, rs]) => {
    const walls = rs.map((r) => r.wallMs);
    const rss = rs.filter((r) => r.rss).map((r) => r.rss!);
    return {
      name,
      runs: walls.map((w) => Math.round(w)),
      medianMs: median(walls),
      minMs: Math.min(...walls),
      maxMs: Math.max(...walls),
      ...(rss.length
        ? {
            peakRss: {
              coordinator: Math.max(...rss.map((r) => r.coordinator)),
              worker: Math.max(...rss.map((r) => r.worker)),
            },
          }
        : {}),
    };
  });
  const ref = base.find((b) => b.name.startsWith(referencePrefix));
  const floor = floorPrefix ? base.find((b) => b.name.startsWith(floorPrefix)) : undefined;
  return base.map((b) => ({
    ...b,
    ...(ref ? { vsReference: b.medianMs / ref.medianMs } : {}),
    ...(floor ? { vsFloor: b.medianMs / floor.medianMs } : {}),
  }));
}
