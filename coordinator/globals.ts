// Globals: roles (and tablespaces) from pg_dumpall --globals-only, minus every statement that would create or
// alter the target's own migration user, applied with psql -X (the script holds psql meta-commands).
import { dbnameArg } from "../shared/pg/conninfo.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { runTool, type Toolset } from "../shared/tools.js";
import { roleStatementTarget, splitScript, type ScriptPart } from "./sql-split.js";

export interface GlobalsOutcome {
  applied: number;
  removed: string[];
  alreadyExisted: string[];
  failed: { statement: string; error: string }[];
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

export async function migrateGlobals(
  tools: Toolset,
  source: ServerSpec,
  sourceDb: string,
  target: ServerSpec,
  targetDb: string,
  signal: AbortSignal,
): Promise<GlobalsOutcome> {
  const { stdout } = await runTool(tools, "pg_dumpall", ["--globals-only", dbnameArg(sourceDb)], { conn: source, signal });
  const { parts, removed } = filterGlobals(stdout, target.user);
  // One statement per line-range we know, so psql's "psql:<stdin>:LINE:" errors map back to statements.
  const lines: string[] = [];
  const startLines: { line: number; text: string }[] = [];
  for (const p of parts) {
    startLines.push({ line: lines.length + 1, text: p.text });
    lines.push(...p.text.split("\n"));
  }
  const { stderr } = await runTool(tools, "psql", ["-X", "-q", "-v", "ON_ERROR_STOP=0", dbnameArg(targetDb)], {
    conn: target,
    input: lines.join("\n") + "\n",
    signal,
  });
  const outcome: GlobalsOutcome = { applied: 0, removed, alreadyExisted: [], failed: [] };
  const errorsByStatement = new Map<string, string>();
  for (const m of stderr.matchAll(/^psql:<stdin>:(\d+): ERROR:\s+(.*)$/gm)) {
    const line = Number(m[1]);
    const owner = [...startLines].reverse().find((s) => s.line <= line);
    if (owner) errorsByStatement.set(owner.text, m[2]!);
  }
  for (const p of parts) {
    if (p.meta) continue;
    const error = errorsByStatement.get(p.text);
    if (!error) outcome.applied++;
    else if (/already exists/.test(error)) outcome.alreadyExisted.push(p.text);
    else outcome.failed.push({ statement: p.text, error });
  }
  return outcome;
}
