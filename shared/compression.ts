// How the dumps are compressed. `auto` (the default) is decided by the worker that dumps, on the volume it
// writes to and with the pg_dump it has: compression buys nothing on a local disk, where pg_dump is CPU-bound
// and the dump is read back once (bench/RESULTS.md: gzip level 1 cost 11 % of pg-migrate's time and 38 % of the
// shell loop's on two cores), and it pays on a network volume, whose bandwidth is the limit — there with the
// cheapest method the tools have: lz4 from pg_dump 16 on, gzip level 1 before.
import { statfs } from "node:fs/promises";

/** What --compress accepts: auto, a gzip level 0-9, or (pg_dump 16 and later) none, gzip, lz4 or zstd with an optional level. */
export const COMPRESS_PATTERN = /^(auto|[0-9]|none|(gzip|lz4|zstd)(:[0-9]{1,2})?)$/;

/** statfs f_type of the file systems that are reached over a network (Linux magic numbers). */
const NETWORK_FS: Record<number, string> = {
  0x6969: "nfs",
  0x517b: "smb",
  0xff534d42: "cifs",
  0xfe534d42: "smb2",
  0x65735546: "fuse",
  0x00c36400: "ceph",
  0x01021997: "9p",
  0x5346414f: "afs",
  0x0bd00bd0: "lustre",
  0x01161970: "gfs2",
  0x7461636f: "ocfs2",
};

export function networkFsName(fsType: number): string | undefined {
  return NETWORK_FS[fsType];
}

export interface Compression {
  /** The value given to pg_dump --compress. */
  arg: string;
  /** Why, in words for a log line. */
  why: string;
}

/**
 * Pure: the pg_dump --compress value for a requested setting, the major version of pg_dump, and the kind of
 * file system the dumps go to (undefined: a local one). Throws for a method this pg_dump does not have.
 */
export function chooseCompression(requested: string, pgDumpMajor: number, networkFs: string | undefined): Compression {
  if (requested !== "auto") {
    if (!/^[0-9]$/.test(requested) && pgDumpMajor < 16) {
      throw new Error(
        `--compress ${requested} needs pg_dump 16 or later (this one is ${pgDumpMajor}): use a gzip level 0-9`,
      );
    }
    return { arg: requested, why: "--compress" };
  }
  if (!networkFs)
    return { arg: "0", why: "auto: a local volume, where compressing costs more CPU than the writes it saves" };
  return pgDumpMajor >= 16
    ? {
        arg: "lz4",
        why: `auto: a network volume (${networkFs}), lz4 being the cheapest compression pg_dump ${pgDumpMajor} has`,
      }
    : {
        arg: "1",
        why: `auto: a network volume (${networkFs}), gzip level 1 being the cheapest compression pg_dump ${pgDumpMajor} has`,
      };
}

/** The kind of network file system `path` is on, or undefined for a local one (or one statfs cannot tell). */
export async function networkFsOf(path: string): Promise<string | undefined> {
  const fs = await statfs(path).catch(() => undefined);
  return fs ? networkFsName(fs.type) : undefined;
}
