"""Artifact recording, compatible with in-toto 3.1's `record_artifacts_as_dict`.

Same rules as the reference (in_toto.runlib and in_toto.resolver):

- each path is `normpath`-ed, then checked against the exclude patterns (gitignore
  style, `DEFAULT_EXCLUDE_PATTERNS` when none are given); a path that does not exist is
  skipped; a file is recorded; a directory is walked top-down, excluded directories are
  not entered, and every file below it is recorded relative to the base path;
- symlinks to files are recorded with the target's content; broken symlinks, sockets and
  FIFOs are skipped; symlinks to directories are followed when `follow_symlink_dirs`
  (as `in-toto-run` and `in-toto-record` always do);
- `\\` in names becomes `/`, then the first matching `lstrip_paths` prefix is removed;
  two artifacts with the same name after stripping are an error;
- `dir:PATH` records a directory as one artifact (the sha256 of its sorted
  `sha256sum`-style listing), `ostree:REF` an OSTree commit, `file:PATH` a file with the
  scheme kept in its name.

One deliberate difference: a symlink loop is walked once, with a warning, where the
reference walks it until the kernel refuses the path (ELOOP), recording copies.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from custody_client.digest_cache import DigestCache
from custody_client.errors import RecordingError
from custody_client.excludes import DEFAULT_EXCLUDE_PATTERNS, ExcludeFilter
from custody_client.hashing import sha256_file, sha256_files

log = logging.getLogger("custody.client.recording")

HASH_ALGORITHM = "sha256"
_SCHEMES = ("file", "dir", "ostree")

# Called with (files hashed so far, files to hash) while a tree is being hashed.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RecordingOptions:
    """How to record: the reference's `exclude_patterns`, `base_path`, `lstrip_paths`."""

    exclude_patterns: tuple[str, ...] = ()  # empty means in-toto's defaults
    base_path: str | None = None
    lstrip_paths: tuple[str, ...] = ()
    follow_symlink_dirs: bool = True
    workers: int | None = None  # hashing threads; None picks one from the CPU count
    exclude: ExcludeFilter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("exclude_patterns", "lstrip_paths"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise RecordingError(f"{name} must be a tuple of strings")
        if self.base_path is not None and not isinstance(self.base_path, str):
            raise RecordingError("base_path must be a string")
        for first, second in combinations(self.lstrip_paths, 2):
            if first.startswith(second) or second.startswith(first):
                raise RecordingError(
                    f"--lstrip-paths '{first}' and '{second}' overlap: one is a prefix of the other"
                )
        patterns = self.exclude_patterns or DEFAULT_EXCLUDE_PATTERNS
        object.__setattr__(self, "exclude", ExcludeFilter(patterns))


def record_artifacts(
    paths: Sequence[str],
    options: RecordingOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cache: DigestCache | None = None,
) -> dict[str, dict[str, str]]:
    """Artifacts as in-toto records them: {name: {"sha256": hex}}."""
    return {name: {HASH_ALGORITHM: digest}
            for name, digest in iter_artifacts(paths, options, progress=progress, cache=cache)}


def iter_artifacts(
    paths: Sequence[str],
    options: RecordingOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cache: DigestCache | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield (name, sha256 hex) for every artifact, each name once.

    Only the list of names and file paths is held; digests are yielded as they are
    computed, so a caller can put them straight into a request. A `cache` shared by the
    materials and the products of one step spares re-reading files that did not change
    (custody_client.digest_cache); the recorded digests are the same.
    """
    options = options or RecordingOptions()
    groups: dict[str, list[str]] = {}
    for uri in paths:
        scheme, colon, _ = uri.partition(":")
        groups.setdefault(scheme if colon and scheme in _SCHEMES else "file", []).append(uri)
    for scheme, uris in groups.items():
        if scheme == "dir":
            yield from _directory_artifacts(uris, options)
        elif scheme == "ostree":
            yield from _ostree_artifacts(uris, options)
        else:
            yield from _file_artifacts(uris, options, progress, cache)


def _file_artifacts(uris: Sequence[str], options: RecordingOptions,
                    progress: ProgressCallback | None, cache: DigestCache | None
                    ) -> Iterator[tuple[str, str]]:
    files = plan_files(uris, options)
    total = len(files)
    report = None if progress is None else (lambda done: progress(done, total))
    digests = sha256_files(list(files.values()), workers=options.workers, progress=report,
                           cache=cache)
    yield from zip(files.keys(), digests, strict=True)


def plan_files(uris: Sequence[str], options: RecordingOptions) -> dict[str, str]:
    """Walk the file URIs: artifact name -> path to read, in the reference's order."""
    planner = _Planner(options)
    for uri in uris:
        planner.add(uri)
    return planner.files


class _Planner:
    def __init__(self, options: RecordingOptions) -> None:
        self._options = options
        self._exclude = options.exclude
        self.files: dict[str, str] = {}
        # No base path and no prefixes to strip: a file's name is the path to read.
        self._plain_names = not options.base_path and not options.lstrip_paths

    def _fs_path(self, path: str) -> str:
        base = self._options.base_path
        return os.path.join(base, path) if base else path

    def _record(self, path: str, fs_path: str, scheme_prefix: str) -> None:
        name = path.replace("\\", "/")
        for prefix in self._options.lstrip_paths:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if self._options.lstrip_paths and name in self.files:
            raise RecordingError(
                f"--lstrip-paths make two artifacts share the name '{name}'"
            )
        self.files[scheme_prefix + name] = fs_path

    def add(self, uri: str) -> None:
        scheme_prefix = "file:" if uri.startswith("file:") else ""
        path = os.path.normpath(uri[len(scheme_prefix):])
        if self._exclude.excludes(path):
            return
        fs_path = self._fs_path(path)
        if not os.path.exists(fs_path):
            log.warning("%s does not exist: not recorded", path)
            return
        if os.path.isfile(fs_path):
            self._record(path, fs_path, scheme_prefix)
        if os.path.isdir(fs_path):
            self._walk(path, scheme_prefix)

    def _walk(self, top: str, scheme_prefix: str) -> None:
        """os.walk(top, followlinks=...) top-down, as the reference walks, without recursion."""
        follow = self._options.follow_symlink_dirs
        stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(top, ())]
        while stack:
            directory, ancestors = stack.pop()
            fs_directory = self._fs_path(directory)
            if follow:
                identity = _identity(fs_directory)
                if identity is not None:
                    if identity in ancestors:
                        log.warning("%s loops back to a parent directory: not walked again",
                                    directory)
                        continue
                    ancestors = (*ancestors, identity)
            try:
                with os.scandir(fs_directory) as entries:
                    listing = list(entries)
            except OSError as error:
                # The reference (os.walk without onerror) skips these silently.
                log.warning("cannot list %s: %s: not recorded", directory, error.strerror)
                continue
            subdirectories: list[str] = []
            prefix = "" if directory == "." else (
                directory if directory.endswith("/") else directory + "/")  # posixpath.join
            # The loop below runs once per file of the tree: no call that can be avoided.
            excludes = self._exclude.excludes
            plain = self._plain_names and not scheme_prefix
            files = self.files
            for entry in listing:
                name = entry.name
                path = prefix + name
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if (follow or not entry.is_symlink()) and not excludes(path):
                        subdirectories.append(path)
                    continue
                if excludes(path):
                    continue
                try:
                    is_file = entry.is_file()
                except OSError:
                    is_file = False
                if not is_file:
                    log.info("%s is not a regular file (broken symlink?): skipped", path)
                    continue
                if plain and "\\" not in path:
                    files[path] = path  # the common case: name == path to read
                else:
                    self._record(path, self._fs_path(path), scheme_prefix)
            stack.extend((sub, ancestors) for sub in reversed(subdirectories))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _directory_artifacts(uris: Sequence[str], options: RecordingOptions
                         ) -> Iterator[tuple[str, str]]:
    """`dir:PATH`: one artifact per directory (in_toto.resolver.DirectoryResolver)."""
    names: set[str] = set()
    for uri in uris:
        path = uri[len("dir:"):]
        if not os.path.isdir(path):  # relative to the working directory, not base_path
            raise RecordingError(f"path '{path}' is not a directory")
        inner = RecordingOptions(
            exclude_patterns=options.exclude_patterns,
            base_path=path,
            follow_symlink_dirs=options.follow_symlink_dirs,
            workers=options.workers,
        )
        files = plan_files(["."], inner)
        digests = sha256_files(list(files.values()), workers=options.workers)
        listing = sorted(zip(files.keys(), digests, strict=True))
        text = "".join(f"{digest}  {name}\n" for name, digest in listing)
        name = path.replace("\\", "/")
        for prefix in options.lstrip_paths:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        name = "dir:" + name
        if options.lstrip_paths and name in names:
            raise RecordingError(f"--lstrip-paths make two artifacts share the name '{name}'")
        names.add(name)
        yield name, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ostree_artifacts(uris: Sequence[str], options: RecordingOptions
                      ) -> Iterator[tuple[str, str]]:
    """`ostree:REF`: the commit object a ref points to (in_toto.resolver.OSTreeResolver)."""
    base = options.base_path or ""
    for uri in uris:
        ref = uri[len("ostree:"):]
        try:
            with open(os.path.join(base, "refs", "heads", ref), encoding="utf-8") as handle:
                commit = handle.read().strip("\n")
        except OSError as error:
            raise RecordingError(f"cannot read OSTree ref {ref}: {error.strerror}") from None
        yield (f"ostree:{ref}",
               sha256_file(os.path.join(base, "objects", commit[:2], f"{commit[2:]}.commit")))
