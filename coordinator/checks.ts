// The preflight's checks, one by one (preflight.ts gathers them into one verdict): the servers, the tool versions,
// the dump volume, the extensions. Each refusal is one sentence naming what the user must fix; none changes anything.
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { access, rm, statfs, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { networkFsName } from "../shared/compression.js";
import type pg from "pg";
import { ConnectError, PreflightError } from "../shared/errors.js";
import { connect, describe, withClient, type ServerSpec } from "../shared/pg/connect.js";
import type { Toolset } from "../shared/tools.js";
import { makeDir } from "../shared/dirs.js";

export interface ServerInfo {
  spec: ServerSpec;
  db: string;
  version: string;
  versionNum: number;
  major: number;
  systemId: string | null;
  superuser: boolean;
  createdb: boolean;
  createrole: boolean;
  readAllData: boolean;
  /** Can read pg_authid, where role passwords are kept (managed services refuse it even to their admin user). */
  readsAuthid: boolean;
}

/** Opens the connection the coordinator keeps for the run, and reads what the checks need. */
export async function inspect(spec: ServerSpec, db: string): Promise<{ info: ServerInfo; client: pg.Client }> {
  let client: pg.Client;
  try {
    client = await connect(spec, db, "pg-migrate coordinator");
  } catch (err) {
    if (err instanceof ConnectError) throw new PreflightError(err.message, { cause: err });
    throw err;
  }
  try {
    return { client, info: await serverInfo(client, spec, db) };
  } catch (err) {
    // A check that fails after connecting (a catalog this server lacks, a function revoked) must not leave the
    // connection open: the error ends the run, and an open socket would keep the process from exiting.
    await client.end().catch(() => undefined);
    throw err;
  }
}

async function serverInfo(client: pg.Client, spec: ServerSpec, db: string): Promise<ServerInfo> {
  const num = Number(
    (await client.query<{ num: string }>("SELECT current_setting('server_version_num') AS num")).rows[0]!.num,
  );
  // pg_read_all_data exists from PostgreSQL 14 on: asking an older server about it is an error.
  const readAll = num >= 140000 ? "pg_has_role(current_user, 'pg_read_all_data', 'USAGE')" : "false";
  const { rows } = await client.query<{
    version: string;
    superuser: boolean;
    createdb: boolean;
    createrole: boolean;
    readall: boolean;
    authid: boolean;
  }>(`SELECT current_setting('server_version') AS version,
            r.rolsuper AS superuser, r.rolcreatedb AS createdb, r.rolcreaterole AS createrole,
            ${readAll} AS readall,
            has_table_privilege('pg_catalog.pg_authid', 'SELECT') AS authid
       FROM pg_roles r WHERE r.rolname = current_user`);
  const r = rows[0]!;
  let systemId: string | null = null;
  try {
    const { rows: id } = await client.query<{ id: string }>(
      "SELECT system_identifier::text AS id FROM pg_control_system()",
    );
    systemId = id[0]?.id ?? null;
  } catch {
    // pg_control_system() needs superuser or pg_monitor; the host:port comparison below still applies.
  }
  return {
    spec,
    db,
    version: r.version,
    versionNum: num,
    major: Math.floor(num / 10000),
    systemId,
    superuser: r.superuser,
    createdb: r.createdb,
    createrole: r.createrole,
    readAllData: r.superuser || r.readall,
    readsAuthid: r.superuser || r.authid,
  };
}

/** Source and target are one server: said alone, since every other check would only repeat it. */
export function sameServer(source: ServerInfo, target: ServerInfo): string | undefined {
  const sameId = source.systemId !== null && source.systemId === target.systemId;
  const sameAddress = source.spec.host === target.spec.host && source.spec.port === target.spec.port;
  if (!sameId && !sameAddress) return undefined;
  return `source and target are the same server (${sameId ? `system identifier ${source.systemId}` : `${source.spec.host}:${source.spec.port}`}): point --to-host/--to-port at the new server`;
}

/** What the two servers and the client tools allow: every refusal and warning, none thrown. */
export function checkServers(
  source: ServerInfo,
  target: ServerInfo,
  tools: Toolset,
  opts: { globals: boolean; rolePasswords: boolean },
): { refusals: string[]; warnings: string[] } {
  const warnings: string[] = [];
  const refusals: string[] = [];
  if (tools.major < source.major) {
    refusals.push(
      `pg_dump ${tools.major} is older than the source server (PostgreSQL ${source.version}) and cannot dump it: install the PostgreSQL ${source.major} client tools (Debian: postgresql-client-${source.major}) or point --pg-bin at them`,
    );
  }
  if (tools.major < target.major) {
    warnings.push(
      `the client tools (${tools.version}, from ${tools.from}) are older than the target (PostgreSQL ${target.version}): the run works, but PostgreSQL ${target.major}'s pg_dump and pg_dumpall would write the schema and roles as a ${target.major} server expects them (they know its newer catalogs, privileges and role options), and its pg_restore its newer features; install postgresql-client-${target.major} (Debian) or point --pg-bin at them, as long as they are not older than the source`,
    );
  }
  if (target.major < source.major) {
    refusals.push(
      `the target runs PostgreSQL ${target.version}, older than the source's ${source.version}: pg_restore cannot move a cluster to an older major version`,
    );
  }
  if (!source.readAllData) {
    warnings.push(
      `${describe(source.spec)} is neither a superuser nor a member of pg_read_all_data (PostgreSQL 14+): a table it cannot read fails its database's dump`,
    );
  }
  if (opts.globals && opts.rolePasswords && !source.readsAuthid) {
    refusals.push(
      `${describe(source.spec)} cannot read pg_authid, where role passwords are kept (managed services refuse it): add --no-role-passwords to create the roles without passwords (the report lists them), or connect as a superuser`,
    );
  }
  if (opts.globals && !opts.rolePasswords)
    warnings.push("--no-role-passwords: login roles are created without passwords; the report lists them");
  if (!target.superuser && !(target.createdb && target.createrole)) {
    refusals.push(
      `${describe(target.spec)} needs SUPERUSER, or CREATEDB and CREATEROLE, to create the databases and roles`,
    );
  }
  if (!target.superuser)
    warnings.push(
      `${describe(target.spec)} is not a superuser: fast-restore settings and some role attributes cannot be applied`,
    );
  return { refusals, warnings };
}

/**
 * A server that ends idle sessions or idle transactions (idle_session_timeout, PostgreSQL 14+;
 * idle_in_transaction_session_timeout): pg-migrate turns both off for its own sessions (connect), and the coordinator's
 * target session comes back if it is ended anyway; what it cannot reach are pg_restore's and pg_dump's own parallel
 * sessions, which may wait idle. The warning says so, with the fix.
 */
export async function sessionTimeoutWarning(
  client: pg.Client,
  role: string,
  user: string,
): Promise<string | undefined> {
  // reset_val: the server's (and role's) value, not this session's own, which connect turned off.
  const { rows } = await client.query<{ name: string; setting: string }>(
    `SELECT name, reset_val AS setting FROM pg_settings WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout') AND reset_val <> '0'`,
  );
  if (!rows.length) return undefined;
  const set = rows.map((r) => `${r.name}=${r.setting}ms`).join(", ");
  return `the ${role} ends idle sessions (${set}): pg-migrate turns this off for its own sessions, but pg_dump's and pg_restore's parallel sessions may wait idle longer; for the run, ALTER ROLE ${JSON.stringify(user)} SET idle_session_timeout = 0 on the ${role} is the safe way`;
}

/** Identifies the pair of servers so that running the same command again finds the unfinished run. */
export function pairKey(source: ServerInfo, target: ServerInfo): string {
  const side = (s: ServerInfo) => `${s.systemId ?? "?"}@${s.spec.host}:${s.spec.port}`;
  return createHash("sha256")
    .update(`${side(source)}>${side(target)}`)
    .digest("hex")
    .slice(0, 16);
}

/** Below this much free space the dump volume is refused: not even a small share of the source would fit. */
export function minimumDumpSpace(sourceBytes: number): number {
  return Math.max(16 * 2 ** 20, sourceBytes * 0.05);
}

/** The refusal for a dump volume that cannot be written, worded alike by plan and by the run. */
export function dumpVolumeNotWritable(dumpRoot: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  const reason =
    code === "EACCES" || code === "EPERM"
      ? "permission denied"
      : code === "EROFS"
        ? "a read-only file system"
        : code === "ENOENT" || code === "ENOTDIR"
          ? "it cannot be created there"
          : code === "ENOSPC"
            ? "no space left"
            : (err as Error).message;
  return `the dump volume ${dumpRoot} (--dump-root) is not writable: ${reason}`;
}

/** The dump volume as a run finds it, read without creating anything (see probeVolume). */
export interface VolumeProbe {
  notWritable?: string;
  freeBytes: number;
  networkFs: string | undefined;
}

/**
 * The dump root as a run would find it, without creating anything: the nearest folder that exists must be one we
 * may write into (a run creates the rest there), and its free space and kind of file system are what a run gets.
 */
export async function probeVolume(path: string): Promise<VolumeProbe> {
  for (let p = path; ; p = dirname(p)) {
    const fs = await statfs(p).catch(() => undefined);
    if (fs) {
      const writable = await access(p, constants.W_OK).then(
        () => undefined,
        (err: unknown) => err,
      );
      // /proc and /sys let root "write" and still take no new folder: creating one there fails as nothing exists.
      const pseudo =
        p !== path && PSEUDO_FS.has(fs.type)
          ? Object.assign(new Error("not a place for folders"), { code: "ENOENT" })
          : undefined;
      const problem = writable ?? pseudo;
      return {
        ...(problem ? { notWritable: dumpVolumeNotWritable(path, problem) } : {}),
        freeBytes: fs.bavail * fs.bsize,
        networkFs: networkFsName(fs.type),
      };
    }
    if (dirname(p) === p)
      return {
        notWritable: dumpVolumeNotWritable(path, Object.assign(new Error("nothing of it exists"), { code: "ENOENT" })),
        freeBytes: 0,
        networkFs: undefined,
      };
  }
}

/** statfs types of proc and sysfs (Linux magic numbers). */
const PSEUDO_FS = new Set([0x9fa0, 0x62656572]);

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;

/** Pure: whether the dump volume takes dumps of a source this big (an upper bound: dumps carry no indexes). */
export function volumeVerdict(
  dumpRoot: string,
  probe: VolumeProbe,
  sourceBytes: number,
): { refusals: string[]; warnings: string[] } {
  if (probe.notWritable) return { refusals: [probe.notWritable], warnings: [] };
  if (probe.freeBytes < minimumDumpSpace(sourceBytes))
    return {
      refusals: [
        `the dump volume ${dumpRoot} (--dump-root) has ${gib(probe.freeBytes)} free, too little for dumps of a ${gib(sourceBytes)} source: free space or choose another --dump-root`,
      ],
      warnings: [],
    };
  if (probe.freeBytes < sourceBytes)
    return {
      refusals: [],
      warnings: [
        `the dump volume ${dumpRoot} has ${gib(probe.freeBytes)} free and the source holds ${gib(sourceBytes)}: compressed dumps usually fit, but watch it`,
      ],
    };
  return { refusals: [], warnings: [] };
}

/** Creates the dump root the preflight approved, and proves it takes a file. */
export async function prepareDumpRoot(dumpRoot: string): Promise<void> {
  try {
    await makeDir(dumpRoot);
    await access(dumpRoot, constants.W_OK);
    const probe = join(dumpRoot, `.pg-migrate-probe-${process.pid}`);
    await writeFile(probe, "probe");
    await rm(probe);
  } catch (err) {
    throw new PreflightError(dumpVolumeNotWritable(dumpRoot, err), { cause: err });
  }
}

export const extensionProblem = (names: string[]): string =>
  `uses extension(s) ${names.map((n) => JSON.stringify(n)).join(", ")} that the target has not installed`;

/** Pure: per database, the extensions it uses that the target cannot create (no such extension installed there). */
export function extensionsMissing(used: Map<string, string[]>, availableOnTarget: Set<string>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [db, names] of used) {
    const missing = names.filter((n) => !availableOnTarget.has(n));
    if (missing.length) out.set(db, missing);
  }
  return out;
}

/** The extensions each database uses on the source (a few databases at a time), and what the target can install. */
export async function extensionCheck(
  source: ServerSpec,
  databases: string[],
  target: pg.Client,
): Promise<Map<string, string[]>> {
  const { rows } = await target.query<{ name: string }>("SELECT name FROM pg_available_extensions");
  const used = new Map<string, string[]>();
  const queue = [...databases];
  const worker = async () => {
    for (let db = queue.shift(); db !== undefined; db = queue.shift()) {
      const name = db;
      used.set(
        name,
        await withClient(source, name, async (c) =>
          (await c.query<{ e: string }>("SELECT extname AS e FROM pg_extension ORDER BY 1")).rows.map((r) => r.e),
        ),
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, databases.length) }, worker));
  return extensionsMissing(used, new Set(rows.map((r) => r.name)));
}
