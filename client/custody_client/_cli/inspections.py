"""Running a layout's inspections where the final product is, as in-toto-verify does.

The server never runs a command named in a layout: the client runs each inspection's
`run` in the current directory, records materials and products of "." with in-toto's
defaults (like `in_toto.verifylib.run_all_inspections`), and hands the unsigned links
to Verify as `<inspection>.link` (or `<sublayout dir>/<inspection>.link`).

Inspections run only after the server has checked everything before them (layout
signature, expiry, links, thresholds, step rules): the client asks Verify for a plan first
(`plan`: no verdict recorded or counted) and runs exactly the inspections whose links the
planned verdict says are missing, then sends the one Verify that is recorded. A command
from a layout that does not verify is never run.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from custody_client._cli.process import run_command
from custody_client.digest_cache import DigestCache
from custody_client.errors import InputError
from custody_client.models import VerifyResult
from custody_client.recording import RecordingOptions, record_artifacts
from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.models import Layout

log = logging.getLogger("custody.cli")

# The innermost "sublayout <prefix><inspection> failed at inspections: ..." of a reason.
_SUBLAYOUT_INSPECTION = re.compile(r".*sublayout (?P<where>.+?) failed at inspections: ")


def parse_layout(data: bytes, *, where: str) -> Layout:
    """The layout's model, read only to find its steps and inspections (not verified)."""
    try:
        return Layout.from_payload(parse_envelope(data).payload)
    except MetadataError as error:
        raise InputError(f"bad layout {where}: {error}") from None


@dataclass(frozen=True)
class PendingInspection:
    """An inspection the verdict asks for: where its link goes and what to run."""

    file_name: str  # key in Verify's inspection_links
    name: str
    run: tuple[str, ...]


def inspections_wanted(
    result: VerifyResult,
    *,
    root: Layout,
    links: Mapping[str, bytes],
    done: set[str],
) -> list[PendingInspection]:
    """The inspections whose links the verdict lacks and that have not run yet."""
    wanted: list[PendingInspection] = []
    for failure in result.failures:
        prefix, name, layout = "", failure.step, root
        if failure.stage == "sublayout":
            match = _SUBLAYOUT_INSPECTION.match(failure.reason)
            if match is None or "/" not in match["where"]:
                continue
            where = match["where"]
            prefix, name = where[: where.rindex("/") + 1], where[where.rindex("/") + 1:]
            sublayout = links.get(prefix.rstrip("/") + ".link")
            if sublayout is None:
                continue
            layout = parse_layout(sublayout, where=prefix.rstrip("/") + ".link")
        elif failure.stage != "inspections":
            continue
        file_name = f"{prefix}{name}.link"
        inspection = next((i for i in layout.inspections if i.name == name), None)
        if inspection is None or file_name in done or \
                any(p.file_name == file_name for p in wanted):
            continue
        wanted.append(PendingInspection(file_name=file_name, name=name, run=inspection.run))
    return wanted


@dataclass(frozen=True)
class InspectionRun:
    link: bytes  # an unsigned Metablock link, as in-toto records an inspection
    return_value: int | None


def run_inspection(inspection: PendingInspection, *, timeout: float | None,
                   show_output: bool) -> InspectionRun:
    """in_toto_run(name, ["."], ["."], run): record, run, record; unsigned."""
    options = RecordingOptions()
    cache = DigestCache()  # what the inspection does not touch is not read twice
    materials = record_artifacts(["."], options, cache=cache)
    byproducts: dict[str, object] = {}
    return_value = None
    if inspection.run:
        log.info("running inspection '%s': %s", inspection.name, shlex.join(inspection.run))
        result = run_command(inspection.run, record_streams=False, timeout=timeout,
                             show_output=show_output, output=sys.stderr.buffer)
        return_value = result.return_code
        byproducts = {"stdout": "", "stderr": "", "return-value": return_value}
    products = record_artifacts(["."], options, cache=cache)
    link = {"_type": "link", "name": inspection.name, "command": list(inspection.run),
            "materials": materials, "products": products, "byproducts": byproducts,
            "environment": {}}
    content = json.dumps({"signed": link, "signatures": []}, sort_keys=True,
                         separators=(",", ":")).encode()
    return InspectionRun(link=content, return_value=return_value)


def parse_parameters(items: Sequence[str]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise InputError(f"--param takes KEY=VALUE, got {item!r:.80}")
        parameters[name] = value
    return parameters
