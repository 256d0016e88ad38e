// Splits a psql script (as pg_dumpall writes it) into statements and meta-command lines, respecting quotes,
// dollar quotes and comments, and remembering the line each starts on.

export interface ScriptPart {
  text: string;
  line: number;
  meta: boolean;
}

export function splitScript(script: string): ScriptPart[] {
  const parts: ScriptPart[] = [];
  let start = 0;
  let line = 1;
  let startLine = 1;
  let i = 0;
  const atStatementStart = () => script.slice(start, i).trim() === "";
  const push = (end: number, meta: boolean) => {
    const text = script.slice(start, end).trim();
    if (text && !isOnlyComments(text)) parts.push({ text, line: startLine, meta });
    start = end;
  };
  while (i < script.length) {
    const ch = script[i]!;
    if (ch === "\n") {
      line++;
      i++;
      if (atStatementStart()) {
        start = i;
        startLine = line;
      }
      continue;
    }
    if (atStatementStart()) {
      startLine = line;
      start = i;
      if (ch === "\\") {
        const end = script.indexOf("\n", i);
        const stop = end === -1 ? script.length : end;
        i = stop;
        push(stop, true);
        continue;
      }
    }
    if (ch === "-" && script[i + 1] === "-") {
      const before = atStatementStart();
      const end = script.indexOf("\n", i);
      i = end === -1 ? script.length : end;
      // A comment between statements belongs to neither: the next line may be a meta-command.
      if (before) start = i;
      continue;
    }
    if (ch === "'" || ch === '"') {
      i++;
      while (i < script.length) {
        if (script[i] === "\n") line++;
        if (script[i] === ch) {
          if (script[i + 1] === ch) i += 2;
          else break;
        } else i++;
      }
      i++;
      continue;
    }
    if (ch === "$") {
      const tag = /^\$[A-Za-z_0-9]*\$/.exec(script.slice(i, i + 64));
      if (tag) {
        const close = script.indexOf(tag[0], i + tag[0].length);
        const end = close === -1 ? script.length : close + tag[0].length;
        line += countNewlines(script.slice(i, end));
        i = end;
        continue;
      }
    }
    if (ch === ";") {
      i++;
      push(i, false);
      startLine = line;
      continue;
    }
    i++;
  }
  push(script.length, false);
  return parts;
}

function countNewlines(s: string): number {
  let n = 0;
  for (const c of s) if (c === "\n") n++;
  return n;
}

function isOnlyComments(text: string): boolean {
  return text.split("\n").every((l) => l.trim() === "" || l.trim().startsWith("--"));
}

/** The role a CREATE ROLE / ALTER ROLE / COMMENT ON ROLE / SECURITY LABEL … ON ROLE statement is about. */
export function roleStatementTarget(statement: string): string | undefined {
  const m =
    /^(?:CREATE\s+ROLE|ALTER\s+ROLE|ALTER\s+USER|COMMENT\s+ON\s+ROLE|SECURITY\s+LABEL(?:\s+FOR\s+\S+)?\s+ON\s+ROLE)\s+("(?:[^"]|"")*"|[^\s;]+)/i.exec(
      statement,
    );
  if (!m) return undefined;
  const name = m[1]!;
  return name.startsWith('"') ? name.slice(1, -1).replace(/""/g, '"') : name.toLowerCase();
}
