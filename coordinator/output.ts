// The human view on stderr: one plain line per step and per phase change. Machine output (the JSON report)
// is separate.
export class Output {
  constructor(private readonly stream: NodeJS.WritableStream = process.stderr) {}

  line(message: string): void {
    this.stream.write(`pg-migrate: ${message}\n`);
  }

  warn(message: string): void {
    this.stream.write(`pg-migrate: warning: ${message}\n`);
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
