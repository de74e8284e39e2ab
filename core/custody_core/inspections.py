"""Inspection links handed in by the verifier's client (the core never runs a command).

The client runs each inspection's `run` where the final product is and records a link
(in-toto's `in_toto_run` writes `<inspection>.link`, a Metablock with no signature). We
look it up by that file name, or else by the link's name, and require what the reference
requires of a run: an integer return value of 0. A sublayout's inspection links live in
its link directory, like its step links: `<step>.<keyid8>/<inspection>.link`.
Signatures on these links are not checked: the verifier made them itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.models import Inspection, Layout, Link
from custody_core.step_links import link_from_envelope
from custody_core.strict_json import parse_json
from custody_core.verdict import Failure, Stage, failure


def parse_inspection_link(data: bytes) -> Link:
    """A recorded link: in a Metablock or DSSE envelope (signed or not), or a bare link dict."""
    try:
        return link_from_envelope(parse_envelope(data, for_verification=True))
    except MetadataError as envelope_error:
        try:
            bare = parse_json(data, what="inspection link").value
        except MetadataError:
            raise envelope_error from None
        if isinstance(bare, dict) and bare.get("_type") == "link":
            return Link.from_payload(bare)
        raise


class _Index:
    """Parses inspection link files lazily, at most once each."""

    def __init__(self, files: Mapping[str, bytes], prefix: str) -> None:
        # This layout's files: under its prefix, not in a sublayout's directory below it.
        self._files = {
            name: data
            for name, data in files.items()
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        }
        self._parsed: dict[str, Link | MetadataError] = {}

    def get(self, file_name: str) -> Link | MetadataError | None:
        if file_name not in self._files:
            return None
        if file_name not in self._parsed:
            try:
                self._parsed[file_name] = parse_inspection_link(self._files[file_name])
            except MetadataError as exc:
                self._parsed[file_name] = exc
        return self._parsed[file_name]

    def by_link_name(self, name: str) -> Link | None:
        for file_name in self._files:
            parsed = self.get(file_name)
            if isinstance(parsed, Link) and parsed.name == name:
                return parsed
        return None


def _inspection_link(
    inspection: Inspection, index: _Index, file_name: str
) -> tuple[Link | None, str | None]:
    parsed = index.get(file_name)
    if isinstance(parsed, MetadataError):
        return None, f"malformed inspection link {file_name}: {parsed}"
    if parsed is None:
        parsed = index.by_link_name(inspection.name)
        if parsed is None:
            return None, (
                f"no link for inspection '{inspection.name}': run it where the final product "
                f"is and send the recorded link as {file_name}"
            )
    if parsed.name != inspection.name:
        return None, f"{file_name} names '{parsed.name}', not inspection '{inspection.name}'"
    return_value = parsed.byproducts.get("return-value")
    if not isinstance(return_value, int) or return_value != 0:
        return None, (
            f"inspection '{inspection.name}' ran {list(inspection.run)} and returned "
            f"{return_value!r}, not 0"
        )
    return parsed, None


def collect_inspection_links(
    layout: Layout, inspection_links: Mapping[str, bytes], *, prefix: str
) -> tuple[dict[str, Link], list[Failure]]:
    """The recorded link of each inspection of `layout`, or a failure naming it."""
    index = _Index(inspection_links, prefix)
    found: dict[str, Link] = {}
    failures: list[Failure] = []
    for inspection in layout.inspections:
        link, problem = _inspection_link(inspection, index, f"{prefix}{inspection.name}.link")
        if problem is not None:
            failures.append(failure(Stage.INSPECTIONS, problem, step=inspection.name))
        elif link is not None:
            found[inspection.name] = link
    return found, failures
