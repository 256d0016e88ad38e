// The CLI started as a child process whose stderr the test reads while it runs: for killing it, or something
// it started, at a chosen moment.
import { execa, type ResultPromise } from "execa";
import { assertExitedAfterLastLine, BIN, lastOutputClock, type CliResult } from "./cli.js";

export interface LiveCli {
  child: ResultPromise;
  /** stderr so far. */
  stderr(): string;
  /** Resolves with the match once stderr holds `count` matches of `re` (a global regex is made of it). */
  waitFor(re: RegExp, count?: number, timeoutMs?: number): Promise<RegExpMatchArray>;
  result: Promise<CliResult & { signal: string | undefined }>;
}

export function startCli(
  args: string[],
  env: Record<string, string | undefined>,
  opts: { prefix?: string[] } = {},
): LiveCli {
  const [file, argv] = opts.prefix?.length
    ? [opts.prefix[0]!, [...opts.prefix.slice(1), process.execPath, BIN, ...args]]
    : [process.execPath, [BIN, ...args]];
  const child = execa(file, argv, { env, reject: false, stdin: "ignore", timeout: 600_000 });
  let err = "";
  const waiters = new Set<() => void>();
  const t0 = Date.now();
  child.stderr!.on("data", (b: Buffer) => {
    err += b.toString();
    if (process.env.PGM_DEBUG) process.stderr.write(`[${Date.now() - t0} ms] ${b.toString()}`);
    for (const w of [...waiters]) w();
  });
  const lived = lastOutputClock(child);
  const result = child.then((r) => {
    // No hang, as in runCli; a process the test killed outright (SIGKILL) has no last line to be measured from.
    if (!r.signal) assertExitedAfterLastLine(lived(), `pg-migrate ${args[0] ?? ""}`, String(r.stderr));
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), signal: r.signal };
  });
  return {
    child,
    stderr: () => err,
    result,
    waitFor(re, count = 1, timeoutMs = 180_000) {
      const global = new RegExp(re.source, re.flags.includes("g") ? re.flags : `${re.flags}g`);
      return new Promise((resolve, reject) => {
        const check = () => {
          const all = [...err.matchAll(global)];
          if (all.length >= count) {
            cleanup();
            resolve(all[count - 1]!);
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${count} × ${re} in:\n${err}`));
        }, timeoutMs);
        const ended = () => {
          check();
          if (waiters.has(check)) {
            cleanup();
            reject(new Error(`the CLI exited before ${count} × ${re}:\n${err}`));
          }
        };
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        void result.then(ended);
        check();
      });
    },
  };
}
