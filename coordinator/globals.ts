// Globals: roles (and tablespaces) from pg_dumpall --globals-only, minus every statement that would create or
// alter the target's own migration user, applied with psql -X (the script holds psql meta-commands).
import { dbnameArg } from "../shared/pg/conninfo.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { runPsqlScript } from "../shared/pg/psql-script.js";
import { settingKnown, settingOf } from "../shared/pg/settings.js";
import { literal } from "../shared/pg/quote.js";
import { runTool, type Toolset } from "../shared/tools.js";
import { roleStatementTarget, splitScript, type ScriptPart } from "./sql-split.js";

export interface GlobalsOutcome {
  applied: number;
  removed: string[];
  alreadyExisted: string[];
  failed: { statement: string; error: string }[];
  /** With --no-role-passwords: the login roles this run created, which have no password on the target. */
  withoutPassword: string[];
  /** A target user that is not a superuser cannot set these (SUPERUSER, REPLICATION, BYPASSRLS, a grantor): left out. */
  notApplied: string[];
  /** ALTER ROLE … SET of a setting the target's major no longer knows: left out, the rest applied. */
  unknownSettings: string[];
}

/**
 * Pure: the script as a target user that is not a superuser can run it. pg_dumpall spells out every attribute,
 * and PostgreSQL refuses even NOSUPERUSER from such a user, so ALTER ROLE keeps only what it may set; an
 * attribute it cannot grant, and GRANTED BY, are left out and listed.
 */
export function adaptForNonSuperuser(parts: ScriptPart[]): { parts: ScriptPart[]; notApplied: string[] } {
  const notApplied: string[] = [];
  const out = parts.map((p) => {
    if (p.meta) return p;
    const role = roleStatementTarget(p.text);
    const alter = /^(ALTER\s+ROLE\s+(?:"(?:[^"]|"")*"|\S+)\s+WITH\b)([\s\S]*)$/i.exec(p.text);
    if (role !== undefined && alter) {
      const attrs = mapUnquoted(alter[2]!, (chunk) =>
        chunk.replace(/\b(NO)?(SUPERUSER|REPLICATION|BYPASSRLS)\b\s*/gi, (_m, no: string | undefined, attr: string) => {
          if (!no) notApplied.push(`role ${JSON.stringify(role)}: ${attr.toUpperCase()}`);
          return "";
        }),
      );
      return { ...p, text: /^\s*;?\s*$/.test(attrs) ? "" : `${alter[1]}${attrs}` };
    }
    // Only the clause that ends the statement: the same words inside a quoted role name are a name.
    const grant = /^GRANT\s/i.test(p.text) ? /\s+GRANTED\s+BY\s+("(?:[^"]|"")*"|[^\s;"]+)\s*;$/i.exec(p.text) : null;
    if (grant) {
      const statement = `${p.text.slice(0, grant.index)};`;
      notApplied.push(`grantor ${grant[1]} of ${statement}`);
      return { ...p, text: statement };
    }
    return p;
  });
  return { parts: out.filter((p) => p.text !== ""), notApplied };
}

/** A statement cut into its quoted parts ('literals' and "identifiers", at odd positions) and the text between. */
const quotedParts = (text: string): string[] => text.split(/('(?:[^']|'')*'|"(?:[^"]|"")*")/);

/** Applies fn to the parts of a statement outside single and double quotes. */
function mapUnquoted(text: string, fn: (chunk: string) => string): string {
  return quotedParts(text)
    .map((chunk, i) => (i % 2 === 1 ? chunk : fn(chunk)))
    .join("");
}

/** Pure: CREATE TABLESPACE statements with the LOCATION --tablespace-location gives their tablespace. */
export function relocateTablespaces(parts: ScriptPart[], relocate: ReadonlyMap<string, string>): ScriptPart[] {
  if (!relocate.size) return parts;
  return parts.map((p) => {
    const m = /^(CREATE\s+TABLESPACE\s+("(?:[^"]|"")*"|[^\s;]+)\s[\s\S]*?\bLOCATION\s+)'(?:[^']|'')*'(\s*;)$/i.exec(
      p.text,
    );
    if (p.meta || !m) return p;
    const name = m[2]!.startsWith('"') ? m[2]!.slice(1, -1).replace(/""/g, '"') : m[2]!.toLowerCase();
    const path = relocate.get(name);
    return path === undefined ? p : { ...p, text: `${m[1]}${literal(path)}${m[3]}` };
  });
}

const ROLE_NAME = `("(?:[^"]|"")*"|[^\\s;",]+)`;
const ROLE_GRANT = new RegExp(
  `^GRANT\\s+${ROLE_NAME}\\s+TO\\s+${ROLE_NAME}[\\s\\S]*?(?:\\s+GRANTED\\s+BY\\s+${ROLE_NAME})?\\s*;$`,
  "i",
);

/**
 * Pure: role grants ordered so that a grant GRANTED BY a role comes after that role's own grant of the same role.
 * PostgreSQL 16 checks the grantor's ADMIN OPTION when the GRANT runs, and pg_dumpall before 16 writes the grants
 * by name (GRANT g TO auditor … GRANTED BY team_lead before GRANT g TO team_lead WITH ADMIN OPTION), which a 16+
 * target refuses. The grants keep their places in the script; only their order among themselves changes.
 */
export function orderRoleGrants(parts: ScriptPart[]): ScriptPart[] {
  const slots: number[] = [];
  const grants: { part: ScriptPart; role: string; member: string; grantor: string | undefined }[] = [];
  parts.forEach((p, i) => {
    const m = p.meta ? null : ROLE_GRANT.exec(p.text);
    if (!m || /^GRANT\s+\S+\s+ON\s/i.test(p.text)) return;
    slots.push(i);
    grants.push({ part: p, role: m[1]!, member: m[2]!, grantor: m[3] });
  });
  const ordered: typeof grants = [];
  const pending = [...grants];
  while (pending.length) {
    // A grant waits while a pending grant of the same role makes its grantor a member of it.
    const ready = pending.findIndex(
      (g) => !g.grantor || !pending.some((o) => o !== g && o.role === g.role && o.member === g.grantor),
    );
    ordered.push(...pending.splice(ready < 0 ? 0 : ready, 1));
  }
  const out = [...parts];
  slots.forEach((slot, i) => (out[slot] = ordered[i]!.part));
  return out;
}

/** Pure: the script without the statements about `user`, and what was removed. */
export function filterGlobals(script: string, user: string): { parts: ScriptPart[]; removed: string[] } {
  const parts: ScriptPart[] = [];
  const removed: string[] = [];
  for (const p of splitScript(script)) {
    if (!p.meta && roleStatementTarget(p.text) === user) removed.push(p.text);
    else parts.push(p);
  }
  return { parts, removed };
}

/** Pure: login roles whose CREATE ROLE ran here (not already on the target), from a script without passwords. */
export function loginRolesCreated(parts: ScriptPart[], alreadyExisted: Set<string>): string[] {
  const created = new Set<string>();
  const login = new Set<string>();
  for (const p of parts) {
    if (p.meta) continue;
    const role = roleStatementTarget(p.text);
    if (role === undefined) continue;
    if (/^CREATE\s+ROLE/i.test(p.text) && !alreadyExisted.has(p.text)) created.add(role);
    // pg_dumpall spells every attribute out: "... NOLOGIN ..." or "... LOGIN ...".
    if (/^ALTER\s+ROLE/i.test(p.text) && /\sLOGIN[\s;]/i.test(p.text.replace(/'(?:[^']|'')*'|"(?:[^"]|"")*"/g, "''")))
      login.add(role);
  }
  return [...created].filter((r) => login.has(r)).sort();
}

export async function migrateGlobals(
  tools: Toolset,
  source: ServerSpec,
  sourceDb: string,
  target: ServerSpec,
  targetDb: string,
  signal: AbortSignal,
  opts: {
    rolePasswords: boolean;
    targetSuperuser: boolean;
    noTablespaces: boolean;
    relocate: ReadonlyMap<string, string>;
    knownSettings?: ReadonlySet<string>;
  },
): Promise<GlobalsOutcome> {
  const args = [
    "--globals-only",
    ...(opts.rolePasswords ? [] : ["--no-role-passwords"]),
    ...(opts.noTablespaces ? ["--no-tablespaces"] : []),
    dbnameArg(sourceDb),
  ];
  const { stdout } = await runTool(tools, "pg_dumpall", args, { conn: source, signal });
  const filtered = filterGlobals(stdout, target.user);
  filtered.parts = orderRoleGrants(relocateTablespaces(filtered.parts, opts.relocate));
  const unknownSettings: string[] = [];
  if (opts.knownSettings) {
    const known = opts.knownSettings;
    filtered.parts = filtered.parts.filter((p) => {
      const name = p.meta ? undefined : settingOf(p.text);
      if (name === undefined || settingKnown(name, known)) return true;
      unknownSettings.push(p.text);
      return false;
    });
  }
  const { parts, notApplied } = opts.targetSuperuser
    ? { parts: filtered.parts, notApplied: [] }
    : adaptForNonSuperuser(filtered.parts);
  // One statement per line-range we know, so psql's "psql:<stdin>:LINE:" errors map back to statements.
  const lines: string[] = [];
  const startLines: { line: number; text: string }[] = [];
  for (const p of parts) {
    startLines.push({ line: lines.length + 1, text: p.text });
    lines.push(...p.text.split("\n"));
  }
  const errors = await runPsqlScript(tools, target, targetDb, lines.join("\n"), signal);
  const outcome: GlobalsOutcome = {
    applied: 0,
    removed: filtered.removed,
    alreadyExisted: [],
    failed: [],
    withoutPassword: [],
    notApplied,
    unknownSettings,
  };
  const errorsByStatement = new Map<string, string>();
  for (const e of errors) {
    const owner = e.line === null ? undefined : [...startLines].reverse().find((s) => s.line <= e.line!);
    if (owner) errorsByStatement.set(owner.text, e.error);
    else outcome.failed.push({ statement: "(psql)", error: e.error });
  }
  for (const p of parts) {
    if (p.meta) continue;
    const error = errorsByStatement.get(p.text);
    if (!error) outcome.applied++;
    else if (/already exists/.test(error)) outcome.alreadyExisted.push(p.text);
    else outcome.failed.push({ statement: p.text, error });
  }
  if (!opts.rolePasswords) outcome.withoutPassword = loginRolesCreated(parts, new Set(outcome.alreadyExisted));
  // What is kept (state, KV, report) and printed never holds a password verifier.
  return {
    ...outcome,
    removed: outcome.removed.map(redactPasswords),
    alreadyExisted: outcome.alreadyExisted.map(redactPasswords),
    failed: outcome.failed.map((f) => ({ statement: redactPasswords(f.statement), error: f.error })),
  };
}

/** Pure: the statement with every PASSWORD '…' literal (a SCRAM or md5 verifier from pg_dumpall) blanked out. */
export function redactPasswords(statement: string): string {
  const parts = quotedParts(statement);
  return parts
    .map((part, i) =>
      i % 2 === 1 && part.startsWith("'") && /\bPASSWORD\s+$/i.test(parts[i - 1] ?? "") ? "'(redacted)'" : part,
    )
    .join("");
}
