// How a Node agent reaches Custody: the address and the TLS files, found as the Python
// client finds them (client/custody_client/settings.py and local_tls.py), and a gRPC
// transport over HTTP/2 with mutual TLS.
//
// TLS material: the options given, else CUSTODY_CA / CUSTODY_CERT / CUSTODY_KEY_FILE, else
// the embedded default's local files in <state dir>/tls/ (ca.pem, client.pem,
// client-key.pem), where the state directory is $CUSTODY_STATE_DIR, else
// $XDG_STATE_HOME/custody, else ~/.local/state/custody. A client certificate given without
// a CA is checked against the local CA when there is one (the server's certificate comes
// from it), else the system's roots. The server requires a client certificate unless it
// runs with `[tls] insecure = true`; then pass `plaintext`.

import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { Custody, KeyAdmin } from "./gen/custody/v1/custody_pb.js";

export const DEFAULT_ADDRESS = "127.0.0.1:50051";
export const DEFAULT_TIMEOUT_MS = 60_000;
export const ENV_SERVER = "CUSTODY_SERVER";
export const ENV_CA = "CUSTODY_CA";
export const ENV_CERT = "CUSTODY_CERT";
export const ENV_KEY_FILE = "CUSTODY_KEY_FILE";
export const ENV_STATE_DIR = "CUSTODY_STATE_DIR";

/** A configuration problem, found before anything is sent (exit code 2 in the agent). */
export class InputError extends Error {
  override name = "InputError";
}

export type Environment = Readonly<Record<string, string | undefined>>;

/** The files of a TLS connection: the CA to trust (none: the system's roots) and the
 * client's certificate and key. */
export interface TlsFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}

export interface ConnectionOptions extends TlsFiles {
  /** host:port; default $CUSTODY_SERVER, else 127.0.0.1:50051. One address: the Node
   * client does not spread calls over replicas as the Python client does. */
  address?: string | undefined;
  /** No TLS (the server runs with `[tls] insecure = true`). */
  plaintext?: boolean | undefined;
  /** Bounds each call; default 60 s. */
  timeoutMs?: number | undefined;
  env?: Environment | undefined;
}

export interface ConnectionSettings {
  address: string;
  /** Undefined: plaintext. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; caSource: string } | undefined;
  timeoutMs: number;
}

/** The embedded default's state directory, as the server and the Python client find it. */
export function stateDir(env: Environment = process.env): string {
  const given = env[ENV_STATE_DIR];
  if (given) {
    return given;
  }
  const base = env["XDG_STATE_HOME"] || join(env["HOME"] || homedir(), ".local", "state");
  return join(base, "custody");
}

function readable(path: string): boolean {
  try {
    accessSync(path, constants.R_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The local CA and client pair that `custody-server` made, if all three are there. */
export function findLocalTls(env: Environment = process.env): Required<TlsFiles> | undefined {
  const directory = join(stateDir(env), "tls");
  const files = {
    ca: join(directory, "ca.pem"),
    cert: join(directory, "client.pem"),
    key: join(directory, "client-key.pem"),
  };
  return [files.ca, files.cert, files.key].every(readable) ? files : undefined;
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new InputError(`cannot read ${what} ${path}: ${reason}`);
  }
}

/** Where and how to call: the options, else the environment, else the local files. */
export function connectionSettings(options: ConnectionOptions = {}): ConnectionSettings {
  const env = options.env ?? process.env;
  const address = options.address || env[ENV_SERVER] || DEFAULT_ADDRESS;
  if (/\s|,/.test(address) || !/^(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):\d+$/.test(address)) {
    throw new InputError(`bad server address ${JSON.stringify(address)} (one host:port)`);
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (options.plaintext) {
    if (options.ca || options.cert || options.key) {
      throw new InputError("plaintext cannot be combined with TLS files");
    }
    return { address, timeoutMs };
  }
  let ca = options.ca || env[ENV_CA] || undefined;
  let caSource = options.ca ? `the CA in ${ca}` : ca ? `the CA in ${ca} ($${ENV_CA})` : "";
  let cert = options.cert || env[ENV_CERT] || undefined;
  let key = options.key || env[ENV_KEY_FILE] || undefined;
  if (!ca && !cert && !key) {
    const local = findLocalTls(env);
    if (local !== undefined) {
      ({ ca, cert, key } = local);
      caSource = `the local CA ${ca}`;
    }
  } else if (!ca) {
    const localCa = join(stateDir(env), "tls", "ca.pem");
    if (readable(localCa)) {
      ca = localCa;
      caSource = `the local CA ${ca}`;
    } else {
      caSource = "the system's CA certificates";
    }
  }
  if (Boolean(cert) !== Boolean(key)) {
    throw new InputError("a client certificate needs its key, and a key its certificate");
  }
  const tls: NonNullable<ConnectionSettings["tls"]> = { caSource };
  if (ca) tls.ca = read(ca, "CA certificate");
  if (cert) tls.cert = read(cert, "client certificate");
  if (key) tls.key = read(key, "client key");
  return { address, tls, timeoutMs };
}

/** A gRPC transport (HTTP/2; TLS with the client certificate unless plaintext). */
export function createCustodyTransport(settings: ConnectionSettings): Transport {
  if (settings.tls === undefined) {
    return createGrpcTransport({
      baseUrl: `http://${settings.address}`,
      defaultTimeoutMs: settings.timeoutMs,
    });
  }
  const { ca, cert, key } = settings.tls;
  return createGrpcTransport({
    baseUrl: `https://${settings.address}`,
    defaultTimeoutMs: settings.timeoutMs,
    nodeOptions: {
      ...(ca ? { ca } : {}),
      ...(cert ? { cert } : {}),
      ...(key ? { key } : {}),
    },
  });
}

export interface CustodyClients {
  custody: Client<typeof Custody>;
  keyAdmin: Client<typeof KeyAdmin>;
  settings: ConnectionSettings;
}

/** Clients of both services over one transport, from the options (see the top). */
export function connect(options: ConnectionOptions = {}): CustodyClients {
  const settings = connectionSettings(options);
  const transport = createCustodyTransport(settings);
  return {
    custody: createClient(Custody, transport),
    keyAdmin: createClient(KeyAdmin, transport),
    settings,
  };
}
