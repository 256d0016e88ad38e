// Prints the demo psql script: node dist/demo/generate-cli.js [--scale N] | psql -X -v ON_ERROR_STOP=1 -d postgres
import { demoSql } from "./generate.js";

const USAGE = "usage: generate-cli [--scale N]   (N > 0, default 1; prints a psql script to stdout)";

function parseScale(argv: string[]): number {
  let scale = 1;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const value = arg === "--scale" ? argv[++i] : arg.startsWith("--scale=") ? arg.slice("--scale=".length) : undefined;
    if (value === undefined) {
      throw new Error(
        arg === "--scale" ? `--scale needs a value\n${USAGE}` : `unexpected argument ${JSON.stringify(arg)}\n${USAGE}`,
      );
    }
    scale = Number(value);
    if (!Number.isFinite(scale) || scale <= 0)
      throw new Error(`--scale wants a positive number, got ${JSON.stringify(value)}`);
  }
  return scale;
}

try {
  process.stdout.write(demoSql({ scale: parseScale(process.argv.slice(2)) }));
} catch (err) {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 2;
}
