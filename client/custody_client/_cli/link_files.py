"""Which link files `custody verify` sends: the ones in-toto-verify would read.

in-toto's `load_links_for_layout` looks, for each step and each keyid in its `pubkeys`,
at `os.path.join(link_dir, FILENAME_FORMAT.format(step_name=..., keyid=...))`, that is
`<step name>.<keyid[:8]>.link` with the keyid as the layout writes it (upper-case hex
stays upper-case) and the step name as it is (a `/` in it names a subdirectory, where
in-toto-run writes such a link). A file that holds a layout is a sublayout: its links
are looked up the same way in `<step name>.<keyid[:8]>/`, recursively
(`verify_sublayouts`). Nothing else in the directory is read, so what is sent does not
depend on unrelated files.

One deliberate difference: a step name that would name a file outside the link
directory (absolute, or with an empty, `.` or `..` part) is not looked up; in-toto
would read it. The server then reports that step's threshold as unmet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from custody_client._cli.common import relative_link_path
from custody_client.errors import InputError
from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.link import link_file_name
from custody_core.models import Layout
from custody_core.step_links import sublayout_dir
from custody_core.supply_chain import MAX_SUBLAYOUT_DEPTH

log = logging.getLogger("custody.cli")


def collect_links(link_dir: Path, layout: Layout) -> dict[str, bytes]:
    """The link files of `layout`'s steps under `link_dir`, by their path relative to it
    (as Verify takes them), sublayouts' links included."""
    if not link_dir.is_dir():
        raise InputError(f"link directory {link_dir} does not exist")
    links: dict[str, bytes] = {}
    _collect(link_dir, layout, prefix="", depth=0, links=links)
    return links


def _collect(link_dir: Path, layout: Layout, *, prefix: str, depth: int,
             links: dict[str, bytes]) -> None:
    for step in layout.steps:
        for keyid in dict.fromkeys(step.pubkeys):
            name = relative_link_path(prefix + link_file_name(step.name, keyid))
            if name is None:
                log.warning("step %r: its link file name would leave the link directory; "
                            "not looked up", step.name[:100])
                continue
            if name in links:
                continue  # two keyids with one 8-character prefix: one file
            data = _read(link_dir / name)
            if data is None:
                continue
            links[name] = data
            sublayout = _sublayout(data)
            if sublayout is not None and depth < MAX_SUBLAYOUT_DEPTH:
                _collect(link_dir, sublayout, prefix=prefix + sublayout_dir(step.name, keyid),
                         depth=depth + 1, links=links)


def _read(path: Path) -> bytes | None:
    """The file's bytes; None if it cannot be read (authorized is not required)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # in-toto skips it too: the verdict says the link is missing
        log.warning("cannot read link %s: %s; not sent", path, error.strerror)
        return None


def _sublayout(data: bytes) -> Layout | None:
    """The layout a link file holds, read only to find its steps (the server verifies
    it); None for a link or anything that does not parse (the server says what)."""
    if not may_hold_layout(data):
        return None
    try:
        payload = parse_envelope(data).payload
        if payload.get("_type") != "layout":
            return None
        return Layout.from_payload(payload)
    except MetadataError:
        return None


def holds_layout(data: bytes) -> bool:
    """Whether a link file is an envelope of a (sub)layout."""
    if not may_hold_layout(data):
        return False
    try:
        return parse_envelope(data).payload.get("_type") == "layout"
    except MetadataError:
        return False


def may_hold_layout(data: bytes) -> bool:
    """False when `data` cannot be an envelope of a layout, found without parsing a 20 MB
    link: a Metablock's `"_type": "layout"` is written with these bytes unless JSON
    escapes are used (a backslash), and DSSE has its payload in base64 (`"payload"`)."""
    if b"\\" in data:
        return True
    # Both words have their "y" fourth: a byte found at memory speed, and rare in links.
    if data.count(b"y") > _FEW:
        return b'"layout"' in data or b'"payload"' in data
    index = data.find(b"y")
    while index >= 0:
        start = max(index - 3, 0)
        if data[start : index + 5] == b'"layout"' or data[start : index + 6] == b'"payload"':
            return True
        index = data.find(b"y", index + 1)
    return False


_FEW = 1000
