// NATS connections that survive a broker restart, authenticate and encrypt as the broker asks, and fail their
// first connect with a sentence a user can act on.
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { Option } from "commander";
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from "@nats-io/transport-node";
import { ConfigError, errorMessage, NatsConnectError } from "./errors.js";
import { readFlagFile } from "./flag-file.js";
import { readSecretFile } from "./secrets.js";

/** How to prove who we are to the broker and whether to insist on TLS. Secrets come from files or the environment. */
export interface NatsAuth {
  user?: string | undefined;
  pass?: string | undefined;
  token?: string | undefined;
  /** A NATS credentials file (JWT and NKey seed). */
  creds?: string | undefined;
  /** TLS: the CA that signed the broker's certificate, and this client's certificate and key. */
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  tls?: boolean | undefined;
}

/** The broker options every command with --nats-url takes. Passwords and tokens only from files or the environment. */
export function natsAuthOptions(): Option[] {
  return [
    new Option("--nats-user <user>", "NATS user (with PGMIGRATE_NATS_PASS or --nats-pass-file)").env(
      "PGMIGRATE_NATS_USER",
    ),
    new Option("--nats-pass-file <file>", "file whose first line is the NATS password (or PGMIGRATE_NATS_PASS)").env(
      "PGMIGRATE_NATS_PASS_FILE",
    ),
    new Option("--nats-token-file <file>", "file whose first line is the NATS token (or PGMIGRATE_NATS_TOKEN)").env(
      "PGMIGRATE_NATS_TOKEN_FILE",
    ),
    new Option("--nats-creds <file>", "NATS credentials file (JWT and seed)").env("PGMIGRATE_NATS_CREDS"),
    new Option("--nats-ca <file>", "CA certificate that signed the NATS server's certificate (turns TLS on)").env(
      "PGMIGRATE_NATS_CA",
    ),
    new Option("--nats-cert <file>", "client certificate for NATS TLS (with --nats-key)").env("PGMIGRATE_NATS_CERT"),
    new Option("--nats-key <file>", "client key for NATS TLS").env("PGMIGRATE_NATS_KEY"),
    new Option("--nats-tls", "insist on TLS to NATS even without --nats-ca (the system's CAs verify the server)").env(
      "PGMIGRATE_NATS_TLS",
    ),
  ];
}

export interface NatsAuthFlags {
  natsUser?: string;
  natsPassFile?: string;
  natsTokenFile?: string;
  natsCreds?: string;
  natsCa?: string;
  natsCert?: string;
  natsKey?: string;
  natsTls?: boolean | string;
}

/** Parsed once: the flags above plus PGMIGRATE_NATS_PASS / PGMIGRATE_NATS_TOKEN, files checked now. */
export function natsAuthFrom(o: NatsAuthFlags, env: NodeJS.ProcessEnv = process.env): NatsAuth {
  const pass = o.natsPassFile
    ? readSecretFile(o.natsPassFile, "--nats-pass-file")
    : env.PGMIGRATE_NATS_PASS || undefined;
  const token = o.natsTokenFile
    ? readSecretFile(o.natsTokenFile, "--nats-token-file")
    : env.PGMIGRATE_NATS_TOKEN || undefined;
  if (pass && !o.natsUser)
    throw new ConfigError("a NATS password is set but no user: add --nats-user (PGMIGRATE_NATS_USER)", "--nats-user");
  if ((o.natsCert === undefined) !== (o.natsKey === undefined))
    throw new ConfigError("--nats-cert and --nats-key go together", o.natsCert ? "--nats-key" : "--nats-cert");
  for (const [flag, file] of [
    ["--nats-creds", o.natsCreds],
    ["--nats-ca", o.natsCa],
    ["--nats-cert", o.natsCert],
    ["--nats-key", o.natsKey],
  ] as const) {
    if (file !== undefined) readFlagFile(file, flag);
  }
  const tls = o.natsTls === true || o.natsTls === "true" || o.natsTls === "1";
  return { user: o.natsUser, pass, token, creds: o.natsCreds, ca: o.natsCa, cert: o.natsCert, key: o.natsKey, tls };
}

/** What may be stored or shown of the auth: which means are in use, never the secrets. */
export function describeAuth(a: NatsAuth): string {
  const parts = [
    a.user ? `user ${a.user}` : "",
    a.token ? "token" : "",
    a.creds ? `creds ${a.creds}` : "",
    usesTls(a) ? "TLS" : "",
  ];
  return parts.filter(Boolean).join(", ") || "none";
}

const usesTls = (a: NatsAuth): boolean => Boolean(a.tls || a.ca || a.cert);

/** A broker and how to log in to it. */
export interface NatsEndpoint {
  url: string;
  auth: NatsAuth;
}

/**
 * The servers and the connect options that carry the auth and TLS. A tls:// URL insists on TLS (nats.js itself
 * goes by the options, not the scheme), and user:password@ or token@ in a URL is used when no flag gives
 * credentials (nats.js ignores them there).
 */
export function natsConnectOptions(url: string, a: NatsAuth): Partial<ConnectionOptions> & { servers: string[] } {
  const servers = url
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const auth = { ...a };
  for (const s of servers) {
    if (/^tls:\/\//i.test(s)) auth.tls = true;
    const cred = /^(?:[a-z]+:\/\/)?([^@/]*)@/i.exec(s)?.[1];
    if (cred && !auth.user && !auth.token && !auth.creds) {
      const [user, pass] = cred.split(/:(.*)/s) as [string, string | undefined];
      if (pass !== undefined) Object.assign(auth, { user: decodeURIComponent(user), pass: decodeURIComponent(pass) });
      else auth.token = decodeURIComponent(user);
    }
  }
  return { ...connectionAuth(auth), servers: servers.map((s) => s.replace(/^((?:[a-z]+:\/\/)?)[^@/]*@/i, "$1")) };
}

function connectionAuth(a: NatsAuth): Partial<ConnectionOptions> {
  const opts: Partial<ConnectionOptions> = {};
  if (a.user) {
    opts.user = a.user;
    if (a.pass !== undefined) opts.pass = a.pass;
  }
  if (a.token) opts.token = a.token;
  if (a.creds) opts.authenticator = credsAuthenticator(readFileSync(a.creds));
  if (usesTls(a))
    opts.tls = {
      ...(a.ca ? { caFile: a.ca } : {}),
      ...(a.cert ? { certFile: a.cert } : {}),
      ...(a.key ? { keyFile: a.key } : {}),
    };
  return opts;
}

/** NATS URLs as they may be stored, logged and shown: any user:password@ part removed. */
export function withoutCredentials(urls: string): string {
  return urls
    .split(",")
    .map((u) => u.trim().replace(/^((?:[a-z]+:\/\/)?)[^@/]*@/i, "$1"))
    .join(",");
}

export async function connectNats(url: string, name: string, auth: NatsAuth = {}): Promise<NatsConnection> {
  try {
    return await connect({
      ...natsConnectOptions(url, auth),
      name,
      // A long migration outlives a broker restart: keep trying rather than giving up on the run.
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      timeout: 10_000,
    });
  } catch (err) {
    throw new NatsConnectError(`cannot connect to NATS at ${withoutCredentials(url)}: ${explain(err)}`, { cause: err });
  }
}

function explain(err: unknown): string {
  const msg = errorMessage(err);
  const code = (err as { code?: string }).code ?? (err as { cause?: { code?: string } }).cause?.code ?? "";
  if (/CONNECTION_REFUSED|ECONNREFUSED/i.test(msg))
    return "connection refused (is nats-server running there with -js?)";
  if (/authorization violation|authentication/i.test(msg)) {
    return "the server refused our credentials: set --nats-user with PGMIGRATE_NATS_PASS (or --nats-pass-file), PGMIGRATE_NATS_TOKEN (or --nats-token-file), or --nats-creds";
  }
  if (/SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|self.signed/i.test(code + msg))
    return `the server's TLS certificate is not signed by a CA this host trusts (${msg}): give its CA with --nats-ca`;
  if (/tls.*required|requires tls|client cert/i.test(msg))
    return `the server requires TLS (${msg}): give --nats-ca, and --nats-cert/--nats-key if it checks client certificates`;
  return msg;
}

/** A name for this process in NATS and in worker ids: host and pid. */
export function processTag(prefix: string): string {
  return `${prefix}-${hostname().replace(/[^A-Za-z0-9_-]/g, "_")}-${process.pid}`;
}

/**
 * Drains the connection (what we published reaches the broker), but never waits past boundMs: a broker that is gone
 * would keep a drain, and with it the process, waiting on reconnects. Then the connection is closed for good.
 */
export async function closeNats(nc: NatsConnection | undefined, boundMs = 3_000): Promise<void> {
  if (!nc || nc.isClosed()) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([nc.drain().catch(() => undefined), new Promise((r) => (timer = setTimeout(r, boundMs)))]);
  clearTimeout(timer);
  await nc.close().catch(() => undefined);
}
