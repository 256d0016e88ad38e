// An extension the source uses and the target cannot create. Both test clusters share one PostgreSQL
// installation, so the extension is made to exist only while the source creates it: its control file is added to
// the installation's extension folder and removed again at once (a private name, gone before the run starts).
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { nanoid } from "nanoid";
import { postgresBinDir, psqlExec, type LocalCluster } from "../../demo/cluster.js";

/** Creates a fresh extension in `db` on the source only; returns its name. */
export async function extensionOnlyOnSource(source: LocalCluster, db: string): Promise<string> {
  const ext = `pgm_test_ext_${nanoid(8)
    .toLowerCase()
    .replace(/[^a-z0-9]/g, "x")}`;
  const dir = join((await execa(join(await postgresBinDir(), "pg_config"), ["--sharedir"])).stdout.trim(), "extension");
  const files = [join(dir, `${ext}.control`), join(dir, `${ext}--1.0.sql`)];
  try {
    await writeFile(files[0]!, "default_version = '1.0'\nrelocatable = true\n");
    await writeFile(files[1]!, `CREATE FUNCTION ${ext}_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n`);
    await psqlExec(source, db, `CREATE EXTENSION ${ext}`);
  } finally {
    for (const f of files) await rm(f, { force: true });
  }
  return ext;
}
