// The human view on stderr. Not on a terminal: one plain line per step and per phase change. On a terminal:
// the same lines, scrolling above live progress bars (cli-progress) — one for the run and one per database in
// flight, with bytes, rate and ETA. Machine output (the JSON report, status --json) is separate.
import cliProgress from "cli-progress";

type Bar = cliProgress.SingleBar;

export class Output {
  private readonly bars: cliProgress.MultiBar | undefined;
  private runBar: Bar | undefined;
  private readonly dbBars = new Map<string, { bar: Bar; kind: string; started: number }>();

  constructor(
    private readonly stream: NodeJS.WriteStream = process.stderr,
    live = Boolean(stream.isTTY) && !process.env.PGMIGRATE_PLAIN,
  ) {
    if (live) {
      this.bars = new cliProgress.MultiBar(
        {
          stream,
          format: (options, params, payload: { name?: string; detail?: string }) => {
            const size = 24;
            const done = Math.round(Math.max(0, Math.min(1, params.progress)) * size);
            const bar =
              (options.barCompleteString ?? "█").slice(0, done) +
              (options.barIncompleteString ?? "░").slice(0, size - done);
            return `${(payload.name ?? "").padEnd(28).slice(0, 28)} ${bar} ${String(Math.round(params.progress * 100)).padStart(3)}% ${payload.detail ?? ""}`;
          },
          hideCursor: true,
          // Gone when they stop: what follows (the summary, a last word) starts on a clean line.
          clearOnComplete: true,
          stopOnComplete: false,
          autopadding: true,
          fps: 5,
          noTTYOutput: false,
          // The terminal keeps wrapping (a long warning stays readable) and each bar is cut to its width instead, so a
          // bar never takes two rows and the redraw never lands a row off.
          linewrap: true,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  line(message: string): void {
    this.write(`pg-migrate: ${message}\n`);
  }

  warn(message: string): void {
    this.write(`pg-migrate: warning: ${message}\n`);
  }

  private write(text: string): void {
    // Above the bars while they are drawn; before the first bar (and after stop) straight to the stream.
    // Each line is cleared to its end after it is written: a line written where a longer bar was would keep the bar's tail.
    if (this.bars && this.active && !this.stopped) this.bars.log(text.replace(/\n/g, "\x1b[K\n"));
    else this.stream.write(text);
  }

  private stopped = false;
  /** A bar has been drawn: from then on lines go through the bars, and stop() must end them. */
  private active = false;
  private plainOnly = false;

  /** No bars (e.g. --log-level puts log lines on stderr, which the bars would draw over). */
  plain(): void {
    this.plainOnly = true;
  }

  /** The run-level bar: databases finished out of all. */
  startRun(total: number, finished: number): void {
    if (!this.bars || this.plainOnly || this.stopped) return;
    this.active = true;
    this.runBar = this.bars.create(total, finished, { name: "run", detail: `${finished}/${total} databases` });
  }

  /** A database's bar for its current job: bytes so far against the expected total, rate and ETA. */
  progress(db: string, kind: string, value: number, total: number | null): void {
    if (!this.bars || this.plainOnly || this.stopped) return;
    this.active = true;
    let entry = this.dbBars.get(db);
    if (!entry || entry.kind !== kind) {
      entry?.bar.stop();
      if (entry) this.bars.remove(entry.bar);
      entry = { bar: this.bars.create(1, 0, { name: `${kind} ${db}`, detail: "" }), kind, started: Date.now() };
      this.dbBars.set(db, entry);
    }
    const t = total && total > 0 ? total : Math.max(value, 1);
    const elapsed = (Date.now() - entry.started) / 1000;
    const rate = elapsed > 0 ? value / elapsed : 0;
    const eta = rate > 0 && t > value ? `ETA ${Math.ceil((t - value) / rate)}s` : "";
    entry.bar.setTotal(t);
    entry.bar.update(Math.min(value, t), {
      detail: `${bytes(value)}${total ? ` of ${bytes(total)}` : ""} ${bytes(rate)}/s ${eta}`.trim(),
    });
  }

  /** A database left the flight (verified or failed): its bar goes, the run bar moves. */
  finished(db: string, done: number, total: number): void {
    if (!this.bars || !this.active || this.stopped) return;
    const entry = this.dbBars.get(db);
    if (entry) {
      entry.bar.stop();
      this.bars.remove(entry.bar);
      this.dbBars.delete(db);
    }
    this.runBar?.update(done, { detail: `${done}/${total} databases` });
  }

  /** Bars off before the summary table is printed. */
  stop(): void {
    if (this.stopped || !this.active) return;
    this.stopped = true;
    this.bars?.update(); // writes the lines logged since the last redraw (stop() alone would drop them)
    this.bars?.stop();
  }
}

export function seconds(ms: number | undefined): string {
  return ms === undefined ? "-" : `${(ms / 1000).toFixed(1)}s`;
}

export function bytes(n: number | undefined): string {
  if (n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u ? 1 : 0)} ${units[u]}`;
}

/** "1 database", "2 databases": counts read as a person writes them. */
export function plural(n: number, noun: string, many = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : many}`;
}
