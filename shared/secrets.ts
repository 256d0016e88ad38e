// Passwords cross NATS only sealed with AES-256-GCM under a key the coordinator and the workers share.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import type { Sealed } from "./contracts/messages.js";
import { ConfigError } from "./errors.js";
import { readFlagFile } from "./flag-file.js";

export const SECRET_ENV = "PGMIGRATE_SECRET";
export const SECRET_FILE_ENV = "PGMIGRATE_SECRET_FILE";

/** A 32-byte key from any passphrase or generated value (SHA-256 of it), so users may give any string. */
export type SharedKey = Buffer;

export function keyFrom(secret: string): SharedKey {
  return createHash("sha256").update(secret, "utf8").digest();
}

export function generateSecret(): string {
  return randomBytes(32).toString("base64url");
}

/** The shared key from PGMIGRATE_SECRET or the file PGMIGRATE_SECRET_FILE names; undefined when neither is set. */
export function sharedKeyFromEnv(env: NodeJS.ProcessEnv = process.env): SharedKey | undefined {
  const inline = env[SECRET_ENV];
  if (inline) return keyFrom(inline);
  const file = env[SECRET_FILE_ENV];
  if (!file) return undefined;
  return keyFrom(readFlagFile(file, SECRET_FILE_ENV, "the shared key file").trim());
}

/** A password or token kept in a file (first line, as psql's passfile habits suggest); the flag names the file's option. */
export function readSecretFile(file: string, flag: string): string {
  const first = readFlagFile(file, flag).split(/\r?\n/)[0] ?? "";
  if (!first) throw new ConfigError(`${file} (${flag}) is empty: put the secret on its first line`, flag);
  return first;
}

export function seal(key: SharedKey, plain: string): Sealed {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const data = Buffer.concat([cipher.update(plain, "utf8"), cipher.final()]);
  return {
    alg: "aes-256-gcm",
    iv: iv.toString("base64"),
    tag: cipher.getAuthTag().toString("base64"),
    data: data.toString("base64"),
  };
}

/** Throws when the key is not the one the value was sealed with. */
export function unseal(key: SharedKey, sealed: Sealed): string {
  const decipher = createDecipheriv("aes-256-gcm", key, Buffer.from(sealed.iv, "base64"));
  decipher.setAuthTag(Buffer.from(sealed.tag, "base64"));
  return Buffer.concat([decipher.update(Buffer.from(sealed.data, "base64")), decipher.final()]).toString("utf8");
}
