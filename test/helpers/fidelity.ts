// The bar pg_upgrade's own test sets: dump both clusters and diff the dumps. What pg_dump writes for a
// database (schema, grants, owners, settings, comments, publications, subscriptions, event triggers) and for
// the roles must come out the same on both sides.
import { execa } from "execa";
import type { LocalCluster } from "../../demo/cluster.js";

function dumpEnv(c: LocalCluster): Record<string, string> {
  return { PGHOST: c.host, PGPORT: String(c.port), PGUSER: c.user, PGPASSWORD: c.password };
}

/**
 * Lines that differ by nature, never by migration: psql's \restrict keys are random per dump. Nothing else is
 * removed.
 */
const normalize = (dump: string): string => dump.replace(/^\\(un)?restrict \S+$/gm, "\\$1restrict KEY");

export async function schemaDump(c: LocalCluster, db: string): Promise<string> {
  const { stdout } = await execa(
    "pg_dump",
    [
      "--schema-only",
      "--create",
      "--no-password",
      `--dbname=dbname='${db.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`,
    ],
    {
      env: dumpEnv(c),
    },
  );
  return normalize(stdout);
}

/** Roles as pg_dumpall writes them, without passwords, and without the lines about `except` (the migration user). */
export async function rolesDump(c: LocalCluster, except: string): Promise<string> {
  const { stdout } = await execa(
    "pg_dumpall",
    ["--roles-only", "--no-role-passwords", "--no-password", "-l", "postgres"],
    { env: dumpEnv(c) },
  );
  const mine = new RegExp(`^(CREATE|ALTER) ROLE ${except.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}( |;)`);
  return normalize(stdout)
    .split("\n")
    .filter((l) => !mine.test(l))
    .join("\n");
}
