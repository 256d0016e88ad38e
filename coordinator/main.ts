// The coordinator's entry point (bin/pg-migrate.js loads it).
import { main } from "./cli.js";

// A reader that went away (`pg-migrate --help | head -1`) is no error of ours: end quietly, as other tools do.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw err;
  });
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
// Everything the run started has been stopped and every connection closed by now; should a library still hold a
// handle open (a reconnect timer, say), it must not keep a finished process alive.
setTimeout(() => process.exit(code), 1_000).unref();
