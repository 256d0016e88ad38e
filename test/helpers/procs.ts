// Processes as the kernel sees them (/proc), for fault tests: find a tool while it runs, kill its parent, and
// prove that nothing the run started is left behind.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";

export interface Proc {
  pid: number;
  ppid: number;
  argv: string[];
}

export function listProcesses(): Proc[] {
  const procs: Proc[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // The command name may hold spaces and parentheses: fields start after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] === "Z" || !argv.length) continue; // zombies are already dead
      procs.push({ pid: Number(entry), ppid: Number(fields[1]), argv });
    } catch {
      // gone while we looked
    }
  }
  return procs;
}

const TOOLS = new Set(["pg_dump", "pg_restore", "pg_dumpall", "psql"]);

/** A native tool pointed at this port (pg_dump's parallel workers have the leader's command line too). */
export function toolsOn(port: number, tool?: string): Proc[] {
  return listProcesses().filter((p) => {
    const name = basename(p.argv[0]!);
    if (tool ? name !== tool : !TOOLS.has(name)) return false;
    const i = p.argv.indexOf("--port");
    return i >= 0 && p.argv[i + 1] === String(port);
  });
}

/** Everything a run may have started: workers, the embedded nats-server (both mention HOME), and the tools. */
export function leftovers(home: string, ports: number[]): Proc[] {
  const byTool = ports.flatMap((port) => toolsOn(port));
  const byHome = listProcesses().filter((p) => p.pid !== process.pid && p.argv.some((a) => a.includes(home)));
  const seen = new Set<number>();
  return [...byTool, ...byHome].filter((p) => !seen.has(p.pid) && seen.add(p.pid));
}

export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 60_000,
  everyMs = 10,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** No process of the run survives it (a few seconds allowed for the kernel and for pg_dump's own workers). */
export async function assertNoLeftovers(home: string, ports: number[], timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let left = leftovers(home, ports);
  while (left.length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    left = leftovers(home, ports);
  }
  assert.deepEqual(
    left.map((p) => `${p.pid} ${p.argv.join(" ")}`),
    [],
    "processes left behind",
  );
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/**
 * The process holding the client end of a loopback TCP connection whose local port is `port` (what the server's
 * pg_stat_activity calls client_port): the socket's inode in /proc/net/tcp, then the process with that inode open.
 */
export function pidOfClientPort(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  let inode: string | undefined;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(`:${hex}`)) inode = f[9];
    }
  }
  assert.ok(inode && inode !== "0", `no socket with local port ${port}`);
  for (const p of listProcesses()) {
    try {
      for (const fd of readdirSync(`/proc/${p.pid}/fd`)) {
        if (readlinkSync(`/proc/${p.pid}/fd/${fd}`) === `socket:[${inode}]`) return p.pid;
      }
    } catch {
      // not ours to look into, or gone
    }
  }
  throw new Error(`no process holds the socket of local port ${port}`);
}
