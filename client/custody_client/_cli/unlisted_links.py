"""The link files that let a failed verdict say why: those of the layout's steps that no
keyid in the step's `pubkeys` names.

After a key rotation, an agent's new link is signed by a version the layout does not list;
in-toto-verify (and so `custody verify`, see link_files) never reads it, and the verdict
only says that no link was found. `custody verify` sends such files as Verify's
`unlisted_links`: the server never verifies or counts them, but when a step fails its
threshold and one of them is validly signed by a version of a key the step lists under
other versions, the verdict names the rotation (docs/KEYS.md).

Only `<step>.<8 hex>.link` files at the top of the link directory, at most MAX_FILES of
at most MAX_BYTES each: an explanation is not worth a large request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from custody_core.models import Layout

MAX_FILES = 32
MAX_BYTES = 1024 * 1024
_NAME = re.compile(r"(?P<step>.+)\.[0-9a-fA-F]{8}\.link")


def unlisted_links(link_dir: Path, layout: Layout, *,
                   sent: Mapping[str, bytes]) -> dict[str, bytes]:
    steps = {step.name for step in layout.steps}
    found: dict[str, bytes] = {}
    try:
        entries = sorted(link_dir.iterdir())
    except OSError:
        return found  # collecting the links reported the directory already
    for path in entries:
        match = _NAME.fullmatch(path.name)
        if match is None or match["step"] not in steps or path.name in sent:
            continue
        try:
            if not path.is_file() or path.stat().st_size > MAX_BYTES:
                continue
            found[path.name] = path.read_bytes()
        except OSError:
            continue
        if len(found) >= MAX_FILES:
            break
    return found
