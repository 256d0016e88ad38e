// pg-migrate's version, from its package.json (dist/shared/version.js is two folders below it).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL("../../package.json", import.meta.url)), "utf8")) as {
    version: string;
  };
  return pkg.version;
}
