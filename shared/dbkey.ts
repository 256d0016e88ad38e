// A database's key: safe in a path, a subject token and a log line, whatever the name holds.
import { createHash } from "node:crypto";

export function dbKey(name: string): string {
  const readable = name
    .normalize("NFKD")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 40);
  const hash = createHash("sha256").update(name, "utf8").digest("hex").slice(0, 10);
  return `${readable || "db"}-${hash}`;
}
