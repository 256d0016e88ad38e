// CREATE DATABASE as the coordinator issues it and as a retried restore reissues it.
import type { CreateSpec } from "../contracts/messages.js";
import { ident, literal } from "./quote.js";

export function createDatabaseSql(name: string, spec: CreateSpec): string {
  const parts = [
    `CREATE DATABASE ${ident(name)} WITH TEMPLATE template0`,
    `OWNER ${ident(spec.owner)}`,
    `ENCODING ${literal(spec.encoding)}`,
    `LC_COLLATE ${literal(spec.collate)}`,
    `LC_CTYPE ${literal(spec.ctype)}`,
  ];
  if (spec.localeProvider === "icu") {
    parts.push(`LOCALE_PROVIDER icu`, `ICU_LOCALE ${literal(spec.iculocale ?? "und")}`);
  } else if (spec.localeProvider === "builtin") {
    // A 17+ source, so a 17+ target: BUILTIN_LOCALE exists there.
    parts.push(`LOCALE_PROVIDER builtin`, `BUILTIN_LOCALE ${literal(spec.iculocale ?? "C")}`);
  }
  if (spec.tablespace) parts.push(`TABLESPACE ${ident(spec.tablespace)}`);
  return parts.join(" ");
}

/** WITH (FORCE) (PostgreSQL 13 and later) ends sessions a killed restore may have left behind. */
export function dropDatabaseSql(name: string, force = true): string {
  return `DROP DATABASE IF EXISTS ${ident(name)}${force ? " WITH (FORCE)" : ""}`;
}
