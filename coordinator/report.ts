// The end of a run: a summary table on the terminal and a JSON report under ~/.pg-migrate/reports.
import { readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import Table from "cli-table3";
import { decodeVerifyDetail, type VerifyTable } from "../shared/contracts/messages.js";
import { bytes, seconds } from "./output.js";
import type { Report } from "../shared/contracts/report.js";
import type { RunRecord } from "./state.js";
import { makeDir } from "../shared/dirs.js";

export const REPORT_VERSION = 1 as const;

/** Writes the report under home (always) and to extraPath (--report) too; returns the path under home. */
export async function writeReport(
  home: string,
  record: RunRecord,
  dumpRoot: string,
  dumps: Report["dumps"],
  extraPath?: string,
): Promise<string> {
  const databases = [];
  for (const d of record.databases) {
    // A streamed database carries its counts in the record; a dumped one in the detail file beside its dump.
    let tables: VerifyTable[] = d.tableCounts ?? [];
    if (d.detailPath) {
      const path = join(dumpRoot, d.detailPath);
      tables = await readFile(path, "utf8").then(
        (t) => decodeVerifyDetail(t, path).tables,
        () => [],
      );
    }
    const {
      create: _create,
      jobId: _jobId,
      jobSeq: _jobSeq,
      jobKind: _jobKind,
      progress: _progress,
      tableCounts: _tableCounts,
      stream,
      dumpPath,
      detailPath,
      ...rest
    } = d;
    // Paths into dumps that are removed right after the report would lead nowhere.
    const paths = dumps.kept ? { ...(dumpPath ? { dumpPath } : {}), ...(detailPath ? { detailPath } : {}) } : {};
    databases.push({
      ...rest,
      ...paths,
      ...(stream ? { via: "stream" as const, stream: reportedStream(stream) } : {}),
      verified: d.phase === "done",
      tableCounts: tables,
    });
  }
  const report: Report = {
    reportVersion: REPORT_VERSION,
    runId: record.runId,
    status: record.status,
    startedAt: record.startedAt,
    finishedAt: new Date().toISOString(),
    resumedAt: record.resumedAt,
    source: record.source,
    target: record.target,
    options: record.options,
    fastRestore: record.fastRestore,
    globals: record.globals,
    skipped: record.skipped,
    upgradeNotes: record.upgradeNotes ?? [],
    steps: record.steps ?? [],
    dumpRoot,
    dumps,
    totals: {
      databases: record.databases.length,
      verified: record.databases.filter((d) => d.phase === "done").length,
      failed: record.databases.filter((d) => d.phase === "failed").length,
      rows: record.databases.reduce((s, d) => s + (d.verifiedRows ?? 0), 0),
      warnings: record.databases.reduce((s, d) => s + (d.warnings?.length ?? 0), 0),
    },
    databases,
  };
  const dir = join(home, "reports");
  await makeDir(dir);
  const path = join(dir, `${record.runId}.json`);
  await writeFile(path, JSON.stringify(report, null, 2), { mode: 0o600 });
  if (extraPath) {
    await makeDir(dirname(extraPath), 0o755);
    await writeFile(extraPath, JSON.stringify(report, null, 2), { mode: 0o600 });
  }
  return path;
}

export function summaryTable(record: RunRecord): string {
  const table = new Table({
    // A streamed database's columns: its copy (schema and slices) and its post job.
    head: ["database", "size", "dump/copy", "restore/post", "analyze", "tables", "rows", "verified", "warnings"],
    style: { head: [], border: [] },
  });
  for (const d of record.databases) {
    table.push([
      d.name,
      bytes(d.sizeBytes),
      seconds(d.timings.dump ?? d.timings.copy),
      seconds(d.timings.restore ?? d.timings.post),
      seconds(d.timings.analyze),
      d.tables ?? "-",
      d.verifiedRows ?? d.rows ?? "-",
      d.phase === "done" ? "yes" : d.phase === "failed" ? "FAILED" : d.phase,
      d.warnings?.length ?? 0,
    ]);
  }
  const warnings = record.databases.reduce((s, d) => s + (d.warnings?.length ?? 0), 0);
  return warnings
    ? `${table.toString()}\n${warnings === 1 ? "1 warning" : `${warnings} warnings`} (what pg_dump cannot preserve; not failures): see the report`
    : table.toString();
}

/** What the report keeps of a streamed database: its slices (which worker did each, in how long), why it restarted. */
function reportedStream(s: NonNullable<RunRecord["databases"][number]["stream"]>) {
  return {
    restarts: s.restarts,
    ...(s.restartedBecause ? { restartedBecause: s.restartedBecause } : {}),
    ...(s.keptSlices !== undefined ? { keptSlices: s.keptSlices } : {}),
    slices: s.slices.map(({ jobId: _j, jobSeq: _s, ...slice }) => slice),
  };
}
