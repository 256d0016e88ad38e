// What crossing majors changes that a user must know, read from both servers before anything changes and said by
// plan and by the run (and kept in the report). Each note names its object. Every catalog column read here exists
// in every supported source major (12 and up).
import type pg from "pg";
import { withClient, type ServerSpec } from "../shared/pg/connect.js";
import { ident } from "../shared/pg/quote.js";
import { knownSettings, settingKnown } from "../shared/pg/settings.js";
import type { UpgradeNote } from "../shared/contracts/record.js";

export type { UpgradeNote };

export const noteLine = (n: UpgradeNote): string => `${n.what} ${n.object}: ${n.note}`;

interface Sides {
  source: ServerSpec;
  src: pg.Client;
  srcNum: number;
  tgt: pg.Client;
  tgtNum: number;
  /** The databases a run takes, and whether it migrates roles. */
  databases: string[];
  globals: boolean;
}

const major = (num: number) => Math.floor(num / 10000);

export async function upgradeNotes(s: Sides): Promise<UpgradeNote[]> {
  if (major(s.tgtNum) === major(s.srcNum)) return [];
  const notes: UpgradeNote[] = [];
  notes.push(...(await unknownSettingNotes(s)));
  const available = new Map(
    (
      await s.tgt.query<{ name: string; v: string | null }>(
        "SELECT name, default_version AS v FROM pg_available_extensions",
      )
    ).rows.map((r) => [r.name, r.v]),
  );
  const perDb = await eachDatabase(s.source, s.databases, async (db, c) => {
    const out: UpgradeNote[] = [];
    const object = `database ${JSON.stringify(db)}`;
    if (s.srcNum < 150000 && s.tgtNum >= 150000) {
      const { rows } = await c.query<{ owner: string; create: boolean }>(
        `SELECT pg_get_userbyid(nspowner) AS owner,
                coalesce((SELECT bool_or(a.privilege_type = 'CREATE') FROM aclexplode(nspacl) a WHERE a.grantee = 0), nspacl IS NULL) AS create
           FROM pg_namespace WHERE nspname = 'public'`,
      );
      const p = rows[0];
      if (p) {
        out.push({
          what: "public-schema",
          object: `${object} schema public`,
          note: `keeps the source's owner (${p.owner}) and privileges${p.create ? " (CREATE for PUBLIC)" : ""} as pg_dump carries them, not PostgreSQL 15's defaults (owner pg_database_owner, no CREATE for PUBLIC)${p.create ? `; REVOKE CREATE ON SCHEMA public FROM PUBLIC in ${JSON.stringify(db)} adopts them` : ""}`,
        });
      }
    }
    const { rows: exts } = await c.query<{ name: string; v: string }>(
      "SELECT extname AS name, extversion AS v FROM pg_extension ORDER BY 1",
    );
    for (const e of exts) {
      const theirs = available.get(e.name);
      if (theirs && theirs !== e.v) {
        out.push({
          what: "extension-version",
          object: `${object} extension ${e.name}`,
          note: `version ${e.v} on the source; pg_dump names no version, so the target creates its default ${theirs} (what changed between them is in the extension's release notes)`,
        });
      }
    }
    if (s.srcNum < 140000 && s.tgtNum >= 140000) {
      const { rows: ops } = await c.query<{ op: string }>(
        "SELECT oid::regoperator::text AS op FROM pg_operator WHERE oprkind = 'r' AND oid >= 16384 ORDER BY 1",
      );
      for (const o of ops)
        out.push({
          what: "removed-feature",
          object: `${object} operator ${o.op}`,
          note: "a postfix operator, which PostgreSQL 14 removed: its restore fails until it is dropped or made a prefix operator or a function",
        });
    }
    if (s.tgtNum >= 150000) {
      const { rows: langs } = await c.query<{ l: string }>(
        "SELECT lanname AS l FROM pg_language WHERE lanname IN ('plpythonu', 'plpython2u') ORDER BY 1",
      );
      for (const l of langs)
        out.push({
          what: "removed-feature",
          object: `${object} language ${l.l}`,
          note: "Python 2 languages are gone from PostgreSQL 15: its functions fail to restore; port them to plpython3u",
        });
    }
    return out;
  });
  notes.push(...perDb.flat());
  if (s.srcNum < 150000 && s.tgtNum >= 150000 && !s.databases.includes("postgres")) {
    notes.push({
      what: "public-schema",
      object: `the target's own database "postgres" schema public`,
      note: "not migrated, so it keeps PostgreSQL 15's defaults (owner pg_database_owner, no CREATE for PUBLIC) while the migrated databases keep the source's",
    });
  }
  return notes;
}

/** ALTER DATABASE/ROLE … SET on the source of settings the target's major does not know: named, left out, the rest applied. */
async function unknownSettingNotes(s: Sides): Promise<UpgradeNote[]> {
  const known = await knownSettings(s.tgt);
  const { rows } = await s.src.query<{ db: string | null; role: string | null; setting: string }>(
    `SELECT d.datname AS db, r.rolname AS role, unnest(c.setconfig) AS setting
       FROM pg_db_role_setting c LEFT JOIN pg_database d ON d.oid = c.setdatabase LEFT JOIN pg_roles r ON r.oid = c.setrole
      ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3`,
  );
  const notes: UpgradeNote[] = [];
  for (const r of rows) {
    const name = r.setting.slice(0, r.setting.indexOf("=")).toLowerCase();
    if (settingKnown(name, known)) continue;
    if (r.db !== null && !s.databases.includes(r.db)) continue;
    if (r.db === null && !s.globals) continue;
    const statement =
      r.db === null
        ? `ALTER ROLE ${ident(r.role ?? "")} SET ${name}`
        : r.role === null
          ? `ALTER DATABASE ${ident(r.db)} SET ${name}`
          : `ALTER ROLE ${ident(r.role)} IN DATABASE ${ident(r.db)} SET ${name}`;
    notes.push({
      what: "unknown-setting",
      object: statement,
      note: `PostgreSQL ${major(s.tgtNum)} has no setting "${name}" (PostgreSQL ${major(s.srcNum)} had it): left out, the other settings are applied`,
    });
  }
  return notes;
}

/** fn on each database of the source, four at a time. */
async function eachDatabase<T>(
  source: ServerSpec,
  databases: string[],
  fn: (db: string, c: pg.Client) => Promise<T>,
): Promise<T[]> {
  const results = new Map<string, T>();
  const queue = [...databases];
  const worker = async () => {
    for (let db = queue.shift(); db !== undefined; db = queue.shift()) {
      const name = db;
      results.set(name, await withClient(source, name, (c) => fn(name, c)));
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, databases.length) }, worker));
  return databases.map((d) => results.get(d)!);
}
