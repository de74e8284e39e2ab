// Link files on disk: writing what SignLink returned under its in-toto file name, and
// finding the link files of a layout's steps for Verify, as in-toto-verify finds them.

import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

import { create } from "@bufbuild/protobuf";

import { InputError } from "./connection.js";
import { MetadataFileSchema, type MetadataFile } from "./gen/custody/v1/custody_pb.js";

/** `name` if it is a relative path that stays below its directory (a step name with "/"
 * names a subdirectory, as in in-toto), else undefined. */
export function relativeLinkPath(name: string): string | undefined {
  const parts = name.split("/");
  if (!name || name.includes("\0") || name.includes("\\")
      || parts.some((part) => part === "" || part === "." || part === "..")) {
    return undefined;
  }
  return name;
}

/** `<step>.<first 8 characters of the keyid>.link`, the keyid as the layout writes it. */
export function linkFileName(step: string, keyid: string): string {
  return `${step}.${keyid.slice(0, 8)}.link`;
}

/** Writes a signed link as is under `directory`, atomically; returns its path. The file
 * name comes from the server and is checked before it names a file here. */
export async function writeLink(directory: string, fileName: string,
                                signed: Uint8Array): Promise<string> {
  if (relativeLinkPath(fileName) === undefined || !fileName.endsWith(".link")) {
    throw new InputError(`the server returned an unusable link file name ${JSON.stringify(fileName)}`);
  }
  const path = join(directory, fileName);
  await mkdir(dirname(path), { recursive: true });
  const temporary = join(dirname(path), `.${fileName.split("/").pop()}.${process.pid}.tmp`);
  await writeFile(temporary, signed);
  await rename(temporary, path);
  return path;
}

export interface LayoutStep {
  name: string;
  pubkeys: string[];
}

export interface LayoutSummary {
  steps: LayoutStep[];
  inspections: string[];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The steps and inspections of a signed layout (Metablock or DSSE), read only to find
 * the link files: Custody verifies the layout itself. */
export function readLayout(data: Uint8Array, where = "layout"): LayoutSummary {
  let payload: unknown;
  try {
    const envelope: unknown = JSON.parse(Buffer.from(data).toString("utf8"));
    if (isRecord(envelope) && "signed" in envelope) {
      payload = envelope["signed"];
    } else if (isRecord(envelope) && typeof envelope["payload"] === "string") {
      payload = JSON.parse(Buffer.from(envelope["payload"], "base64").toString("utf8"));
    }
  } catch (error) {
    throw new InputError(`${where} is not JSON: ${error instanceof Error ? error.message : error}`);
  }
  if (!isRecord(payload) || payload["_type"] !== "layout" || !Array.isArray(payload["steps"])) {
    throw new InputError(`${where} is not a signed in-toto layout`);
  }
  const steps: LayoutStep[] = [];
  for (const step of payload["steps"]) {
    if (isRecord(step) && typeof step["name"] === "string" && Array.isArray(step["pubkeys"])) {
      steps.push({
        name: step["name"],
        pubkeys: step["pubkeys"].filter((k): k is string => typeof k === "string"),
      });
    }
  }
  const inspect = Array.isArray(payload["inspect"]) ? payload["inspect"] : [];
  const inspections = inspect.flatMap((i) => isRecord(i) && typeof i["name"] === "string"
    ? [i["name"]] : []);
  return { steps, inspections };
}

/** The link files in-toto-verify would read for `layout` from `linkDir`: for each step and
 * each keyid in its pubkeys, `<step>.<keyid[:8]>.link` if it is there. Sublayouts' own
 * links are not looked up (use the `custody` CLI for those). */
export async function collectLinks(linkDir: string, layout: LayoutSummary): Promise<MetadataFile[]> {
  const found = new Map<string, MetadataFile>();
  for (const step of layout.steps) {
    for (const keyid of step.pubkeys) {
      const name = relativeLinkPath(linkFileName(step.name, keyid));
      if (name === undefined || found.has(name)) continue;
      let content: Buffer;
      try {
        content = await readFile(join(linkDir, name));
      } catch {
        continue; // missing: the verdict says the step's threshold is not met
      }
      found.set(name, create(MetadataFileSchema, { path: name, content }));
    }
  }
  return [...found.values()];
}
