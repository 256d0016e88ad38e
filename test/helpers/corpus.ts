// Loads the public sample databases (Pagila, Chinook, Northwind) kept beside the repo in ../shared/corpus,
// straight from their upstream SQL files. A user's clone has no ../shared: there each loader builds the project's own
// stand-in (demo/samples.ts: the same kinds of objects, generated rows) under the same database name, and
// `sampleData` says which of the two a run used.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { psqlExec, type PgLogin } from "../../demo/cluster.js";
import { sampleSql, type SampleKind } from "../../demo/samples.js";

/** The repo root: the nearest dir above this module with a package.json (works from dist/test/helpers and test/helpers). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return process.cwd();
    dir = parent;
  }
}

export const corpusDir: string = process.env.PGMIGRATE_CORPUS_DIR
  ? resolve(process.env.PGMIGRATE_CORPUS_DIR)
  : resolve(repoRoot(), "..", "shared", "corpus");

/** Whether the public corpus is there (PGMIGRATE_CORPUS_DIR, else ../shared/corpus beside the repo). */
export const haveCorpus: boolean = existsSync(join(corpusDir, "pagila-schema.sql"));

/** Which sample data the loaders use, for a test's diagnostics. */
export const sampleData: string = haveCorpus
  ? `the public corpus in ${corpusDir}`
  : `the project's stand-ins (demo/samples.ts): no corpus at ${corpusDir} (PGMIGRATE_CORPUS_DIR names another)`;

function corpusFile(name: string): string {
  const file = join(corpusDir, name);
  if (!existsSync(file))
    throw new Error(`sample database file ${file} is missing (set PGMIGRATE_CORPUS_DIR to the corpus dir)`);
  return file;
}

/** The stand-in for one sample database, created under its usual name. */
async function loadStandIn(c: PgLogin, dbName: string, kind: SampleKind | "chinook-autoincrement"): Promise<string> {
  await psqlExec(c, "postgres", `CREATE DATABASE ${ident(dbName)};`);
  await psqlExec(c, dbName, sampleSql(kind));
  return dbName;
}

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/** Pagila into a new database; its objects are owned by a role named postgres, created here if missing. */
export async function loadPagila(c: PgLogin, dbName = "pagila"): Promise<string> {
  if (!haveCorpus) return loadStandIn(c, dbName, "pagila");
  const schema = corpusFile("pagila-schema.sql");
  const data = corpusFile("pagila-data.sql");
  await psqlExec(
    c,
    "postgres",
    `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'postgres') THEN CREATE ROLE postgres; END IF; END $$;
     CREATE DATABASE ${ident(dbName)};`,
  );
  await psqlExec(c, dbName, { file: schema });
  await psqlExec(c, dbName, { file: data });
  return dbName;
}

const CHINOOK = {
  plain: { file: "Chinook_PostgreSql.sql", db: "chinook" },
  autoincrement: { file: "Chinook_PostgreSql_AutoIncrementPKs.sql", db: "chinook_auto_increment" },
} as const;

/**
 * Chinook; the file drops (IF EXISTS), creates and \c's into its own database, so it runs from `postgres`.
 * Returns that database's name.
 */
export async function loadChinook(c: PgLogin, variant: "plain" | "autoincrement"): Promise<string> {
  const { file, db } = CHINOOK[variant];
  if (!haveCorpus) return loadStandIn(c, db, variant === "plain" ? "chinook" : "chinook-autoincrement");
  await psqlExec(c, "postgres", { file: corpusFile(file) });
  return db;
}

/** Northwind into a new database. */
export async function loadNorthwind(c: PgLogin, dbName = "northwind"): Promise<string> {
  if (!haveCorpus) return loadStandIn(c, dbName, "northwind");
  const file = corpusFile("northwind.sql");
  await psqlExec(c, "postgres", `CREATE DATABASE ${ident(dbName)};`);
  await psqlExec(c, dbName, { file });
  return dbName;
}
