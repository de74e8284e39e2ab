"""in-toto layout parameter substitution (`{NAME}` placeholders), without `str.format`'s reach.

Substitution happens only when parameters are given, as in in-toto: `in_toto_verify`
substitutes when its caller passes `substitution_parameters` (in-toto-verify never does),
so a layout without parameters keeps shell braces such as `${V}` or `awk '{print $1}'`
as they are. The reference runs `stanza.format(**parameters)` on every rule element,
expected command and inspection `run` element. We accept the same placeholders and
escapes (`{NAME}`, `{{`, `}}`) but refuse what `str.format` would also do with untrusted
text: attribute and index lookups (`{NAME.__class__}`), conversions and format specs.
Those, a missing parameter, and a malformed brace are MetadataErrors.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from custody_core.errors import MetadataError

PARAMETER_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_FORMATTER = string.Formatter()


def check_parameters(parameters: Mapping[str, str]) -> None:
    """Names must match `[a-zA-Z0-9_-]+` and values be strings (the reference's check)."""
    for name, value in parameters.items():
        if not isinstance(name, str) or PARAMETER_NAME.fullmatch(name) is None:
            raise MetadataError(f"parameter name {name!r:.80} must match [a-zA-Z0-9_-]+")
        if not isinstance(value, str):
            raise MetadataError(f"parameter {name!r} must have a string value")


def substitute(text: str, parameters: Mapping[str, str]) -> str:
    """Replace `{NAME}` in `text` by `parameters[NAME]`; `{{` and `}}` stand for braces."""
    if "{" not in text and "}" not in text:
        return text
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise MetadataError(f"malformed placeholder in {text!r:.120}: {exc}") from None
    out = []
    for literal, field, format_spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if PARAMETER_NAME.fullmatch(field) is None or field.isdigit() or format_spec or conversion:
            raise MetadataError(f"unsupported placeholder {{{field}}} in {text!r:.120}")
        if field not in parameters:
            raise MetadataError(f"no value for parameter {{{field}}} in {text!r:.120}")
        out.append(parameters[field])
    return "".join(out)


def placeholder_names(text: str) -> list[str]:
    """The `{NAME}` placeholders that substitution would fill in `text` (none if its
    braces are malformed: then it cannot be a parameterized text)."""
    if "{" not in text:
        return []
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError:
        return []
    return [
        field
        for _, field, format_spec, conversion in parts
        if field is not None
        and PARAMETER_NAME.fullmatch(field) is not None
        and not field.isdigit()
        and not format_spec
        and not conversion
    ]
