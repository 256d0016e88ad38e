// pg-migrate: the coordinator's command line. The one place where an error becomes a message and an exit code.
import { resolve } from "node:path";
import { Command, CommanderError, Option } from "commander";
import { bool, nonEmpty, nonNegativeInt, port, positiveInt } from "../shared/cli-values.js";
import { ConfigError, errorMessage, InterruptedError, PreflightError, ToolError } from "../shared/errors.js";
import { NatsConnectError } from "../shared/nats.js";
import { ConnectError } from "../shared/pg/connect.js";
import { resolveDumpRoot } from "../shared/paths.js";
import { DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_DELIVER } from "../shared/contracts/jetstream.js";
import { FAST_RESTORE_MODES, type FastRestoreMode, type MigrateConfig } from "./config.js";
import { Output } from "./output.js";
import { plan } from "./plan.js";
import { revertByHand } from "./revert.js";
import { status } from "./status.js";
import { EXIT, migrate } from "./run.js";

interface RawOptions {
  fromHost: string; fromPort: number; fromUser: string; fromPass: string; fromDb: string;
  toHost: string; toPort: number; toUser: string; toPass: string; toDb: string;
  jobs: number; maxParallel: number; dumpRoot: string; migrateGlobals: boolean;
  natsUrl?: string; workers?: number; fastRestore: FastRestoreMode; compress: string; pgBin?: string;
  keepDumps: boolean; restart: boolean; yes: boolean; dryRun: boolean; wait: number; workerWait: number; ackWait: number; maxDeliver: number; retryDelay: number;
  natsReplicas: number; report?: string; logLevel?: string;
}

/** The target's flags, shared by the migration and by revert-settings. */
function targetOptions(): Option[] {
  return [
    new Option("--to-host <host>", "target host").default("localhost").argParser(nonEmpty),
    new Option("--to-port <port>", "target port").default(5432).argParser(port),
    new Option("--to-user <user>", "target user (the migration user: never created or altered by the globals)").default("postgres").argParser(nonEmpty),
    new Option("--to-pass <password>", "target password (visible in the process list: prefer PGMIGRATE_TO_PASS)").env("PGMIGRATE_TO_PASS").default("newpass"),
    new Option("--to-db <db>", "target database used for settings, globals and CREATE DATABASE").default("postgres").argParser(nonEmpty),
  ];
}

export function buildRevertProgram(): Command {
  const program = new Command("pg-migrate revert-settings").description(
    "Put back the target settings a run changed for fast-restore, from the run records under ~/.pg-migrate (and the KV with --nats-url). For the day a run could not do it itself.",
  );
  for (const o of targetOptions()) program.addOption(o);
  return program
    .addOption(new Option("--nats-url <url>", "also look for run records in this NATS server's KV").env("PGMIGRATE_NATS_URL"))
    .showHelpAfterError("(pg-migrate revert-settings --help lists the options)")
    .exitOverride()
    .configureOutput({ writeErr: (x) => process.stderr.write(x) });
}

export function buildProgram(): Command {
  const program = new Command("pg-migrate")
    .description("Move every database and the roles of one PostgreSQL server to another, verified row for row, through NATS JetStream workers.")
    .addOption(new Option("--from-host <host>", "source host").default("localhost").argParser(nonEmpty))
    .addOption(new Option("--from-port <port>", "source port").default(5432).argParser(port))
    .addOption(new Option("--from-user <user>", "source user").default("postgres").argParser(nonEmpty))
    .addOption(new Option("--from-pass <password>", "source password (visible in the process list: prefer PGMIGRATE_FROM_PASS)").env("PGMIGRATE_FROM_PASS").default("oldpass"))
    .addOption(new Option("--from-db <db>", "source database used for discovery").default("postgres").argParser(nonEmpty));
  for (const o of targetOptions()) program.addOption(o);
  return program
    .addOption(new Option("-j, --jobs <n>", "pg_dump/pg_restore -j for one database").default(4).argParser(positiveInt))
    .addOption(new Option("-m, --max-parallel <n>", "databases in flight at once across all workers").default(4).argParser(positiveInt))
    .addOption(new Option("--dump-root <dir>", "dump volume shared by the workers (relative to $HOME)").default("pg_dumps").env("PGMIGRATE_DUMP_ROOT"))
    .addOption(new Option("--migrate-globals [bool]", "migrate roles and tablespaces (--migrate-globals=false or --no-migrate-globals to skip)").default(true).argParser(bool))
    .addOption(new Option("--no-migrate-globals", "do not migrate roles and tablespaces"))
    .addOption(new Option("--nats-url <url>", "NATS server(s) of a distributed run (absent: embedded mode, a local nats-server and local workers)").env("PGMIGRATE_NATS_URL"))
    .addOption(new Option("--workers <n>", "local workers in embedded mode (default: --max-parallel)").argParser(positiveInt))
    .addOption(new Option("--fast-restore <mode>", "target settings during the run: safe, full (also fsync and full_page_writes off) or off").choices(FAST_RESTORE_MODES).default("safe"))
    .addOption(new Option("--compress <level>", "pg_dump --compress for the dumps (0-9)").default("1"))
    .addOption(new Option("--pg-bin <dir>", "folder of pg_dump, pg_restore, pg_dumpall and psql (default: PATH)").env("PGMIGRATE_PG_BIN"))
    .addOption(new Option("--keep-dumps", "keep the dumps after a fully verified run").default(false))
    .addOption(new Option("--restart", "start a new run instead of resuming an unfinished one, after dropping the databases the old run created").default(false))
    .addOption(new Option("-y, --yes", "confirm what --restart drops without asking").default(false))
    .addOption(new Option("--dry-run", "print what a run would do and change nothing (the same as pg-migrate plan)").default(false))
    .addOption(new Option("--wait <seconds>", "keep trying the source, the target and NATS this long before giving up (servers starting alongside, as in a compose stack); 0: no waiting").default(0).env("PGMIGRATE_WAIT").argParser(nonNegativeInt))
    .addOption(new Option("--worker-wait <seconds>", "how long to wait for the first worker").default(60).argParser(positiveInt))
    .addOption(new Option("--ack-wait <seconds>", "seconds a silent worker keeps a job before it is redelivered").default(DEFAULT_ACK_WAIT_MS / 1000).argParser(positiveInt))
    .addOption(new Option("--max-deliver <n>", "deliveries of a job before its database fails").default(DEFAULT_MAX_DELIVER).argParser(positiveInt))
    .addOption(new Option("--retry-delay <seconds>", "delay before a failed job is tried again").default(5).argParser(positiveInt))
    .addOption(new Option("--nats-replicas <n>", "replicas of the streams and buckets (3 on a NATS cluster)").default(1).argParser(positiveInt))
    .addOption(new Option("--report <path>", "also write the JSON report here (it is always under ~/.pg-migrate/reports)"))
    .addOption(new Option("--log-level <level>", "also print the run's log lines on stderr from this level (JSON; one readable line each on a terminal, where it also turns the progress bars off)").choices(["debug", "info", "warn", "error"]))
    .addHelpText("after", "\nCommands:\n  pg-migrate worker --nats-url <url> --dump-root <dir>   run a worker (see pg-migrate worker --help)\n  pg-migrate plan [flags]                                what a run with these flags would do; changes nothing\n  pg-migrate status [run] / pg-migrate watch [run]       a run's databases and live workers (--json)\n  pg-migrate revert-settings --to-host … --to-port …     put the target's saved settings back by hand\n\nPasswords: PGMIGRATE_FROM_PASS and PGMIGRATE_TO_PASS keep them off the command line.")
    .showHelpAfterError("(pg-migrate --help lists the options)")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
}

export function toConfig(o: RawOptions): MigrateConfig {
  if (!/^\d$/.test(o.compress)) throw new ConfigError(`--compress must be a level from 0 to 9, got ${JSON.stringify(o.compress)}`, "--compress");
  return Object.freeze({
    source: { role: "source", host: o.fromHost, port: o.fromPort, user: o.fromUser, password: o.fromPass },
    sourceDb: o.fromDb,
    target: { role: "target", host: o.toHost, port: o.toPort, user: o.toUser, password: o.toPass },
    targetDb: o.toDb,
    jobs: o.jobs,
    maxParallel: o.maxParallel,
    dumpRoot: resolveDumpRoot(o.dumpRoot),
    migrateGlobals: o.migrateGlobals,
    natsUrl: o.natsUrl,
    workers: o.workers ?? o.maxParallel,
    fastRestore: o.fastRestore,
    compress: o.compress,
    pgBin: o.pgBin,
    keepDumps: o.keepDumps,
    restart: o.restart,
    yes: o.yes,
    waitMs: o.wait * 1000,
    workerWaitMs: o.workerWait * 1000,
    ackWaitMs: o.ackWait * 1000,
    maxDeliver: o.maxDeliver,
    retryDelayMs: o.retryDelay * 1000,
    natsReplicas: o.natsReplicas,
    reportPath: o.report === undefined ? undefined : resolve(o.report),
    logLevel: o.logLevel,
  });
}

export async function main(argv: string[]): Promise<number> {
  const out = new Output();
  if (argv[0] === "revert-settings") return revertMain(argv.slice(1), out);
  if (argv[0] === "status" || argv[0] === "watch") return statusMain(argv[0], argv.slice(1), out);
  const planOnly = argv[0] === "plan";
  const program = buildProgram();
  try {
    program.parse(planOnly ? argv.slice(1) : argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    throw err;
  }
  // plan reads only: Ctrl-C just ends it (the shell reports 130).
  if (planOnly || program.opts<RawOptions>().dryRun) {
    try {
      const cfg = toConfig(program.opts<RawOptions>());
      return await plan(cfg, out);
    } catch (err) {
      return report(err, out);
    }
  }
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      out.line(`${signal} received: stopping the workers, reverting the target, saving the state (again to force quit)`);
      abort.abort();
    } else process.exit(EXIT.interrupted);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const cfg = toConfig(program.opts<RawOptions>());
    if (cfg.logLevel) out.plain();
    for (const flag of ["fromPass", "toPass"] as const) {
      if (program.getOptionValueSource(flag) === "cli") {
        out.warn(`--${flag === "fromPass" ? "from" : "to"}-pass puts the password in the process list; PGMIGRATE_${flag === "fromPass" ? "FROM" : "TO"}_PASS keeps it out`);
      }
    }
    return await migrate(cfg, out, abort.signal);
  } catch (err) {
    return report(err, out);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

async function statusMain(command: "status" | "watch", argv: string[], out: Output): Promise<number> {
  const program = new Command(`pg-migrate ${command}`)
    .description(
      command === "status"
        ? "A run's databases (phase, size, worker, durations, rows verified) and its live workers. Default: the newest run under ~/.pg-migrate."
        : "The same as status, kept up to date until the run ends.",
    )
    .argument("[run]", "run id (default: the newest)")
    .addOption(new Option("--nats-url <url>", "read the run from this NATS server's KV (a run of another host)").env("PGMIGRATE_NATS_URL"))
    .addOption(new Option("--json", "JSON instead of tables (watch: one line per change)").default(false))
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeErr: (x) => process.stderr.write(x) });
  try {
    program.parse(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    throw err;
  }
  const o = program.opts<{ natsUrl?: string; json: boolean }>();
  try {
    return await status({ runId: program.args[0], natsUrl: o.natsUrl, json: o.json, watch: command === "watch" }, out);
  } catch (err) {
    return report(err, out);
  }
}

async function revertMain(argv: string[], out: Output): Promise<number> {
  const program = buildRevertProgram();
  try {
    program.parse(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    throw err;
  }
  const o = program.opts<Pick<RawOptions, "toHost" | "toPort" | "toUser" | "toPass" | "toDb" | "natsUrl">>();
  try {
    return await revertByHand(
      { role: "target", host: o.toHost, port: o.toPort, user: o.toUser, password: o.toPass },
      o.toDb,
      o.natsUrl,
      out,
    );
  } catch (err) {
    return report(err, out);
  }
}

function report(err: unknown, out: Output): number {
  if (err instanceof InterruptedError) {
    out.line("interrupted before the migration started; run the same command again to continue");
    return EXIT.interrupted;
  }
  const line = (msg: string) => process.stderr.write(`pg-migrate: error: ${msg}\n`);
  if (err instanceof ConfigError) {
    line(err.message);
    return EXIT.usage;
  }
  if (err instanceof PreflightError || err instanceof ConnectError || err instanceof NatsConnectError) {
    line(err.message);
    return EXIT.preflight;
  }
  if (err instanceof ToolError) {
    line(err.message);
    return EXIT.failed;
  }
  line(errorMessage(err));
  if (process.env.PGMIGRATE_DEBUG) console.error(err);
  return EXIT.failed;
}

