// Settings a newer major no longer knows. ALTER DATABASE … SET and ALTER ROLE … SET name a setting; a target whose
// major removed it refuses the statement ("unrecognized configuration parameter"). Such statements are left out of
// what is applied, and named; the rest is applied. Dotted names (an extension's or a custom setting) are kept: a
// server takes them as placeholders.
import type pg from "pg";

/** The settings this server knows, by name (lower case, as pg_settings has them). */
export async function knownSettings(client: pg.Client): Promise<Set<string>> {
  const { rows } = await client.query<{ name: string }>("SELECT name FROM pg_settings");
  return new Set(rows.map((r) => r.name.toLowerCase()));
}

export const settingKnown = (name: string, known: ReadonlySet<string>): boolean =>
  name.includes(".") || known.has(name.toLowerCase());

const IDENT = `(?:"(?:[^"]|"")*"|[^\\s"]+)`;
const SET_STATEMENT = new RegExp(
  `^\\s*ALTER\\s+(?:DATABASE|ROLE)\\s+${IDENT}(?:\\s+IN\\s+DATABASE\\s+${IDENT})?\\s+SET\\s+(${IDENT})\\s+(?:TO|=)\\s`,
  "i",
);

/** Pure: the setting an ALTER DATABASE/ROLE … SET statement sets, or undefined for any other statement. */
export function settingOf(statement: string): string | undefined {
  const m = SET_STATEMENT.exec(statement);
  if (!m) return undefined;
  const name = m[1]!;
  return name.startsWith('"') ? name.slice(1, -1).replace(/""/g, '"') : name.toLowerCase();
}

/** Pure: a script (one statement per line, as pg_restore writes them) without the SETs of settings the server does not know. */
export function withoutUnknownSettings(
  script: string,
  known: ReadonlySet<string>,
): { script: string; removed: string[] } {
  const removed: string[] = [];
  const lines = script.split("\n").map((line) => {
    const name = settingOf(line);
    if (name === undefined || settingKnown(name, known)) return line;
    removed.push(line.trim());
    // An empty line in its place: psql's error lines still point at the statements they came from.
    return "";
  });
  return { script: lines.join("\n"), removed };
}
