// Peak resident memory of chosen processes: each one's VmHWM (the kernel's own high-water mark), read every
// 100 ms while it lives, so the last reading before it exits is its peak.
import { readdirSync, readFileSync } from "node:fs";

export class PeakRss {
  private readonly peaks = new Map<number, { argv: string; bytes: number }>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly match: (argv: string[]) => boolean) {
    this.timer = setInterval(() => this.sample(), 100);
    this.sample();
  }

  private sample(): void {
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
        if (!this.match(argv)) continue;
        const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${entry}/status`, "utf8"));
        if (!hwm) continue;
        const bytes = Number(hwm[1]) * 1024;
        const pid = Number(entry);
        const seen = this.peaks.get(pid);
        if (!seen || bytes > seen.bytes) this.peaks.set(pid, { argv: argv.join(" "), bytes });
      } catch {
        // gone while we looked
      }
    }
  }

  /** Stops sampling; each process's command line with its peak. */
  stop(): Map<string, number> {
    clearInterval(this.timer);
    const out = new Map<string, number>();
    for (const { argv, bytes } of this.peaks.values()) out.set(`${argv} #${out.size}`, bytes);
    return out;
  }
}
