// The CLI on a real pseudo-terminal, as a person runs it: util-linux `script` gives it a pty whose line discipline
// turns a typed Ctrl-C into SIGINT for the terminal's whole foreground process group (what `kill -INT <pid>` is
// not), and the raw output is rendered by a terminal emulator (xterm.js, headless) into the lines a person sees.
import { execa, type ResultPromise } from "execa";
import xterm from "@xterm/headless";
import { BIN } from "./cli.js";

export const COLS = 100;
export const ROWS = 40;

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g;

export interface PtyCli {
  child: ResultPromise;
  /** Everything written to the terminal so far, raw (escape sequences and all). */
  raw(): string;
  /** Types Ctrl-C at the terminal. */
  ctrlC(): void;
  /** Resolves once the output, stripped of escape sequences, matches re. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  result: Promise<{ exitCode: number; endedAt: number }>;
}

const quote = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;

export function startInPty(args: string[], env: Record<string, string>): PtyCli {
  // exec: the CLI itself leads the terminal's foreground process group, as when typed at a shell prompt.
  const command = `stty cols ${COLS} rows ${ROWS}; exec ${[process.execPath, BIN, ...args].map(quote).join(" ")}`;
  const child = execa("script", ["-qfec", command, "/dev/null"], {
    env: { ...env, TERM: "xterm" },
    reject: false,
    stdin: "pipe",
    timeout: 600_000,
  });
  let out = "";
  const waiters = new Set<() => void>();
  child.stdout!.on("data", (b: Buffer) => {
    out += b.toString("utf8");
    for (const w of [...waiters]) w();
  });
  const result = child.then((r) => ({ exitCode: r.exitCode ?? -1, endedAt: Date.now() }));
  return {
    child,
    raw: () => out,
    ctrlC: () => void child.stdin!.write("\x03"),
    result,
    waitFor(re, timeoutMs = 180_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (re.test(out.replace(ANSI, ""))) {
            cleanup();
            resolve();
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${re} on the terminal:\n${out.replace(ANSI, "")}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        void result.then(() => {
          check();
          if (waiters.has(check)) {
            cleanup();
            reject(new Error(`the CLI ended before ${re}:\n${out.replace(ANSI, "")}`));
          }
        });
        check();
      });
    },
  };
}

/**
 * The terminal's lines after all of `raw` was drawn, scrollback included, as a person would read them; a line the
 * terminal wrapped over several rows is one line again.
 */
export async function screenLines(raw: string): Promise<string[]> {
  const term = new xterm.Terminal({ cols: COLS, rows: ROWS, scrollback: 100_000, allowProposedApi: true });
  await new Promise<void>((resolve) => term.write(raw, resolve));
  const buffer = term.buffer.active;
  const lines: string[] = [];
  for (let i = 0; i < buffer.length; i++) {
    const row = buffer.getLine(i);
    const text = row?.translateToString(true) ?? "";
    if (row?.isWrapped && lines.length) lines[lines.length - 1] += text;
    else lines.push(text);
  }
  term.dispose();
  return lines;
}
