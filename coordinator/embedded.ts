// Embedded mode: with no --nats-url, a local nats-server (JetStream, loopback, store under ~/.pg-migrate) and
// local worker processes, the same code path as a distributed run. Both end with the coordinator: the kernel
// kills them if it dies (setpriv --pdeathsig), and stop() ends them otherwise. Each runs in a process group of its
// own, so the SIGINT a terminal sends to its foreground group on Ctrl-C reaches the coordinator alone, which then
// stops them in order (workers hand their jobs back, then the broker goes) instead of finding them dead.
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ConfigError } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { SECRET_ENV } from "../shared/secrets.js";
import { freePort, portAnswers } from "../shared/net.js";
import { findExecutable, pathDirs } from "../shared/tools.js";
import { makeDirSync } from "../shared/dirs.js";

/** The node flag the local workers run with (the container image sets the same through NODE_OPTIONS). */
const WORKER_SEMI_SPACE = "--max-semi-space-size=4";

const BIN = fileURLToPath(new URL("../../bin/pg-migrate.js", import.meta.url));

async function spawnGuarded(file: string, args: string[], opts: Parameters<typeof spawn>[2]): Promise<ChildProcess> {
  const setpriv = await findExecutable("setpriv", [...pathDirs(), "/usr/bin", "/bin"]);
  const own = { ...opts, detached: true }; // a process group of its own: out of reach of the terminal's Ctrl-C
  return setpriv ? spawn(setpriv, ["--pdeathsig", "TERM", "--", file, ...args], own) : spawn(file, args, own);
}

export interface EmbeddedNats {
  url: string;
  stop(): Promise<void>;
}

/** The nats-server an embedded run starts (PGMIGRATE_NATS_SERVER, else PATH and sbin): missing is bad setup, exit 2. */
export async function findNatsServer(): Promise<string> {
  const configured = process.env.PGMIGRATE_NATS_SERVER;
  const bin = configured
    ? await findExecutable(basename(configured), [dirname(configured)])
    : await findExecutable("nats-server", [...pathDirs(), "/usr/sbin", "/usr/local/sbin"]);
  if (!bin) {
    throw new ConfigError(
      "nats-server not found: install it (Debian: apt-get install nats-server) or pass --nats-url to use a running NATS server",
      "--nats-url",
    );
  }
  return bin;
}

export async function startEmbeddedNats(
  storeDir: string,
  logFile: string,
  log: Logger,
  warn: (line: string) => void = () => undefined,
): Promise<EmbeddedNats> {
  const bin = await findNatsServer();
  makeDirSync(storeDir);
  /** One nats-server on this port and the run's store; resolves once it answers, or to undefined if it never did. */
  const launch = async (port: number): Promise<ChildProcess | undefined> => {
    const out = openSync(logFile, "a", 0o600);
    const child = await spawnGuarded(bin, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
      stdio: ["ignore", out, out],
    });
    closeSync(out);
    let exited = false;
    child.once("exit", () => (exited = true));
    child.once("error", () => (exited = true));
    for (let i = 0; i < 500 && !exited; i++) {
      if (await portAnswers(port)) return child;
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill("SIGKILL");
    return undefined;
  };
  for (let tries = 0; ; tries++) {
    const port = await freePort();
    const first = await launch(port);
    if (!first) {
      if (tries >= 2)
        throw new ConfigError(`the embedded nats-server (${bin}) did not start; see ${logFile}`, "--nats-url");
      continue;
    }
    log.info({ port, storeDir }, "embedded nats-server started");
    // Supervised like the workers: one that dies while the run goes on is started again on the same port and store,
    // where every client (they reconnect for ever) finds it with the streams, the jobs and the KV it had.
    let child = first;
    let stopping = false;
    const watch = (c: ChildProcess) =>
      c.once("exit", (code, signal) => {
        if (stopping) return;
        log.warn(
          { code, signal },
          `the embedded nats-server exited (${signal ?? code}); starting it again on port ${port}`,
        );
        warn(`the embedded nats-server exited (${signal ?? code}); starting it again on the same port and store`);
        void (async () => {
          for (let attempt = 1; !stopping; attempt++) {
            await new Promise((r) => setTimeout(r, Math.min(2000, 200 * attempt)));
            if (stopping) return;
            const next = await launch(port);
            if (next && stopping) {
              next.kill("SIGTERM");
              return;
            }
            if (next) {
              child = next;
              watch(next);
              log.info({ port, attempt }, "embedded nats-server started again");
              warn("the embedded nats-server is back; the run goes on");
              return;
            }
            log.warn({ port, attempt }, "the embedded nats-server did not start again; retrying");
          }
        })();
      });
    watch(child);
    return {
      url: `nats://127.0.0.1:${port}`,
      stop: () => {
        stopping = true;
        return stopChild(child, 5000);
      },
    };
  }
}

function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** Local worker processes, restarted if one dies while the run goes on. */
export class LocalWorkers {
  private readonly children = new Map<number, ChildProcess>();
  private stopping = false;
  restarts = 0;

  constructor(
    private readonly opts: {
      natsUrl: string;
      dumpRoot: string;
      secret: string;
      logDir: string;
      retryDelayS: number;
      /** Data slices each worker streams at once (--via stream). */
      slices: number;
      pgBin?: string | undefined;
    },
    private readonly log: Logger,
    /** Once the run is stopping, a worker that exits is not started again. */
    private readonly signal?: AbortSignal,
  ) {}

  async start(count: number): Promise<void> {
    makeDirSync(this.opts.logDir);
    for (let i = 1; i <= count; i++) await this.spawn(i);
  }

  private async spawn(index: number): Promise<void> {
    const env: NodeJS.ProcessEnv = { ...process.env, [SECRET_ENV]: this.opts.secret };
    // Local workers get passwords only sealed inside their jobs.
    // Nor any NATS setting of the user's: their broker is this plain loopback one.
    for (const name of Object.keys(env)) {
      if (/^PGMIGRATE_(FROM_PASS|TO_PASS|NATS_)/.test(name)) delete env[name];
    }
    const out = openSync(join(this.opts.logDir, `worker-${index}.log`), "a", 0o600);
    const args = [
      // A small young generation: a streaming worker's garbage is mostly short-lived COPY chunks, and with V8's
      // default 16 MiB semi-spaces it held up to 148 MB at its peak on one big table, with 4 MiB 97-100 MB, at
      // the same speed (bench/RESULTS.md).
      WORKER_SEMI_SPACE,
      BIN,
      "worker",
      "--nats-url",
      this.opts.natsUrl,
      "--dump-root",
      this.opts.dumpRoot,
      "--id",
      `local-${index}`,
      "--retry-delay",
      String(this.opts.retryDelayS),
      "--slices",
      String(this.opts.slices),
    ];
    if (this.opts.pgBin) args.push("--pg-bin", this.opts.pgBin);
    const child = await spawnGuarded(process.execPath, args, { stdio: ["ignore", out, out], env });
    closeSync(out);
    this.children.set(index, child);
    child.once("exit", (code, signal) => {
      if (this.stopping || this.signal?.aborted) return;
      this.restarts++;
      this.log.warn(
        { worker: index, code, signal },
        `local worker ${index} exited (${signal ?? code}); starting it again`,
      );
      setTimeout(() => {
        if (!this.stopping && !this.signal?.aborted) void this.spawn(index);
      }, 500);
    });
  }

  /** The number of workers started. */
  get count(): number {
    return this.children.size;
  }

  /** SIGTERM to each worker, which hands its job back and exits; SIGKILL after 10 s. Idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.children.values()].map((c) => stopChild(c, 10_000)));
  }
}
