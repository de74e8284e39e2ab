"""`custody sign-links`: many recorded links signed in SignLinks calls (an agent that
recorded a matrix build's or a monorepo's steps itself).

Input: JSON lines (a file, or `-` for stdin), one link draft per line, read by Custody's
one strict JSON reader (duplicate keys, NaN and the like are refused, with the line):

    {"step_name": "test-py311", "command": ["tox", "-e", "py311"],
     "materials": {"src/a.py": {"sha256": "<64 hex>"}},
     "products": {"dist/a.whl": {"sha256": "<64 hex>"}},
     "byproducts": {"stdout": "", "stderr": "", "return-value": 0},
     "environment": {"CI_JOB": "1234"}}

Only `step_name` is required. Each signed link is written to the metadata directory as
`<step>.<keyid8>.link`, like `custody run` writes it; each link the server refused is
one line on stderr naming the input line. Exit 0 when every link was signed, else the
exit code of the first failure's kind (3 no service, 4 refused).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from custody_client._cli.common import (
    EXIT_OK,
    envelope_from_args,
    exit_code_for,
    metadata_directory,
    open_client,
    read_file,
)
from custody_client._cli.steps import _check_step_name, _write_link
from custody_client.errors import ClientError, InputError
from custody_client.link_draft import LinkDraft
from custody_client.models import Byproducts
from custody_core.errors import MetadataError
from custody_core.strict_json import parse_json

log = logging.getLogger("custody.cli")
FIELDS = frozenset({"step_name", "command", "materials", "products", "byproducts",
                    "environment"})


def cmd_sign_links(args: argparse.Namespace) -> int:
    directory = metadata_directory(args.metadata_directory)
    data = sys.stdin.buffer.read() if args.drafts == "-" else read_file(args.drafts,
                                                                       "link drafts")
    drafts = [(number, read_draft(line, where=f"{args.drafts}:{number}"))
              for number, line in enumerate(data.splitlines(), start=1) if line.strip()]
    if not drafts:
        raise InputError(f"{args.drafts}: no link drafts")
    with open_client(args) as custody:
        results = custody.sign_links([draft for _, draft in drafts],
                                     key_alias=args.key or "",
                                     envelope=envelope_from_args(args),
                                     batch_size=args.batch_size)
    failures: list[ClientError] = []
    for (number, draft), result in zip(drafts, results, strict=True):
        if isinstance(result, ClientError):
            print(f"custody sign-links: {args.drafts}:{number} ({draft.step_name}): {result}",
                  file=sys.stderr)
            failures.append(result)
        else:
            _write_link(directory, result)
    log.info("signed %d of %d links", len(drafts) - len(failures), len(drafts))
    return exit_code_for(failures[0]) if failures else EXIT_OK


def read_draft(line: bytes, *, where: str) -> LinkDraft:
    """One JSON line as a LinkDraft; InputError naming the line if it is not one."""
    try:
        value = parse_json(line, what=where).value
    except MetadataError as error:
        raise InputError(str(error)) from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: a link draft is a JSON object")
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
    step = value.get("step_name")
    if not isinstance(step, str):
        raise InputError(f"{where}: step_name (a string) is required")
    try:
        draft = LinkDraft(step_name=_check_step_name(step),
                          command=_strings(value.get("command", []), where, "command"))
        draft.add_materials(_artifacts(value.get("materials", {}), where, "materials"))
        draft.add_products(_artifacts(value.get("products", {}), where, "products"))
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    if "byproducts" in value:
        draft.set_byproducts(_byproducts(value["byproducts"], where))
    environment = value.get("environment", {})
    if not isinstance(environment, dict) or not all(
            isinstance(v, str) for v in environment.values()):
        raise InputError(f"{where}: environment must map names to strings")
    draft.set_environment(environment)
    return draft


def _strings(value: Any, where: str, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(f"{where}: {name} must be a list of strings")
    return value


def _artifacts(value: Any, where: str, name: str) -> Iterable[tuple[str, str]]:
    """{path: {"sha256": hex}}, as in a link's materials and products."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: {name} must map paths to digests")
    pairs = []
    for path, digests in value.items():
        if (not isinstance(digests, Mapping) or set(digests) != {"sha256"}
                or not isinstance(digests["sha256"], str)):
            raise InputError(f"{where}: {name} {path!r:.100}: give its digest as "
                             '{"sha256": "<64 hex digits>"}')
        pairs.append((path, digests["sha256"]))
    return pairs


def _byproducts(value: Any, where: str) -> Byproducts:
    if not isinstance(value, dict) or set(value) - {"stdout", "stderr", "return-value"}:
        raise InputError(f"{where}: byproducts holds stdout, stderr and return-value only")
    stdout, stderr = value.get("stdout", ""), value.get("stderr", "")
    returned = value.get("return-value")
    if not (isinstance(stdout, str) and isinstance(stderr, str)) or not (
            returned is None or (isinstance(returned, int) and not isinstance(returned, bool))):
        raise InputError(f"{where}: byproducts: stdout and stderr are strings, return-value "
                         "an integer")
    return Byproducts(stdout=stdout, stderr=stderr, return_value=returned)
