import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { driverSsl, tlsEnv } from "../../shared/pg/tls.js";

test("the native tools get libpq's variables for every TLS setting", () => {
  assert.deepEqual(tlsEnv({ sslmode: "verify-full", sslrootcert: "/ca.pem", sslcert: "/c.pem", sslkey: "/k.pem" }), {
    PGSSLMODE: "verify-full",
    PGSSLROOTCERT: "/ca.pem",
    PGSSLCERT: "/c.pem",
    PGSSLKEY: "/k.pem",
  });
  assert.deepEqual(tlsEnv({}), {});
});

test("the driver verifies as libpq does: the CA always, the name only for verify-full, nothing without a CA but for require", () => {
  const dir = mkdtempSync(join(tmpdir(), "pgm-tls-unit-"));
  const saved = process.env.HOME;
  process.env.HOME = dir; // no ~/.postgresql/root.crt
  try {
    const ca = join(dir, "ca.pem");
    writeFileSync(ca, "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n");
    const full = driverSsl({ sslmode: "verify-full", sslrootcert: ca }, "source");
    assert.ok(
      full.ssl &&
        full.ssl.rejectUnauthorized === true &&
        typeof full.ssl.ca === "string" &&
        full.ssl.checkServerIdentity === undefined,
    );
    const caOnly = driverSsl({ sslmode: "verify-ca", sslrootcert: ca }, "source");
    assert.ok(
      caOnly.ssl && caOnly.ssl.rejectUnauthorized === true && typeof caOnly.ssl.checkServerIdentity === "function",
    );
    assert.deepEqual(driverSsl({ sslmode: "require" }, "target"), {
      ssl: { rejectUnauthorized: false },
      fallback: false,
    });
    assert.equal(
      driverSsl({ sslmode: "require", sslrootcert: ca }, "target").ssl &&
        (driverSsl({ sslmode: "require", sslrootcert: ca }, "target").ssl as { rejectUnauthorized: boolean })
          .rejectUnauthorized,
      true,
    );
    assert.deepEqual(driverSsl({}, "source"), { ssl: { rejectUnauthorized: false }, fallback: true });
    assert.deepEqual(driverSsl({ sslmode: "disable" }, "source"), { ssl: false, fallback: false });
    assert.throws(
      () => driverSsl({ sslmode: "verify-full" }, "target"),
      /--to-sslmode verify-full needs the CA .*--to-sslrootcert/,
    );
  } finally {
    process.env.HOME = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});
