#!/usr/bin/env node
// One command, two roles: `pg-migrate worker …` is a worker, anything else the coordinator.
// The split keeps coordinator/ and worker/ from importing each other.
if (process.argv[2] === "worker") {
  process.argv.splice(2, 1);
  await import("../dist/worker/cli.js");
} else {
  await import("../dist/coordinator/main.js");
}
