// pg-migrate: the coordinator's command line. The one place where an error becomes a message and an exit code.
import { availableParallelism } from "node:os";
import { resolve } from "node:path";
import { Command, CommanderError, Option } from "commander";
import { bool, nonEmpty, nonNegativeInt, port, positiveInt } from "../shared/cli-values.js";
import {
  ConfigError,
  ConnectError,
  errorMessage,
  InterruptedError,
  NatsConnectError,
  PreflightError,
  ToolError,
} from "../shared/errors.js";
import { natsAuthFrom, natsAuthOptions, withoutCredentials, type NatsAuthFlags } from "../shared/nats.js";
import type { ServerSpec } from "../shared/pg/connect.js";
import { libpqPassword } from "../shared/pg/passwords.js";
import { SSL_MODES } from "../shared/pg/tls.js";
import { readSecretFile } from "../shared/secrets.js";
import { version } from "../shared/version.js";
import { COMPRESS_PATTERN } from "../shared/compression.js";
import { resolveDumpRoot } from "../shared/paths.js";
import { DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_DELIVER } from "../shared/contracts/jetstream.js";
import { FAST_RESTORE_MODES, VIAS, type FastRestoreMode, type MigrateConfig, type Via } from "./config.js";
import { Output } from "./output.js";
import { defaultParallelism } from "./parallelism.js";
import { abort as abortRun, cutover } from "./cutover.js";
import { plan } from "./plan.js";
import { revertByHand } from "./revert.js";
import { status } from "./status.js";
import { EXIT, LeftBehind, migrate } from "./run.js";

interface ServerFlags {
  Host: string;
  Port: number;
  User: string;
  Pass?: string;
  PassFile?: string;
  Db: string;
  Sslmode?: string;
  Sslrootcert?: string;
  Sslcert?: string;
  Sslkey?: string;
}
type Prefixed<P extends string, T> = { [K in keyof T as `${P}${K & string}`]: T[K] };
type RawOptions = Prefixed<"from", ServerFlags> &
  Prefixed<"to", ServerFlags> &
  NatsAuthFlags & {
    jobs?: number;
    maxParallel?: number;
    dumpRoot: string;
    via: Via;
    migrateGlobals: boolean;
    rolePasswords: boolean;
    owner: boolean;
    includeDb: string[];
    excludeDb: string[];
    verify: "count" | "checksum";
    tablespaces: boolean;
    tablespaceLocation: string[];
    natsUrl?: string;
    workers?: number;
    fastRestore: FastRestoreMode;
    compress: string;
    pgBin?: string;
    keepDumps: boolean;
    restart: boolean;
    yes: boolean;
    dryRun: boolean;
    wait: number;
    workerWait: number;
    ackWait: number;
    maxDeliver: number;
    retryDelay: number;
    natsReplicas: number;
    report?: string;
    logLevel?: string;
    follow: boolean;
    replicaIdentityFull: boolean;
    followSource?: string;
  };

type Side = "from" | "to";
/** The passwords of the demo's seeded servers: the last resort, after every place libpq itself would look. */
const DEMO_PASSWORDS = { from: "oldpass", to: "newpass" } as const;
const ROLE = { from: "source", to: "target" } as const;
const ENV = { from: "PGMIGRATE_FROM", to: "PGMIGRATE_TO" } as const;

/** One server's flags: where, who, how to prove it (a password file or the environment) and TLS. */
function serverOptions(side: Side): Option[] {
  const role = ROLE[side];
  const env = ENV[side];
  return [
    new Option(`--${side}-host <host>`, `${role} host`).env(`${env}_HOST`).default("localhost").argParser(nonEmpty),
    new Option(`--${side}-port <port>`, `${role} port`).env(`${env}_PORT`).default(5432).argParser(port),
    side === "to"
      ? new Option("--to-user <user>", "target user (the migration user: never created or altered by the globals)")
          .env(`${env}_USER`)
          .default("postgres")
          .argParser(nonEmpty)
      : new Option("--from-user <user>", "source user").env(`${env}_USER`).default("postgres").argParser(nonEmpty),
    new Option(
      `--${side}-pass <password>`,
      `${role} password (visible in the process list: use ${env}_PASS or --${side}-pass-file); without one, PGPASSWORD, then ~/.pgpass (PGPASSFILE), then the demo's "${DEMO_PASSWORDS[side]}"`,
    ).env(`${env}_PASS`),
    new Option(`--${side}-pass-file <file>`, `file whose first line is the ${role} password`).env(`${env}_PASS_FILE`),
    side === "to"
      ? new Option("--to-db <db>", "target database used for settings, globals and CREATE DATABASE")
          .default("postgres")
          .argParser(nonEmpty)
      : new Option("--from-db <db>", "source database used for discovery").default("postgres").argParser(nonEmpty),
    new Option(`--${side}-sslmode <mode>`, `TLS to the ${role}, as libpq's sslmode (default prefer)`)
      .choices(SSL_MODES)
      .env(`${env}_SSLMODE`),
    new Option(`--${side}-sslrootcert <file>`, `CA certificate(s) that verify the ${role}'s server certificate`).env(
      `${env}_SSLROOTCERT`,
    ),
    new Option(`--${side}-sslcert <file>`, `client certificate for the ${role} (with --${side}-sslkey)`).env(
      `${env}_SSLCERT`,
    ),
    new Option(`--${side}-sslkey <file>`, `client key for the ${role}`).env(`${env}_SSLKEY`),
  ];
}

/**
 * A server's spec from its flags. The password, as a libpq user expects: --X-pass-file, --X-pass or PGMIGRATE_X_PASS;
 * else PGPASSWORD; else the password file's entry for this server, user and database; else the demo's default.
 * Where it came from is kept, so that a refused login names it.
 */
async function serverSpec(side: Side, o: RawOptions, program: Command): Promise<ServerSpec> {
  const f = (k: keyof ServerFlags) => (o as unknown as Record<string, unknown>)[`${side}${k}`] as string | undefined;
  const passFile = f("PassFile");
  const passSource = program.getOptionValueSource(`${side}Pass`);
  if (passFile && passSource === "cli") {
    throw new ConfigError(
      `--${side}-pass and --${side}-pass-file both give the ${ROLE[side]} password: keep one (the file)`,
      `--${side}-pass`,
    );
  }
  const spec: ServerSpec = {
    role: ROLE[side],
    host: f("Host")!,
    port: Number(f("Port")),
    user: f("User")!,
    password: undefined,
  };
  if (passFile) {
    spec.password = readSecretFile(passFile, `--${side}-pass-file`);
    spec.passwordFrom =
      program.getOptionValueSource(`${side}PassFile`) === "env" ? `${ENV[side]}_PASS_FILE` : `--${side}-pass-file`;
  } else if (f("Pass") !== undefined) {
    spec.password = f("Pass");
    spec.passwordFrom = passSource === "env" ? `${ENV[side]}_PASS` : `--${side}-pass`;
  } else {
    const found = await libpqPassword({
      host: spec.host,
      port: spec.port,
      database: side === "from" ? o.fromDb : o.toDb,
      user: spec.user,
    });
    spec.password = found?.password ?? DEMO_PASSWORDS[side];
    spec.passwordFrom =
      found?.from ?? `the demo's default "${DEMO_PASSWORDS[side]}" (none given, no PGPASSWORD, no ~/.pgpass entry)`;
  }
  for (const k of ["sslmode", "sslrootcert", "sslcert", "sslkey"] as const) {
    const v = f(`Ssl${k.slice(3)}` as keyof ServerFlags);
    if (v !== undefined) spec[k] = k === "sslmode" ? v : resolve(v);
  }
  if ((spec.sslcert === undefined) !== (spec.sslkey === undefined)) {
    throw new ConfigError(`--${side}-sslcert and --${side}-sslkey go together`, `--${side}-sslcert`);
  }
  return spec;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

function tablespaceLocations(values: string[]): Map<string, string> {
  const map = new Map<string, string>();
  for (const v of values) {
    const at = v.indexOf("=");
    if (at <= 0 || at === v.length - 1)
      throw new ConfigError(`--tablespace-location wants NAME=PATH, got ${JSON.stringify(v)}`, "--tablespace-location");
    const path = v.slice(at + 1);
    if (!path.startsWith("/"))
      throw new ConfigError(
        `--tablespace-location ${JSON.stringify(v)}: the path must be absolute (it is on the target host)`,
        "--tablespace-location",
      );
    map.set(v.slice(0, at), path);
  }
  return map;
}

function withOptions(program: Command, options: Option[]): Command {
  for (const o of options) program.addOption(o);
  return program;
}

/** The target's flags, shared by the migration and by revert-settings. */
function targetOptions(): Option[] {
  return serverOptions("to");
}

export function buildRevertProgram(): Command {
  const program = new Command("pg-migrate revert-settings").description(
    "Put back the target settings a run changed for fast-restore, from the run records under ~/.pg-migrate (and the KV with --nats-url). For the day a run could not do it itself.",
  );
  withOptions(program, targetOptions());
  program.addOption(
    new Option("--nats-url <url>", "also look for run records in this NATS server's KV").env("PGMIGRATE_NATS_URL"),
  );
  return withOptions(program, natsAuthOptions())
    .showHelpAfterError("(pg-migrate revert-settings --help lists the options)")
    .exitOverride()
    .configureOutput({ writeErr: (x) => process.stderr.write(x) });
}

export function buildProgram(): Command {
  const program = new Command("pg-migrate")
    .description(
      "Move every database and the roles of one PostgreSQL server to another, verified row for row, through NATS JetStream workers.",
    )
    .version(version(), "-V, --version", "print pg-migrate's version");
  withOptions(program, [...serverOptions("from"), ...targetOptions()]);
  program
    .addOption(
      new Option(
        "-j, --jobs <n>",
        "pg_dump/pg_restore -j for one database (default: this machine's cores, 2 to 8)",
      ).argParser(positiveInt),
    )
    .addOption(
      new Option(
        "-m, --max-parallel <n>",
        "databases restoring at once, with as many dumping ahead (default: half this machine's cores, 2 to 8)",
      ).argParser(positiveInt),
    )
    .addOption(
      new Option("--dump-root <dir>", "dump volume shared by the workers (relative to $HOME)")
        .default("pg_dumps")
        .env("PGMIGRATE_DUMP_ROOT"),
    )
    .addOption(
      new Option(
        "--via <path>",
        "how the data moves: volume (pg_dump -Fd into the dump root, pg_restore from it), stream (table slices COPYed from source to target under one snapshot per database; nothing shared but NATS), or auto: a database that is big and a 1/-m share of the cluster streams, the rest go through the volume",
      )
        .choices(VIAS)
        .default("auto")
        .env("PGMIGRATE_VIA"),
    )
    .addOption(
      new Option(
        "--migrate-globals [bool]",
        "migrate roles and tablespaces (--migrate-globals=false or --no-migrate-globals to skip)",
      )
        .default(true)
        .argParser(bool),
    )
    .addOption(new Option("--no-migrate-globals", "do not migrate roles and tablespaces"))
    .addOption(
      new Option(
        "--verify <mode>",
        "count: every table's exact row count on both sides; checksum: also a hash of every table's content, the source's in the dump's snapshot",
      )
        .choices(["count", "checksum"])
        .default("count"),
    )
    .addOption(
      new Option(
        "--tablespace-location <name=path>",
        "create this source tablespace at this path on the target (repeatable; two servers on one host cannot share a path)",
      )
        .argParser(collect)
        .default([]),
    )
    .addOption(
      new Option("--no-tablespaces", "create no tablespace: everything goes to the target's default tablespace"),
    )
    .addOption(
      new Option(
        "--include-db <pattern>",
        "migrate only the databases matching this name pattern (* and ?; repeatable)",
      )
        .argParser(collect)
        .default([]),
    )
    .addOption(
      new Option("--exclude-db <pattern>", "leave out the databases matching this name pattern (* and ?; repeatable)")
        .argParser(collect)
        .default([]),
    )
    .addOption(
      new Option(
        "--no-owner",
        "give every restored object to the target user instead of its owner on the source (pg_restore --no-owner): for a target user that may not act as those owners, e.g. when a superuser owns objects on the source",
      ),
    )
    .addOption(
      new Option(
        "--no-role-passwords",
        "create the roles without their passwords, for sources that refuse to read pg_authid (managed services); the report lists them",
      ),
    )
    .addOption(
      new Option(
        "--nats-url <url>",
        "NATS server(s) of a distributed run (absent: embedded mode, a local nats-server and local workers)",
      ).env("PGMIGRATE_NATS_URL"),
    );
  withOptions(program, natsAuthOptions());
  return program
    .addOption(
      new Option("--workers <n>", "local workers in embedded mode (default: --max-parallel)").argParser(positiveInt),
    )
    .addOption(
      new Option(
        "--fast-restore <mode>",
        "target settings during the run: safe, full (also fsync and full_page_writes off) or off",
      )
        .choices(FAST_RESTORE_MODES)
        .default("safe"),
    )
    .addOption(
      new Option(
        "--compress <how>",
        "pg_dump --compress for the dumps: auto (none on a local volume, the cheapest method on a network one), a gzip level 0-9, or with pg_dump 16+ none|gzip|lz4|zstd[:level]",
      ).default("auto"),
    )
    .addOption(
      new Option(
        "--pg-bin <dir>",
        "folder of pg_dump, pg_restore, pg_dumpall and psql (default: the newest installed, the highest /usr/lib/postgresql/N/bin or PATH's)",
      ).env("PGMIGRATE_PG_BIN"),
    )
    .addOption(new Option("--keep-dumps", "keep the dumps after a fully verified run").default(false))
    .addOption(
      new Option(
        "--restart",
        "start a new run instead of resuming an unfinished one, after dropping the databases the old run created",
      ).default(false),
    )
    .addOption(new Option("-y, --yes", "confirm what --restart drops without asking").default(false))
    .addOption(
      new Option("--dry-run", "print what a run would do and change nothing (the same as pg-migrate plan)").default(
        false,
      ),
    )
    .addOption(
      new Option(
        "--wait <seconds>",
        "keep trying the source, the target and NATS this long before giving up (servers starting alongside, as in a compose stack); 0: no waiting",
      )
        .default(0)
        .env("PGMIGRATE_WAIT")
        .argParser(nonNegativeInt),
    )
    .addOption(
      new Option("--worker-wait <seconds>", "how long to wait for the first worker").default(60).argParser(positiveInt),
    )
    .addOption(
      new Option("--ack-wait <seconds>", "seconds a silent worker keeps a job before it is redelivered")
        .default(DEFAULT_ACK_WAIT_MS / 1000)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--max-deliver <n>", "deliveries of a job before its database fails")
        .default(DEFAULT_MAX_DELIVER)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--retry-delay <seconds>", "delay before a failed job is tried again")
        .default(5)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--nats-replicas <n>", "replicas of the streams and buckets (3 on a NATS cluster)")
        .default(1)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--report <path>", "also write the JSON report here (it is always under ~/.pg-migrate/reports)"),
    )
    .addOption(
      new Option(
        "--follow",
        "online migration: copy every database under its logical replication slot's snapshot, then keep the target current with a subscription until `pg-migrate cutover` (or `pg-migrate abort`); the source needs wal_level=logical",
      ).default(false),
    )
    .addOption(
      new Option(
        "--replica-identity-full",
        "--follow: set REPLICA IDENTITY FULL on the source tables that have neither a primary key nor a replica identity (else such tables are refused by name)",
      ).default(false),
    )
    .addOption(
      new Option(
        "--follow-source <host:port>",
        "--follow: the address the target server reaches the source at (default: --from-host and --from-port)",
      ),
    )
    .addOption(
      new Option(
        "--log-level <level>",
        "also print the run's log lines on stderr from this level (JSON; one readable line each on a terminal, where it also turns the progress bars off)",
      ).choices(["debug", "info", "warn", "error"]),
    )
    .addHelpText(
      "after",
      "\nCommands:\n  pg-migrate --version                                   the version\n  pg-migrate worker --nats-url <url> --dump-root <dir>   run a worker (see pg-migrate worker --help)\n  pg-migrate plan [flags]                                what a run with these flags would do; changes nothing\n  pg-migrate status [run] / pg-migrate watch [run]       a run's databases and live workers (--json)\n  pg-migrate revert-settings --to-host … --to-port …     put the target's saved settings back by hand\n  pg-migrate cutover [server flags]                      end an online migration (--follow): stop writes, catch up, verify, switch\n  pg-migrate abort [server flags]                        drop what an online migration made on both servers\n\nPasswords: PGMIGRATE_FROM_PASS and PGMIGRATE_TO_PASS, or --from-pass-file and --to-pass-file, keep them off the command line.",
    )
    .showHelpAfterError("(pg-migrate --help lists the options)")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
}

export async function toConfig(program: Command): Promise<MigrateConfig> {
  const o = program.opts<RawOptions>();
  if (!COMPRESS_PATTERN.test(o.compress))
    throw new ConfigError(
      `--compress must be auto, a gzip level 0-9, or none|gzip|lz4|zstd[:level], got ${JSON.stringify(o.compress)}`,
      "--compress",
    );
  const cores = defaultParallelism(availableParallelism());
  if (o.follow && o.via === "volume")
    throw new ConfigError(
      "--follow streams every database under its replication slot's snapshot: it cannot go with --via volume",
      "--via",
    );
  if (!o.follow && (o.replicaIdentityFull || o.followSource !== undefined))
    throw new ConfigError(
      `${o.replicaIdentityFull ? "--replica-identity-full" : "--follow-source"} only means something with --follow`,
      o.replicaIdentityFull ? "--replica-identity-full" : "--follow-source",
    );
  return Object.freeze({
    source: await serverSpec("from", o, program),
    sourceDb: o.fromDb,
    target: await serverSpec("to", o, program),
    targetDb: o.toDb,
    jobs: o.jobs ?? cores.jobs,
    maxParallel: o.maxParallel ?? cores.maxParallel,
    parallelismGiven: { jobs: o.jobs !== undefined, maxParallel: o.maxParallel !== undefined },
    dumpRoot: resolveDumpRoot(o.dumpRoot),
    via: o.follow ? "stream" : o.via,
    migrateGlobals: o.migrateGlobals,
    rolePasswords: o.rolePasswords,
    verify: o.verify,
    noTablespaces: !o.tablespaces,
    tablespaceLocations: tablespaceLocations(o.tablespaceLocation),
    includeDb: o.includeDb,
    excludeDb: o.excludeDb,
    noOwner: !o.owner,
    natsUrl: o.natsUrl,
    // Embedded mode talks to its own plain loopback broker: the user's NATS settings are not read.
    natsAuth: o.natsUrl ? natsAuthFrom(o) : {},
    workers: o.workers ?? o.maxParallel ?? cores.maxParallel,
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
    follow: o.follow,
    replicaIdentityFull: o.replicaIdentityFull,
    followSource: o.followSource === undefined ? undefined : hostPort(o.followSource, "--follow-source"),
  });
}

/** HOST:PORT of a flag. */
function hostPort(value: string, flag: string): { host: string; port: number } {
  const m = /^(.+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535)
    throw new ConfigError(`${flag} wants HOST:PORT, got ${JSON.stringify(value)}`, flag);
  return { host: m[1]!, port };
}

/** The commands besides the migration itself (worker is dispatched before this module loads). */
const COMMANDS = ["worker", "plan", "status", "watch", "revert-settings", "cutover", "abort"] as const;

/** A first word that is no flag and no command: a mistyped command (commander would say "too many arguments"). */
function unknownCommand(word: string): string {
  const near = COMMANDS.map((c) => ({ c, d: editDistance(word, c) })).sort((a, b) => a.d - b.d)[0]!;
  const hint = near.d <= Math.max(2, Math.floor(near.c.length / 3)) ? ` (did you mean "${near.c}"?)` : "";
  return `unknown command ${JSON.stringify(word)}${hint}; the commands are ${COMMANDS.join(", ")} (pg-migrate --help)`;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++)
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}

export async function main(argv: string[]): Promise<number> {
  const out = new Output();
  if (argv[0] === "revert-settings") return revertMain(argv.slice(1), out);
  if (argv[0] === "status" || argv[0] === "watch") return statusMain(argv[0], argv.slice(1), out);
  if (argv[0] === "cutover" || argv[0] === "abort") return endMain(argv[0], argv.slice(1), out);
  if (argv[0] === "--version" || argv[0] === "-V") {
    process.stdout.write(`pg-migrate ${version()}\n`);
    return EXIT.ok;
  }
  if (argv[0] !== undefined && argv[0] !== "plan" && !argv[0].startsWith("-")) {
    process.stderr.write(`pg-migrate: error: ${unknownCommand(argv[0])}\n`);
    return EXIT.usage;
  }
  const planOnly = argv[0] === "plan";
  const program = buildProgram();
  const parsed = parseArgs(program, planOnly ? argv.slice(1) : argv);
  if (parsed !== undefined) return parsed;
  // plan reads only: Ctrl-C just ends it (the shell reports 130).
  if (planOnly || program.opts<RawOptions>().dryRun) {
    try {
      const cfg = await toConfig(program);
      warnAboutArgv(program, out);
      warnAboutDefaults(cfg, out);
      return await plan(cfg, out);
    } catch (err) {
      return report(err, out);
    }
  }
  const abort = new AbortController();
  const left = new LeftBehind();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      out.line(
        `${signal} received: stopping the workers, reverting the target, saving the state (again to force quit)`,
      );
      abort.abort();
    } else {
      // Forced out before the run could finish putting things back: say what is left, and how to mend it.
      out.stop();
      out.line(left.line());
      process.exit(EXIT.interrupted);
    }
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const cfg = await toConfig(program);
    if (cfg.logLevel) out.plain();
    warnAboutArgv(program, out);
    warnAboutDefaults(cfg, out);
    return await migrate(cfg, out, abort.signal, left);
  } catch (err) {
    return report(err, out);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** Secrets given as flags are readable by every user of the host (ps, /proc): say so, once each. */
function warnAboutArgv(program: Command, out: Output): void {
  for (const side of ["from", "to"] as const) {
    if (program.getOptionValueSource(`${side}Pass`) === "cli") {
      out.warn(
        `--${side}-pass puts the password in the process list; ${ENV[side]}_PASS or --${side}-pass-file keeps it out`,
      );
    }
  }
  const url = program.opts<RawOptions>().natsUrl;
  if (url && program.getOptionValueSource("natsUrl") === "cli" && withoutCredentials(url) !== url) {
    out.warn(
      "--nats-url holds credentials, which puts them in the process list; --nats-user with PGMIGRATE_NATS_PASS (or PGMIGRATE_NATS_URL) keeps them out",
    );
  }
}

/** A password that is only the demo's default is tried, but never silently. */
function warnAboutDefaults(cfg: MigrateConfig, out: Output): void {
  for (const [side, spec] of [
    ["from", cfg.source],
    ["to", cfg.target],
  ] as const) {
    if (spec.passwordFrom?.startsWith("the demo's default")) {
      out.warn(
        `no ${spec.role} password given, none in PGPASSWORD or ~/.pgpass: trying the demo's "${DEMO_PASSWORDS[side]}" (set ${ENV[side]}_PASS, --${side}-pass-file or a ~/.pgpass entry)`,
      );
    }
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
    .addOption(
      new Option("--nats-url <url>", "read the run from this NATS server's KV (a run of another host)").env(
        "PGMIGRATE_NATS_URL",
      ),
    );
  withOptions(program, natsAuthOptions())
    .addOption(new Option("--json", "JSON instead of tables (watch: one line per change)").default(false))
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeErr: (x) => process.stderr.write(x) });
  const parsed = parseArgs(program, argv);
  if (parsed !== undefined) return parsed;
  const o = program.opts<{ natsUrl?: string; json: boolean } & NatsAuthFlags>();
  try {
    return await status(
      {
        runId: program.args[0],
        natsUrl: o.natsUrl,
        natsAuth: natsAuthFrom(o),
        json: o.json,
        watch: command === "watch",
      },
      out,
    );
  } catch (err) {
    return report(err, out);
  }
}

/** `pg-migrate cutover` and `pg-migrate abort`: the end of an online migration, with the run's server flags. */
async function endMain(command: "cutover" | "abort", argv: string[], out: Output): Promise<number> {
  const program = new Command(`pg-migrate ${command}`).description(
    command === "cutover"
      ? "End an online migration (--follow) for the whole cluster: stop the writes on the source, wait until the target has applied everything, copy the sequences, verify every table's count, drop the subscriptions, slots, publications and the replication role, and report how long writes were blocked."
      : "Give up an online migration (--follow): drop its subscriptions, slots, publications and replication role, and make the source writable again if a cutover had stopped its writes. The copied databases stay on the target.",
  );
  withOptions(program, [...serverOptions("from"), ...targetOptions()]);
  if (command === "cutover")
    program
      .addOption(
        new Option(
          "--writes-stopped",
          "the applications are stopped already: do not make the source's databases read-only nor end their sessions",
        ).default(false),
      )
      .addOption(
        new Option("--timeout <seconds>", "how long the target may take to catch up before the cutover stops")
          .default(300)
          .argParser(positiveInt),
      )
      .addOption(new Option("--lag", "only print each database's lag now; change nothing").default(false));
  program
    .showHelpAfterError(`(pg-migrate ${command} --help lists the options)`)
    .exitOverride()
    .configureOutput({ writeErr: (x) => process.stderr.write(x) });
  const parsed = parseArgs(program, argv);
  if (parsed !== undefined) return parsed;
  const o = program.opts<RawOptions & { writesStopped: boolean; timeout: number; lag: boolean }>();
  const abort = new AbortController();
  const onSignal = () => {
    out.line("interrupted: stopping the cutover where it is; run it again to finish it (or pg-migrate abort)");
    abort.abort();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const servers = {
      source: await serverSpec("from", o, program),
      sourceDb: o.fromDb,
      target: await serverSpec("to", o, program),
      targetDb: o.toDb,
    };
    warnAboutArgv(program, out);
    return command === "cutover"
      ? await cutover(
          servers,
          { writesStopped: o.writesStopped, timeoutMs: o.timeout * 1000, lagOnly: o.lag },
          out,
          abort.signal,
        )
      : await abortRun(servers, out);
  } catch (err) {
    if (err instanceof InterruptedError) {
      out.line(`${command} interrupted: run it again to finish it`);
      return EXIT.interrupted;
    }
    return report(err, out);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

async function revertMain(argv: string[], out: Output): Promise<number> {
  const program = buildRevertProgram();
  const parsed = parseArgs(program, argv);
  if (parsed !== undefined) return parsed;
  const o = program.opts<RawOptions>();
  try {
    return await revertByHand(
      await serverSpec("to", o, program),
      o.toDb,
      o.natsUrl ? { url: o.natsUrl, auth: natsAuthFrom(o) } : undefined,
      out,
    );
  } catch (err) {
    return report(err, out);
  }
}

/** Parses argv; a number is the exit code when commander has answered already (--help, a usage error). */
function parseArgs(program: Command, argv: string[]): number | undefined {
  try {
    program.parse(argv, { from: "user" });
    return undefined;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    throw err;
  }
}

/** From error to exit code, in one place: each is said as one line, its message. Anything else exits 1. */
const EXIT_FOR: [abstract new (...args: never[]) => Error, number][] = [
  [ConfigError, EXIT.usage],
  [PreflightError, EXIT.preflight],
  [ConnectError, EXIT.preflight],
  [NatsConnectError, EXIT.preflight],
  [ToolError, EXIT.failed],
];

function report(err: unknown, out: Output): number {
  if (err instanceof InterruptedError) {
    out.line("interrupted before the migration started; run the same command again to continue");
    return EXIT.interrupted;
  }
  process.stderr.write(`pg-migrate: error: ${errorMessage(err)}\n`);
  const known = EXIT_FOR.find(([type]) => err instanceof type);
  if (!known && process.env.PGMIGRATE_DEBUG) console.error(err);
  return known?.[1] ?? EXIT.failed;
}
