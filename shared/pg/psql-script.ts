// A SQL script run through psql the way pg_dumpall's and pg_restore's scripts expect (meta-commands and all),
// every statement attempted, and each error mapped back to the line it came from.
import type { ToolConnection, Toolset } from "../tools.js";
import { runTool } from "../tools.js";
import { dbnameArg } from "./conninfo.js";

export interface ScriptError {
  /** 1-based line of the script the failing statement ends on, or null for an error psql gave no line for. */
  line: number | null;
  error: string;
}

export async function runPsqlScript(
  tools: Toolset,
  conn: ToolConnection,
  database: string,
  script: string,
  signal?: AbortSignal,
): Promise<ScriptError[]> {
  // "-f -": only with a file name does psql put the "psql:<stdin>:LINE:" location on each error.
  const { stderr } = await runTool(
    tools,
    "psql",
    ["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-", dbnameArg(database)],
    {
      conn,
      input: script.endsWith("\n") ? script : `${script}\n`,
      ...(signal ? { signal } : {}),
    },
  );
  const errors: ScriptError[] = [];
  for (const line of stderr.split("\n")) {
    const located = /^psql:<stdin>:(\d+): (?:ERROR|FATAL):\s+(.*)$/.exec(line);
    if (located) errors.push({ line: Number(located[1]), error: located[2]! });
    // An error psql reported some other way is still an error.
    else if (/\b(ERROR|FATAL):/.test(line)) errors.push({ line: null, error: line.trim() });
  }
  return errors;
}
