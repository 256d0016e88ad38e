// A database's own properties — ALTER DATABASE … SET, ALTER ROLE … IN DATABASE … SET, CONNECTION LIMIT, its
// comment, security labels and grants — as pg_dump --create records them in the dump, and as pg_restore writes
// them only with --create. The database already exists (the coordinator made it), so the script is cut to what
// follows pg_restore's CREATE DATABASE, and run after verification: a connection limit must not lock it out.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Mismatch } from "../shared/contracts/messages.js";
import { runPsqlScript } from "../shared/pg/psql-script.js";
import { withoutUnknownSettings } from "../shared/pg/settings.js";
import { runTool, type ToolConnection, type Toolset } from "../shared/tools.js";

const DATABASE_LEVEL =
  /^\d+; \d+ \d+ (DATABASE PROPERTIES|COMMENT - DATABASE |ACL - DATABASE |SECURITY LABEL - DATABASE )/;
const LIST_FILE = "database-properties.list";

/** Pure: the script pg_restore --create wrote, without its CREATE DATABASE / OWNER part (all before the first \connect). */
export function withoutCreate(script: string): string {
  const at = script.search(/^\\connect /m);
  return at < 0 ? "" : script.slice(at);
}

/**
 * Applies the dump's database-level entries to the restored database; each statement that fails is a mismatch.
 * A SET of a setting the target does not know (`known`: its pg_settings; a newer major removed it) is left out and
 * returned in `skipped`: the rest is applied.
 */
export async function applyDatabaseProperties(
  tools: Toolset,
  dumpDir: string,
  target: ToolConnection,
  database: string,
  signal: AbortSignal,
  known?: ReadonlySet<string>,
  /** Where the list file goes (default: the dump directory itself; a custom-format archive is a file). */
  scratchDir = dumpDir,
): Promise<{ mismatches: Mismatch[]; skipped: string[] }> {
  const { stdout: toc } = await runTool(tools, "pg_restore", ["--create", "--list", dumpDir], { signal });
  const entries = toc.split("\n").filter((line) => DATABASE_LEVEL.test(line));
  if (!entries.length) return { mismatches: [], skipped: [] };
  if (/[\r\n]/.test(database)) {
    // pg_restore cannot write \connect for such a name; say so rather than skip it quietly.
    return {
      mismatches: [
        {
          what: "database-property",
          object: "database properties",
          source: `${entries.length} entries`,
          target: "not applied: pg_restore cannot script a database name with a line break",
        },
      ],
      skipped: [],
    };
  }
  const list = join(scratchDir, LIST_FILE);
  await writeFile(list, `${entries.join("\n")}\n`, { mode: 0o600 });
  const { stdout: script } = await runTool(
    tools,
    "pg_restore",
    ["--create", `--use-list=${list}`, "--file=-", dumpDir],
    { signal },
  );
  const { script: body, removed: skipped } = known
    ? withoutUnknownSettings(withoutCreate(script), known)
    : { script: withoutCreate(script), removed: [] };
  const errors = await runPsqlScript(tools, target, database, body, signal);
  const lines = body.split("\n");
  const mismatches = errors.map((e) => ({
    what: "database-property" as const,
    object: e.line === null ? "database properties" : (lines[e.line - 1] ?? "").trim().slice(0, 200),
    source: null,
    target: e.error,
  }));
  return { mismatches, skipped };
}
