// `pg-migrate worker`: pulls dump, restore and verify jobs from JetStream until told to stop.
import { Command, Option } from "commander";
import { customAlphabet } from "nanoid";
import { positiveInt } from "../shared/cli-values.js";
import { errorMessage } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import {
  closeNats,
  connectNats,
  natsAuthFrom,
  natsAuthOptions,
  processTag,
  type NatsAuthFlags,
} from "../shared/nats.js";
import { resolveDumpRoot } from "../shared/paths.js";
import { readSecretFile, sharedKeyFromEnv } from "../shared/secrets.js";
import { resolveTools } from "../shared/tools.js";
import { version } from "../shared/version.js";
import { Worker } from "./main.js";

const program = new Command("pg-migrate worker")
  .description(
    "Run a pg-migrate worker: claims the jobs of a run (dump, restore, verify; schema, slice, post) from NATS JetStream.",
  )
  .version(version(), "-V, --version", "print pg-migrate's version")
  .addOption(
    new Option("--nats-url <url>", "NATS server(s), comma separated").env("PGMIGRATE_NATS_URL").makeOptionMandatory(),
  )
  .addOption(
    new Option("--dump-root <dir>", "shared dump volume (relative to $HOME)")
      .env("PGMIGRATE_DUMP_ROOT")
      .default("pg_dumps"),
  )
  .addOption(
    new Option("--id <name>", "worker name in events and status (default: host and pid)").env("PGMIGRATE_WORKER_ID"),
  )
  .addOption(
    new Option(
      "--pg-bin <dir>",
      "folder of pg_dump/pg_restore (default: the newest installed, the highest /usr/lib/postgresql/N/bin or PATH's)",
    ).env("PGMIGRATE_PG_BIN"),
  )
  .addOption(
    new Option("--retry-delay <seconds>", "delay before a failed job is offered again")
      .argParser(positiveInt)
      .default(5),
  )
  .addOption(
    new Option("--slices <n>", "data slices (--via stream) this worker streams at once")
      .env("PGMIGRATE_WORKER_SLICES")
      .argParser(positiveInt)
      .default(4),
  )
  .addOption(
    new Option("--log-level <level>", "log level on stderr")
      .choices(["debug", "info", "warn", "error"])
      .default("info"),
  );
for (const o of natsAuthOptions()) program.addOption(o);
program
  .addHelpText(
    "after",
    "\nSecrets, all from the environment or files, never flags:\n" +
      "  PGMIGRATE_SECRET / PGMIGRATE_SECRET_FILE     the key the coordinator seals passwords in jobs with\n" +
      "  PGMIGRATE_FROM_PASS / PGMIGRATE_FROM_PASS_FILE, PGMIGRATE_TO_PASS / PGMIGRATE_TO_PASS_FILE\n" +
      "                                               this worker's own passwords, for jobs that carry none",
  )
  .showHelpAfterError("(pg-migrate worker --help lists the options)")
  .exitOverride();

/** PGMIGRATE_<side>_PASS_FILE wins over PGMIGRATE_<side>_PASS, as on the coordinator. */
function ownPassword(side: "FROM" | "TO"): string | undefined {
  const file = process.env[`PGMIGRATE_${side}_PASS_FILE`];
  return file
    ? readSecretFile(file, `PGMIGRATE_${side}_PASS_FILE`)
    : process.env[`PGMIGRATE_${side}_PASS`] || undefined;
}

async function main(argv: string[]): Promise<number> {
  try {
    program.parse(argv, { from: "user" });
  } catch (err) {
    return (err as { exitCode?: number }).exitCode === 0 ? 0 : 2;
  }
  const o = program.opts<
    {
      natsUrl: string;
      dumpRoot: string;
      id?: string;
      pgBin?: string;
      retryDelay: number;
      slices: number;
      logLevel: string;
    } & NatsAuthFlags
  >();
  const id =
    (o.id ?? processTag("worker")).replace(/[^A-Za-z0-9_-]/g, "_") +
    `-${customAlphabet("abcdefghijklmnopqrstuvwxyz0123456789", 4)()}`;
  const log = createLogger({ level: o.logLevel, stderrLevel: o.logLevel, base: { worker: id } });
  let nc: Awaited<ReturnType<typeof connectNats>> | undefined;
  try {
    const tools = await resolveTools(o.pgBin);
    nc = await connectNats(o.natsUrl, id, natsAuthFrom(o));
    const worker = new Worker(
      nc,
      {
        id,
        dumpRoot: resolveDumpRoot(o.dumpRoot),
        tools,
        key: sharedKeyFromEnv(),
        ownPasswords: { source: ownPassword("FROM"), target: ownPassword("TO") },
      },
      { retryDelayMs: o.retryDelay * 1000, slices: o.slices },
      log,
    );
    let stopping = false;
    const shutdown = async (signal: string) => {
      if (stopping) return; // already on its way out, within the forced-exit deadline below
      stopping = true;
      log.info({ signal }, "stopping: no new jobs, running tools stopped, their jobs handed back");
      const forced = setTimeout(() => process.exit(1), 9000);
      forced.unref();
      await worker.stop();
      await nc?.drain().catch(() => undefined);
      process.exit(0);
    };
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
    process.on("SIGINT", () => void shutdown("SIGINT"));
    await worker.run();
    return 0;
  } catch (err) {
    process.stderr.write(`pg-migrate worker: ${errorMessage(err)}\n`);
    // An open NATS connection would keep the process alive after its error line.
    await closeNats(nc);
    return 2;
  }
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything is closed by now; a handle a library still holds must not keep a finished worker alive.
setTimeout(() => process.exit(code), 1_000).unref();
