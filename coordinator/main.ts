// The coordinator's entry point (bin/pg-migrate.js loads it).
import { main } from "./cli.js";

process.exitCode = await main(process.argv.slice(2));
