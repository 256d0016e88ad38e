// A throwaway certificate authority made with openssl: a CA, and leaf certificates it signs for servers and
// clients, each naming the addresses it is valid for.
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";

export interface Leaf {
  cert: string;
  key: string;
  /** PEM contents, for servers that take them inline. */
  certPem: string;
  keyPem: string;
}

export interface TestCa {
  caFile: string;
  caPem: string;
  leaf(name: string, altNames: string[]): Promise<Leaf>;
}

const KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export async function makeCa(dir: string): Promise<TestCa> {
  const caFile = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  await execa("openssl", [
    "req",
    "-x509",
    ...KEY,
    "-keyout",
    caKey,
    "-out",
    caFile,
    "-days",
    "2",
    "-subj",
    "/CN=pg-migrate test CA",
  ]);
  return {
    caFile,
    caPem: await readFile(caFile, "utf8"),
    async leaf(name, altNames) {
      const [cert, key, csr, ext] = ["crt", "key", "csr", "ext"].map((x) => join(dir, `${name}.${x}`)) as [
        string,
        string,
        string,
        string,
      ];
      await execa("openssl", ["req", ...KEY, "-keyout", key, "-out", csr, "-subj", `/CN=${name}`]);
      await writeFile(ext, `subjectAltName=${altNames.join(",")}\nextendedKeyUsage=serverAuth,clientAuth\n`);
      await execa("openssl", [
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        caFile,
        "-CAkey",
        caKey,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
      ]);
      return { cert, key, certPem: await readFile(cert, "utf8"), keyPem: await readFile(key, "utf8") };
    },
  };
}
