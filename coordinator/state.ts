// The run record: the coordinator's memory across crashes. Kept as a local file under ~/.pg-migrate/state
// (written whole, then renamed) and mirrored to the JetStream KV so a coordinator on another host can resume.
import { readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { KV } from "@nats-io/kv";
import { kvKeys } from "../shared/contracts/jetstream.js";
import { customAlphabet } from "nanoid";
import { decodeRunRecord, type DbState, type RunRecord } from "../shared/contracts/record.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/log.js";
import { makeDir } from "../shared/dirs.js";

// The record's shape is a contract (shared/contracts/record.ts), decoded wherever it is read.
export type { DbState, Memberships, RunRecord, SavedSetting } from "../shared/contracts/record.js";

/** Whether a record's target is this server: by system identifier when both are known, else by address. */
export function sameTarget(r: RunRecord, systemId: string | null, host: string, port: number): boolean {
  return systemId !== null && r.target.systemId !== null
    ? r.target.systemId === systemId
    : r.target.host === host && r.target.port === port;
}

const newId = customAlphabet("abcdefghijklmnopqrstuvwxyz0123456789", 8);
export function newRunId(now = new Date()): string {
  const stamp = now.toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
  return `${stamp}-${newId()}`;
}

export class RunState {
  private kv: KV | undefined;
  private saving: Promise<void> = Promise.resolve();
  /** A write asked for while another runs: every save() in between joins it. */
  private queued: Promise<void> | undefined;
  private kvWrittenAt = 0;
  private kvStatus: string | undefined;
  private kvTimer: NodeJS.Timeout | undefined;
  private dirMade = false;

  private constructor(
    readonly record: RunRecord,
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  /** A run record as write() below wrote it (local file or KV entry). */
  static parse(text: string): RunRecord {
    return decodeRunRecord(text);
  }

  static stateRoot(home: string): string {
    return join(home, "state");
  }

  /** The newest unfinished run between these two servers, if any. */
  static async findUnfinished(home: string, pairKey: string, log: Logger): Promise<RunState | undefined> {
    return (await RunState.all(home, log)).find((s) => s.record.pairKey === pairKey && !ended(s.record));
  }

  /** Every run recorded under this home, newest first. */
  static async all(home: string, log: Logger): Promise<RunState[]> {
    const root = RunState.stateRoot(home);
    const ids = await readdir(root).catch(() => [] as string[]);
    const states: RunState[] = [];
    for (const id of ids.sort().reverse()) {
      const record = await readRecord(join(root, id, "run.json"), log);
      if (record) states.push(new RunState(record, join(root, id), log));
    }
    return states;
  }

  /** The run records in the runs bucket (one run's, or all). */
  static async recordsInKv(kv: KV, runId?: string, log?: Logger): Promise<RunRecord[]> {
    const records: RunRecord[] = [];
    for await (const key of await kv.keys(runId ? kvKeys.run(runId) : kvKeys.allRuns)) {
      const e = await kv.get(key);
      if (!e || e.operation !== "PUT") continue;
      // One entry this version cannot read (another version wrote it) does not hide the others.
      try {
        records.push(RunState.parse(e.string()));
      } catch (err) {
        log?.warn({ key, err: errorMessage(err) }, "run record in the KV skipped");
      }
    }
    return records;
  }

  /** The databases this run created on the target: its own, never a conflict for it. */
  createdDatabases(): Set<string> {
    return new Set(this.record.databases.filter((d) => d.created).map((d) => d.name));
  }

  /**
   * The unfinished run between these servers as the KV knows it: how a coordinator on another host (or with
   * another home) resumes a run whose local files it does not have. Read only: the record becomes local with its
   * first save().
   */
  static async fromKv(kv: KV, home: string, pairKey: string, log: Logger): Promise<RunState | undefined> {
    const pair = await kv.get(kvKeys.pair(pairKey)).catch(() => null);
    if (!pair || pair.operation !== "PUT") return undefined;
    const entry = await kv.get(kvKeys.run(pair.string())).catch(() => null);
    if (!entry || entry.operation !== "PUT") return undefined;
    let record: RunRecord;
    try {
      record = RunState.parse(entry.string());
    } catch (err) {
      // Not resumed from: the run refuses the databases that record's run created, rather than guess.
      log.warn(
        { runId: pair.string(), err: errorMessage(err) },
        "the unfinished run's record in the KV cannot be read",
      );
      return undefined;
    }
    if (record.pairKey !== pairKey || ended(record)) return undefined;
    return new RunState(record, join(RunState.stateRoot(home), record.runId), log);
  }

  static async create(home: string, record: RunRecord, log: Logger): Promise<RunState> {
    const dir = join(RunState.stateRoot(home), record.runId);
    await makeDir(dir);
    const state = new RunState(record, dir, log);
    await state.save();
    return state;
  }

  get runId(): string {
    return this.record.runId;
  }

  /**
   * The key that seals the passwords in this run's jobs in embedded mode, in a 0600 file beside the local record
   * (never in the KV, never in the record): a resumed session must open the jobs the earlier one queued.
   */
  async embeddedSecret(generate: () => string): Promise<string> {
    const path = join(this.dir, "embedded.key");
    const existing = await readFile(path, "utf8").catch(() => undefined);
    if (existing?.trim()) return existing.trim();
    const secret = generate();
    await writeFile(path, secret, { mode: 0o600, flag: "w" });
    return secret;
  }

  /** Once the run has ended there is nothing left to open with it. */
  async forgetEmbeddedSecret(): Promise<void> {
    await rm(join(this.dir, "embedded.key"), { force: true });
  }

  attachKv(kv: KV): void {
    this.kv = kv;
  }

  db(key: string): DbState | undefined {
    return this.record.databases.find((d) => d.key === key);
  }

  /**
   * Writes are serialized, and the saves asked for while one is being written share the next write: each save()
   * resolves once a write that began after it has ended. The local file is written every time. The KV copy (read
   * by status and watch, and by a resume from another machine) is the whole record too, so it is written at most
   * once a second, at once when the run's status changes: with hundreds of databases a put per phase change was
   * most of the coordinator's work and memory. A resume from a KV copy a second old is safe: a job it does not
   * know of is purged and done again, and a restore again recreates its database.
   */
  save(): Promise<void> {
    this.queued ??= this.saving.then(() => {
      this.queued = undefined;
      return this.write();
    });
    this.saving = this.queued;
    return this.queued;
  }

  private async write(): Promise<void> {
    this.record.updatedAt = new Date().toISOString();
    const text = JSON.stringify(this.record);
    const path = join(this.dir, "run.json");
    const tmp = `${path}.tmp`;
    if (!this.dirMade) {
      await makeDir(this.dir); // a record first read from the KV has no local folder yet
      this.dirMade = true;
    }
    await writeFile(tmp, text, { mode: 0o600 });
    await rename(tmp, path);
    if (!this.kv) return;
    const wait = KV_EVERY_MS - (Date.now() - this.kvWrittenAt);
    if (this.record.status !== this.kvStatus || wait <= 0) await this.putKv(text);
    else this.kvTimer ??= setTimeout(() => void this.putKv(JSON.stringify(this.record)), wait).unref();
  }

  private async putKv(text: string): Promise<void> {
    clearTimeout(this.kvTimer);
    this.kvTimer = undefined;
    this.kvWrittenAt = Date.now();
    this.kvStatus = this.record.status;
    await this.kv
      ?.put(kvKeys.run(this.runId), text)
      .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "KV run record not updated"));
  }
}

/** The KV copy of a run record is refreshed at most this often (and at every change of the run's status). */
const KV_EVERY_MS = 1000;

function ended(r: RunRecord): boolean {
  return r.status === "finished" || r.status === "abandoned";
}

async function readRecord(path: string, log: Logger): Promise<RunRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined; // being written (write() renames it into place), or removed
  }
  try {
    return RunState.parse(text);
  } catch (err) {
    // Another version's, or damaged: skipped, said in the log; the run then refuses what that run created.
    log.warn({ path, err: errorMessage(err) }, "run record skipped");
    return undefined;
  }
}
