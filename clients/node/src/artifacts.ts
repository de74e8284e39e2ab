// Recording artifacts as in-toto 3.1 records them (in_toto.runlib.record_artifacts_as_dict,
// and Custody's client/custody_client/recording.py), for the common case:
//
// - each path given is normalized (Python's os.path.normpath: no "./", no trailing "/");
//   a path that does not exist is skipped; a file is recorded under that name; a
//   directory is walked and every file below it is recorded as "<dir>/<path below it>"
//   ("." records its files without a prefix), so the names are relative to the working
//   directory (or `basePath`), as in-toto-run writes them;
// - symlinks are followed (files and directories, as in-toto-run does); broken symlinks,
//   sockets and FIFOs are skipped; a directory that loops back to a parent is not walked
//   again;
// - exclude patterns are in-toto's defaults ("*.link*", ".git", "*.pyc", "*~"): each
//   matches a file or directory name at any depth, and an excluded directory is not
//   entered, as .gitignore patterns without a "/" do. Other patterns of that form (glob
//   characters * ? [..]) may be given; patterns with a "/" or a "!" are refused rather
//   than read differently from in-toto.
//
// Not supported here (use the `custody` CLI): --lstrip-paths, dir:/ostree: artifacts.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join, posix } from "node:path";

import { create } from "@bufbuild/protobuf";

import { InputError } from "./connection.js";
import { ArtifactSchema, type Artifact } from "./gen/custody/v1/custody_pb.js";

/** in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS */
export const DEFAULT_EXCLUDE_PATTERNS: readonly string[] = ["*.link*", ".git", "*.pyc", "*~"];

export interface RecordingOptions {
  /** Names are relative to this directory, and paths are read below it (in-toto's
   * base_path); default: the working directory. */
  basePath?: string | undefined;
  /** Name patterns (no "/"); empty or absent: in-toto's defaults. */
  excludePatterns?: readonly string[] | undefined;
  /** Told what is not recorded and why (a missing path, a symlink loop); default: a line
   * on stderr. */
  onWarning?: ((message: string) => void) | undefined;
}

function warnOnStderr(message: string): void {
  process.stderr.write(`warning: ${message}\n`);
}

function globToRegExp(pattern: string): RegExp {
  if (pattern.includes("/") || pattern.startsWith("!") || pattern.includes("\\")) {
    throw new InputError(`exclude pattern ${JSON.stringify(pattern)}: only name patterns ` +
      "(no '/', '!' or '\\') are supported by this client");
  }
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "*") {
      source += "[^/]*";
    } else if (c === "?") {
      source += "[^/]";
    } else if (c === "[") {
      const end = pattern.indexOf("]", i + 2);
      if (end < 0) {
        // git drops a pattern with an unterminated range: it matches nothing
        return /(?!)/;
      }
      let body = pattern.slice(i + 1, end);
      if (body.startsWith("!")) body = "^" + body.slice(1);
      source += `[${body.replace(/[\\\]]/g, "\\$&")}]`;
      i = end;
    } else {
      source += c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    }
  }
  return new RegExp(`^${source}$`);
}

class ExcludeFilter {
  private readonly patterns: RegExp[];

  constructor(patterns: readonly string[]) {
    this.patterns = patterns.map(globToRegExp);
  }

  /** Whether a name in `path` (any of its parts) matches a pattern. */
  excludes(path: string): boolean {
    return path.split("/").some((part) => this.patterns.some((p) => p.test(part)));
  }
}

/** Python's os.path.normpath for POSIX paths ("./src/" -> "src", "a/../b" -> "b"); one
 * difference: a path that starts with exactly two slashes keeps one here. */
export function normpath(path: string): string {
  if (path === "") return ".";
  const normalized = posix.normalize(path);
  const trimmed = normalized.length > 1 ? normalized.replace(/\/+$/, "") : normalized;
  return trimmed === "" ? "/" : trimmed;
}

async function statOrUndefined(path: string): Promise<Awaited<ReturnType<typeof stat>> | undefined> {
  try {
    return await stat(path); // follows symlinks
  } catch {
    return undefined; // missing, or a broken symlink
  }
}

/** Artifact names and the files to read for them, in in-toto's order, each name once. */
export async function planFiles(paths: readonly string[],
                                options: RecordingOptions = {}): Promise<Map<string, string>> {
  const patterns = options.excludePatterns?.length
    ? options.excludePatterns : DEFAULT_EXCLUDE_PATTERNS;
  const exclude = new ExcludeFilter(patterns);
  const base = options.basePath;
  const fsPath = (name: string): string => (base ? join(base, name) : name);
  const files = new Map<string, string>();
  const warn = options.onWarning ?? warnOnStderr;

  async function walk(top: string): Promise<void> {
    const stack: Array<[string, string[]]> = [[top, []]];
    while (stack.length > 0) {
      const [directory, ancestors] = stack.pop()!;
      const info = await statOrUndefined(fsPath(directory));
      if (info === undefined) continue;
      const identity = `${info.dev}:${info.ino}`;
      if (ancestors.includes(identity)) {
        warn(`${directory} loops back to a parent directory: not walked again`);
        continue;
      }
      let entries: string[];
      try {
        entries = (await readdir(fsPath(directory))).sort();
      } catch {
        continue; // in-toto (os.walk without onerror) skips it silently
      }
      const prefix = directory === "." ? "" : directory.endsWith("/") ? directory : directory + "/";
      const subdirectories: string[] = [];
      for (const entry of entries) {
        const path = prefix + entry;
        if (exclude.excludes(entry)) continue;
        const entryInfo = await statOrUndefined(fsPath(path));
        if (entryInfo === undefined) continue;
        if (entryInfo.isDirectory()) {
          subdirectories.push(path);
        } else if (entryInfo.isFile()) {
          files.set(path, fsPath(path));
        }
      }
      for (const sub of subdirectories.reverse()) {
        stack.push([sub, [...ancestors, identity]]);
      }
    }
  }

  for (const given of paths) {
    const path = normpath(given);
    if (exclude.excludes(path)) continue;
    const info = await statOrUndefined(fsPath(path));
    if (info === undefined) {
      warn(`${path} does not exist: not recorded`);
      continue;
    }
    if (info.isFile()) {
      files.set(path, fsPath(path));
    } else if (info.isDirectory()) {
      await walk(path);
    }
  }
  return files;
}

/** Hex SHA-256 of a file's bytes, read as a stream. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("error", (error) => reject(new InputError(`cannot read ${path}: ${error.message}`)))
      .on("data", (chunk) => hash.update(chunk))
      .on("end", () => resolve(hash.digest("hex")));
  });
}

/** The artifacts of `paths`, as SignLinkRequest's materials or products. */
export async function recordArtifacts(paths: readonly string[],
                                      options: RecordingOptions = {}): Promise<Artifact[]> {
  const artifacts: Artifact[] = [];
  for (const [name, file] of await planFiles(paths, options)) {
    artifacts.push(create(ArtifactSchema, { path: name, digest: { sha256: await sha256File(file) } }));
  }
  return artifacts;
}
