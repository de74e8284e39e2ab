// An example pipeline agent in TypeScript: what `custody run` and `custody verify` do, on
// Custody's gRPC API from Node.
//
//   node dist/examples/agent.js run --step build -m src -p app.txt -- make app.txt
//     hashes the materials, runs the command, hashes the products (sha256, paths
//     relative to the working directory, as in-toto-run records them), asks Custody to
//     sign the step's link (SignLink) and writes the signed file under its in-toto name,
//     <step>.<keyid8>.link, in --link-dir (default: the working directory). Exits with
//     the command's own exit code.
//
//   node dist/examples/agent.js verify -l root.layout --layout-key-alias owner \
//       --artifact app.tar.gz
//     sends the layout, the link files in-toto-verify would read from --link-dir and the
//     digests of the artifacts to Verify; prints PASS or FAIL with the failures (--json:
//     the verdict as JSON). Exit 0: verified; 1: it did not verify.
//
// Connection: --server HOST:PORT, --ca/--cert/--key-file, --plaintext; else
// CUSTODY_SERVER, CUSTODY_CA/CUSTODY_CERT/CUSTODY_KEY_FILE, else the local files of the
// embedded default (src/connection.ts). Exit codes as the custody CLI's: 2 bad input,
// 3 server unavailable, 4 the server refused the request.
//
// The layout's inspections are not run here (use `custody verify`, which runs them):
// bind the final product with --artifact instead.

import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import {
  ByproductsSchema,
  Envelope,
  InputError,
  SignLinkRequestSchema,
  TrustedKeySchema,
  VerifyRequestSchema,
  collectLinks,
  connect,
  readLayout,
  recordArtifacts,
  sha256File,
  writeLink,
  type Byproducts,
  type ConnectionOptions,
  type TrustedKey,
} from "../src/index.js";

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_UNAVAILABLE = 3;
const EXIT_REFUSED = 4;

const USAGE = `usage:
  agent run --step NAME [-m PATH]... [-p PATH]... [--key ALIAS] [--envelope E]
            [--run-id ID] [--link-dir DIR] [--record-streams] (-- COMMAND... | --no-command)
  agent verify -l LAYOUT (--layout-key-alias ALIAS | --layout-key FILE)...
               [--link-dir DIR] [--artifact PATH]... [--param NAME=VALUE]... [--json]
connection (both): [--server HOST:PORT] [--ca FILE] [--cert FILE] [--key-file FILE] [--plaintext]`;

const CONNECTION_OPTIONS = {
  server: { type: "string" },
  ca: { type: "string" },
  cert: { type: "string" },
  "key-file": { type: "string" },
  plaintext: { type: "boolean" },
} as const;

const ENVELOPES: Record<string, Envelope> = {
  metablock: Envelope.METABLOCK,
  dsse: Envelope.DSSE,
  statement: Envelope.STATEMENT,
};

function connectionOptions(values: {
  server?: string | undefined; ca?: string | undefined; cert?: string | undefined;
  "key-file"?: string | undefined; plaintext?: boolean | undefined;
}): ConnectionOptions {
  return {
    address: values.server, ca: values.ca, cert: values.cert, key: values["key-file"],
    plaintext: values.plaintext,
  };
}

/** The run id: --run-id, else CUSTODY_RUN_ID, else the CI's own (as the custody CLI). */
function runId(given: string | undefined): string {
  const env = process.env;
  let value = given ?? env["CUSTODY_RUN_ID"] ?? "";
  if (given === undefined && !value) {
    // A GitHub run number is unique only within its repository: the repository and
    // server are part of the id (custody_client/run_ids.py says the same).
    if (env["GITHUB_RUN_ID"]) {
      const repository = env["GITHUB_REPOSITORY"];
      const host = env["GITHUB_SERVER_URL"] ? new URL(env["GITHUB_SERVER_URL"]).host : "github.com";
      value = repository ? `github:${host}/${repository}/${env["GITHUB_RUN_ID"]}`
        : `github:${env["GITHUB_RUN_ID"]}`;
    } else if (env["CI_PIPELINE_ID"]) {
      const host = env["CI_SERVER_HOST"], project = env["CI_PROJECT_PATH"];
      const where = [host, host ? project : undefined].filter(Boolean).join("/");
      value = where ? `gitlab:${where}/${env["CI_PIPELINE_ID"]}` : `gitlab:${env["CI_PIPELINE_ID"]}`;
    }
  }
  if (value && !/^[A-Za-z0-9._:/@+=-]{1,200}$/.test(value)) {
    throw new InputError(`${JSON.stringify(value.slice(0, 80))} is not a run id`);
  }
  return value;
}

/** in-toto's text-mode capture: UTF-8, and \r\n and \r become \n. */
function universalNewlines(data: Buffer): string {
  return data.toString("utf8").replace(/\r\n/g, "\n").replace(/\r/g, "\n");
}

/** Runs the step's command (no shell), its output shown as it comes; returns what in-toto
 * records as byproducts. */
function runCommand(command: string[], recordStreams: boolean): Promise<Byproducts> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command[0]!, command.slice(1), {
      stdio: ["inherit", recordStreams ? "pipe" : "inherit", recordStreams ? "pipe" : "inherit"],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout?.on("data", (chunk: Buffer) => { stdout.push(chunk); process.stdout.write(chunk); });
    child.stderr?.on("data", (chunk: Buffer) => { stderr.push(chunk); process.stderr.write(chunk); });
    child.on("error", (error) => reject(new InputError(`cannot run ${command[0]}: ${error.message}`)));
    child.on("close", (code, signal) => {
      // A signal is recorded as Python's subprocess reports it: minus its number.
      const signals: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
      const returnValue = code ?? -(signal ? signals[signal] ?? 1 : 1);
      resolvePromise(create(ByproductsSchema, {
        stdout: recordStreams ? universalNewlines(Buffer.concat(stdout)) : "",
        stderr: recordStreams ? universalNewlines(Buffer.concat(stderr)) : "",
        returnValue,
      }));
    });
  });
}

async function cmdRun(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      step: { type: "string", short: "n" },
      material: { type: "string", short: "m", multiple: true },
      product: { type: "string", short: "p", multiple: true },
      key: { type: "string" },
      envelope: { type: "string", default: "metablock" },
      "run-id": { type: "string" },
      "link-dir": { type: "string", short: "d", default: "." },
      "record-streams": { type: "boolean", default: false },
      "no-command": { type: "boolean", short: "x", default: false },
    },
  });
  if (!values.step) throw new InputError("--step NAME is required");
  const envelope = ENVELOPES[values.envelope];
  if (envelope === undefined) {
    throw new InputError(`--envelope: one of ${Object.keys(ENVELOPES).join(", ")}`);
  }
  const command = values["no-command"] ? [] : positionals;
  if (command.length === 0 && !values["no-command"]) {
    throw new InputError("no command given: put it after --, or pass --no-command");
  }
  const { custody } = connect(connectionOptions(values));
  const request = create(SignLinkRequestSchema, {
    stepName: values.step,
    command,
    materials: await recordArtifacts(values.material ?? []),
    keyAlias: values.key ?? "",
    envelope,
    runId: runId(values["run-id"]),
  });
  if (command.length > 0) {
    request.byproducts = await runCommand(command, values["record-streams"]);
  }
  request.products = await recordArtifacts(values.product ?? []);
  const signed = await custody.signLink(request);
  const path = await writeLink(values["link-dir"], signed.fileName, signed.signed);
  process.stderr.write(`agent: wrote ${path} (key ${signed.keyAlias} v${signed.keyVersion}, ` +
    `keyid ${signed.keyid.slice(0, 8)}, ${request.materials.length} materials, ` +
    `${request.products.length} products)\n`);
  const code = request.byproducts?.returnValue ?? 0;
  return code === 0 ? EXIT_OK : code < 0 ? 128 - code : Math.min(code, 255);
}

async function layoutKey(path: string): Promise<TrustedKey> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw new InputError(`cannot read layout key ${path}: ${(error as Error).message}`);
  }
  if (text.includes("-----BEGIN PUBLIC KEY-----")) {
    return create(TrustedKeySchema, { source: { case: "publicKeyPem", value: text } });
  }
  return create(TrustedKeySchema, { source: { case: "publicKeyJson", value: text } });
}

async function cmdVerify(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      ...CONNECTION_OPTIONS,
      layout: { type: "string", short: "l" },
      "layout-key-alias": { type: "string", multiple: true },
      "layout-key": { type: "string", multiple: true },
      "link-dir": { type: "string", short: "d", default: "." },
      artifact: { type: "string", multiple: true },
      param: { type: "string", multiple: true },
      json: { type: "boolean", default: false },
    },
  });
  if (!values.layout) throw new InputError("--layout FILE is required");
  let layoutBytes: Buffer;
  try {
    layoutBytes = await readFile(values.layout);
  } catch (error) {
    throw new InputError(`cannot read layout ${values.layout}: ${(error as Error).message}`);
  }
  const layout = readLayout(layoutBytes, values.layout);
  const layoutKeys = [
    ...(values["layout-key-alias"] ?? []).map((alias) =>
      create(TrustedKeySchema, { source: { case: "alias", value: alias } })),
    ...await Promise.all((values["layout-key"] ?? []).map(layoutKey)),
  ];
  if (layoutKeys.length === 0) {
    throw new InputError("give at least one layout key: --layout-key FILE or --layout-key-alias ALIAS");
  }
  const parameters: Record<string, string> = {};
  for (const param of values.param ?? []) {
    const at = param.indexOf("=");
    if (at < 1) throw new InputError(`--param ${param}: NAME=VALUE`);
    parameters[param.slice(0, at)] = param.slice(at + 1);
  }
  const artifacts = [];
  for (const path of new Set(values.artifact ?? [])) {
    artifacts.push({ path, digest: { sha256: await sha256File(path) } });
  }
  const links = await collectLinks(values["link-dir"], layout);
  const { custody } = connect(connectionOptions(values));
  const verdict = await custody.verify(create(VerifyRequestSchema, {
    layout: layoutBytes, layoutKeys, links, parameters, artifacts,
  }));
  if (values.json) {
    process.stdout.write(JSON.stringify({
      passed: verdict.passed,
      failures: verdict.failures.map(({ stage, step, rule, paths, reason }) =>
        ({ stage, step, rule, paths, reason })),
      warnings: verdict.warnings.map(({ stage, step, message }) => ({ stage, step, message })),
      links: links.map((link) => link.path),
    }, null, 2) + "\n");
  } else if (verdict.passed) {
    process.stdout.write(`PASS: ${values.layout} verified (${layout.steps.length} steps, ` +
      `${links.length} links, ${artifacts.length} artifacts checked)\n`);
  } else {
    const stage = verdict.failures[0]?.stage ?? "unknown";
    process.stdout.write(`FAIL: ${values.layout} did not verify (failed at ${stage})\n`);
    for (const failure of verdict.failures) {
      const step = failure.step ? ` [${failure.step}]` : "";
      process.stdout.write(`  ${failure.stage}${step}: ${failure.reason}\n`);
    }
  }
  if (layout.inspections.length > 0 && !verdict.passed) {
    process.stderr.write(`agent: the layout has inspections (${layout.inspections.join(", ")}), ` +
      "which this example does not run: use `custody verify` for it\n");
  }
  return verdict.passed ? EXIT_OK : EXIT_FAILED;
}

/** A call that got no answer: the server is down or unreachable, the TLS handshake failed
 * (a Node error with a code, e.g. UNABLE_TO_VERIFY_LEAF_SIGNATURE, is the cause), or the
 * server closed the connection (it refuses a client without a certificate that way). */
function noAnswer(error: ConnectError): boolean {
  const cause: unknown = error.cause;
  const systemError = cause instanceof Error && typeof (cause as { code?: unknown }).code === "string";
  return systemError
    || [Code.Unavailable, Code.DeadlineExceeded, Code.Canceled].includes(error.code);
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === "run") return await cmdRun(rest);
    if (command === "verify") return await cmdVerify(rest);
    process.stderr.write(`${USAGE}\n`);
    return EXIT_USAGE;
  } catch (error) {
    if (error instanceof ConnectError) {
      process.stderr.write(`agent: ${Code[error.code]}: ${error.rawMessage}\n`);
      if (noAnswer(error)) {
        process.stderr.write("agent: no answer from the server: check its address and the " +
          "TLS files (--ca/--cert/--key-file, CUSTODY_CA/CUSTODY_CERT/CUSTODY_KEY_FILE, or " +
          "the local ones in CUSTODY_STATE_DIR)\n");
        return EXIT_UNAVAILABLE;
      }
      return EXIT_REFUSED;
    }
    if (error instanceof InputError || (error instanceof TypeError && "code" in error
        && String(error.code).startsWith("ERR_PARSE_ARGS"))) {
      process.stderr.write(`agent: ${error.message}\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
}

process.exitCode = await main(process.argv.slice(2));
