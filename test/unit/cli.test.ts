import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { buildProgram, toConfig } from "../../coordinator/cli.js";
import { publicOptions } from "../../coordinator/config.js";
import { defaultParallelism } from "../../coordinator/parallelism.js";
import { natsConnectOptions, withoutCredentials } from "../../shared/nats.js";

async function parse(args: string[], env: Record<string, string> = {}) {
  const saved = { ...process.env };
  // Only this test's PGMIGRATE_* variables, whatever the shell running the tests has set.
  for (const name of Object.keys(process.env)) if (name.startsWith("PGMIGRATE_")) delete process.env[name];
  Object.assign(process.env, { HOME: "/home/u" }, env);
  try {
    const p = buildProgram();
    p.parse(args, { from: "user" });
    return await toConfig(p);
  } finally {
    process.env = saved;
  }
}

test("defaults are the original pg-migrate's, with -j and -m from the cores", async () => {
  const c = await parse([]);
  assert.deepEqual(
    [
      c.source.host,
      c.source.port,
      c.source.user,
      c.source.password,
      c.sourceDb,
      c.target.host,
      c.target.port,
      c.target.user,
      c.target.password,
      c.targetDb,
    ],
    ["localhost", 5432, "postgres", "oldpass", "postgres", "localhost", 5432, "postgres", "newpass", "postgres"],
  );
  assert.deepEqual({ jobs: c.jobs, maxParallel: c.maxParallel }, defaultParallelism(availableParallelism()));
  assert.deepEqual(c.parallelismGiven, { jobs: false, maxParallel: false });
  assert.equal(c.workers, c.maxParallel);
  assert.equal(c.dumpRoot, "/home/u/pg_dumps");
  assert.equal(c.migrateGlobals, true);
  assert.equal(c.natsUrl, undefined);
  assert.ok(Object.isFrozen(c));
});

test("--migrate-globals=false and --no-migrate-globals both turn globals off", async () => {
  assert.equal((await parse(["--migrate-globals=false"])).migrateGlobals, false);
  assert.equal((await parse(["--no-migrate-globals"])).migrateGlobals, false);
  assert.equal((await parse(["--migrate-globals", "true"])).migrateGlobals, true);
});

test("passwords come from the environment unless a flag gives them", async () => {
  const c = await parse([], { PGMIGRATE_FROM_PASS: "env-src", PGMIGRATE_TO_PASS: "env-tgt" });
  assert.equal(c.source.password, "env-src");
  assert.equal(c.target.password, "env-tgt");
  assert.equal((await parse(["--from-pass", "flag"], { PGMIGRATE_FROM_PASS: "env-src" })).source.password, "flag");
});

test("absolute dump roots stay; the embedded worker count follows --max-parallel", async () => {
  const c = await parse(["--dump-root", "/mnt/dumps", "-m", "3"]);
  assert.equal(c.dumpRoot, "/mnt/dumps");
  assert.equal(c.workers, 3);
});

test("a password file wins over the environment; the file and the flag together are refused by name", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pgm-cli-"));
  try {
    const file = join(dir, "src.pw");
    writeFileSync(file, "from-file\nsecond line ignored\n", { mode: 0o600 });
    assert.equal(
      (await parse(["--from-pass-file", file], { PGMIGRATE_FROM_PASS: "env-src" })).source.password,
      "from-file",
    );
    assert.equal((await parse([], { PGMIGRATE_TO_PASS_FILE: file })).target.password, "from-file");
    await assert.rejects(parse(["--from-pass", "x", "--from-pass-file", file]), /--from-pass and --from-pass-file/);
    await assert.rejects(
      parse(["--to-pass-file", join(dir, "missing")]),
      /cannot read .*missing \(--to-pass-file\): ENOENT/,
    );
    writeFileSync(file, "\n");
    await assert.rejects(parse(["--from-pass-file", file]), /is empty/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("TLS flags reach the server specs with absolute certificate paths; cert and key go together", async () => {
  const c = await parse(["--from-sslmode", "verify-full", "--from-sslrootcert", "ca.crt", "--to-sslmode", "require"], {
    PGMIGRATE_TO_SSLROOTCERT: "/etc/ca.pem",
  });
  assert.equal(c.source.sslmode, "verify-full");
  assert.equal(c.source.sslrootcert, join(process.cwd(), "ca.crt"));
  assert.deepEqual([c.target.sslmode, c.target.sslrootcert], ["require", "/etc/ca.pem"]);
  await assert.rejects(parse(["--from-sslcert", "/c.crt"]), /--from-sslcert and --from-sslkey go together/);
});

test("NATS auth: the password only from the environment or a file, and never in what is stored", async () => {
  const c = await parse(["--nats-url", "nats://broker:4222", "--nats-user", "mig"], {
    PGMIGRATE_NATS_PASS: "nats-secret",
  });
  assert.deepEqual([c.natsAuth.user, c.natsAuth.pass], ["mig", "nats-secret"]);
  assert.doesNotMatch(JSON.stringify(publicOptions(c)), /nats-secret/);
  assert.equal(publicOptions(c).natsAuth, "user mig");
  await assert.rejects(parse(["--nats-url", "nats://b"], { PGMIGRATE_NATS_PASS: "p" }), /no user: add --nats-user/);
  await assert.rejects(parse(["--nats-url", "nats://b", "--nats-ca", "/nonexistent/ca.pem"]), /--nats-ca/);
});

test("--wait is off by default and takes seconds, also from PGMIGRATE_WAIT", async () => {
  assert.equal((await parse([])).waitMs, 0);
  assert.equal((await parse(["--wait", "30"])).waitMs, 30_000);
  assert.equal((await parse([], { PGMIGRATE_WAIT: "120" })).waitMs, 120_000);
  await assert.rejects(parse(["--wait", "soon"]), /--wait.*whole number of at least 0/);
});

test("NATS URLs: tls:// insists on TLS, credentials in a URL are used (and never shown)", async () => {
  const tls = natsConnectOptions("tls://broker:4222", {});
  assert.deepEqual([tls.servers, tls.tls], [["tls://broker:4222"], {}]);
  assert.equal(natsConnectOptions("nats://broker:4222", {}).tls, undefined);
  const withPass = natsConnectOptions("nats://mig:p%40ss@b1:4222, nats://b2:4222", {});
  assert.deepEqual(
    [withPass.servers, withPass.user, withPass.pass],
    [["nats://b1:4222", "nats://b2:4222"], "mig", "p@ss"],
  );
  assert.equal(natsConnectOptions("nats://s3cret@b1:4222", {}).token, "s3cret");
  // A flag's credentials win over the URL's.
  assert.equal(natsConnectOptions("nats://u:p@b1", { user: "flag-user", pass: "x" }).user, "flag-user");
  assert.equal(withoutCredentials("nats://u:p@b1:4222,u:p@b2:4222,tls://b3"), "nats://b1:4222,b2:4222,tls://b3");
});

test("embedded mode ignores the user's NATS settings", async () => {
  assert.deepEqual(
    (await parse([], { PGMIGRATE_NATS_CA: "/nonexistent/ca.pem", PGMIGRATE_NATS_PASS: "p" })).natsAuth,
    {},
  );
});

test("--include-db and --exclude-db select databases by shell-style patterns and say why each other one is left out", async () => {
  const { selectDatabases } = await import("../../coordinator/discovery.js");
  const all = ["postgres", "shop", "shop_archive", "analytics", "Odd*Name", "a.b"].map((name) => ({ name }));
  const pick = (inc: string[], exc: string[]) => selectDatabases(all, inc, exc);
  assert.deepEqual(
    pick([], []).selected.map((d) => d.name),
    ["shop", "shop_archive", "analytics", "Odd*Name", "a.b"],
  );
  const r = pick(["shop*", "a?b"], ["*_archive"]);
  assert.deepEqual(
    r.selected.map((d) => d.name),
    ["shop", "a.b"],
  );
  assert.deepEqual(r.skipped, [
    { name: "shop_archive", reason: 'excluded by --exclude-db "*_archive"' },
    { name: "analytics", reason: "not matched by --include-db" },
    { name: "Odd*Name", reason: "not matched by --include-db" },
  ]);
  // Only * and ? are special: a dot is a dot.
  assert.deepEqual(
    pick(["a?b"], []).selected.map((d) => d.name),
    ["a.b"],
  );
  assert.deepEqual(
    pick([], ["a.*"]).selected.map((d) => d.name),
    ["shop", "shop_archive", "analytics", "Odd*Name"],
  );
  assert.throws(() => pick(["shpo"], []), /--include-db "shpo" matches no database on the source/);
  assert.deepEqual([...(await parse(["--include-db", "a", "--include-db", "b*"])).includeDb], ["a", "b*"]);
});

test("extensionsMissing names, per database, the extensions the target has not installed", async () => {
  const { extensionsMissing } = await import("../../coordinator/checks.js");
  const used = new Map([
    ["gis", ["plpgsql", "postgis", "citext"]],
    ["plain", ["plpgsql"]],
  ]);
  assert.deepEqual([...extensionsMissing(used, new Set(["plpgsql", "citext"]))], [["gis", ["postgis"]]]);
});

test("--tablespace-location takes NAME=/absolute/path, repeatable", async () => {
  assert.deepEqual(
    [...(await parse(["--tablespace-location", "a=/t/a", "--tablespace-location", "b=/t/b=x"])).tablespaceLocations],
    [
      ["a", "/t/a"],
      ["b", "/t/b=x"],
    ],
  );
  await assert.rejects(parse(["--tablespace-location", "a"]), /--tablespace-location wants NAME=PATH/);
  await assert.rejects(parse(["--tablespace-location", "a=rel/path"]), /must be absolute/);
  assert.equal((await parse(["--no-tablespaces"])).noTablespaces, true);
});
