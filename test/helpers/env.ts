// One integration-test environment: a source and a target PostgreSQL cluster with different passwords, a NATS
// JetStream server and an empty HOME, all torn down afterwards whatever the test did.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nanoid } from "nanoid";
import {
  startCluster,
  startNats,
  type LocalCluster,
  type LocalNats,
  type StartClusterOptions,
} from "../../demo/cluster.js";

export interface TestEnv {
  source: LocalCluster;
  target: LocalCluster;
  nats: LocalNats;
  /** An empty dir to use as HOME for the processes under test. */
  home: string;
}

export type TestEnvWithoutNats = Omit<TestEnv, "nats">;

export interface TestEnvOptions {
  /** Start NATS (default true). */
  nats?: boolean;
  /** Extra nats-server arguments (a config file with TLS and users, say). */
  natsArgs?: string[];
  /** TLS for the source or the target cluster. */
  sourceTls?: StartClusterOptions["tls"];
  targetTls?: StartClusterOptions["tls"];
  /** Server binaries of another major for the source or the target (test/helpers/majors.ts). */
  sourceServer?: StartClusterOptions["server"];
  targetServer?: StartClusterOptions["server"];
  /** Extra postgresql.conf settings of the source cluster. */
  sourceSettings?: Record<string, string>;
}

interface Resource {
  name: string;
  release(): Promise<void>;
}

export function withTestEnv<T>(fn: (env: TestEnv) => Promise<T>, opts?: TestEnvOptions & { nats?: true }): Promise<T>;
export function withTestEnv<T>(
  fn: (env: TestEnvWithoutNats) => Promise<T>,
  opts: TestEnvOptions & { nats: false },
): Promise<T>;
export async function withTestEnv<T>(fn: (env: TestEnv) => Promise<T>, opts: TestEnvOptions = {}): Promise<T> {
  const resources: Resource[] = [];
  const track = <R>(name: string, started: Promise<R>, release: (r: R) => Promise<void>): Promise<R> =>
    started.then((r) => {
      resources.push({ name, release: () => release(r) });
      return r;
    });

  // Independent servers in separate dirs on separate ports: safe to start side by side.
  const starting = await Promise.allSettled([
    track(
      "source cluster",
      startCluster({
        name: "source",
        password: `src-Pw-${nanoid()}`,
        ...(opts.sourceTls ? { tls: opts.sourceTls } : {}),
        ...(opts.sourceSettings ? { settings: opts.sourceSettings } : {}),
        ...(opts.sourceServer ? { server: opts.sourceServer } : {}),
      }),
      (c) => c.stop(),
    ),
    track(
      "target cluster",
      startCluster({
        name: "target",
        password: `tgt-Pw-${nanoid()}`,
        ...(opts.targetTls ? { tls: opts.targetTls } : {}),
        ...(opts.targetServer ? { server: opts.targetServer } : {}),
      }),
      (c) => c.stop(),
    ),
    opts.nats === false
      ? Promise.resolve(undefined)
      : track("nats", startNats({ args: opts.natsArgs ?? [] }), (n) => n.stop()),
    track("home", mkdtemp(join(tmpdir(), "pgm-home-")), (dir) =>
      rm(dir, { recursive: true, force: true, maxRetries: 3 }),
    ),
  ]);
  const failed = starting.flatMap((s) => (s.status === "rejected" ? [s.reason as unknown] : []));
  if (failed.length > 0) {
    await releaseAll(resources).catch((err: unknown) =>
      console.error("withTestEnv: cleanup after a failed start:", err),
    );
    throw failed.length === 1 ? failed[0] : new AggregateError(failed, "withTestEnv: several servers failed to start");
  }
  const [source, target, nats, home] = starting.map((s) => (s.status === "fulfilled" ? s.value : undefined)) as [
    LocalCluster,
    LocalCluster,
    LocalNats | undefined,
    string,
  ];

  let result: T;
  try {
    // With nats:false the overload hands fn a TestEnvWithoutNats, so it never sees the undefined.
    result = await fn({ source, target, nats: nats as LocalNats, home });
  } catch (err) {
    // The test's own failure is the one to report; a cleanup problem on top only gets logged.
    await releaseAll(resources).catch((cleanupErr: unknown) =>
      console.error("withTestEnv: cleanup failed:", cleanupErr),
    );
    throw err;
  }
  await releaseAll(resources);
  return result;
}

/** Release everything, even when some releases fail; then report the failures together. */
async function releaseAll(resources: Resource[]): Promise<void> {
  const results = await Promise.allSettled(
    resources.splice(0).map((r) =>
      r.release().catch((err: unknown) => {
        throw new Error(`could not release ${r.name}: ${err instanceof Error ? err.message : String(err)}`, {
          cause: err,
        });
      }),
    ),
  );
  const errors = results.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
  if (errors.length > 0) throw new AggregateError(errors, "withTestEnv: cleanup failed");
}
