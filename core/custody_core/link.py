"""Link metadata: the classic in-toto link and the Statement v1 link predicate v0.3.

Classic link (`signed` of a Metablock, or a DSSE payload), as in-toto 3.1 writes it:
    {"_type": "link", "name", "command", "materials", "products", "byproducts",
     "environment"}
Statement v1 with the link predicate v0.3 (in-toto attestation spec,
spec/predicates/link.md): products become `subject` (ResourceDescriptors with
`name` and `digest`), the predicate holds `name`, `command`, `materials` (a list
of ResourceDescriptors), `byproducts` and `environment`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any

from custody_core.digests import bad_algorithm, check_algorithm
from custody_core.envelope import PAYLOAD_TYPE_INTOTO, Envelope
from custody_core.errors import MetadataError

__all__ = [
    "LINK_PREDICATE_TYPE",
    "LINK_TYPE",
    "STATEMENT_TYPE",
    "ArtifactDigests",
    "build_link",
    "link_file_name",
    "link_payload_from_envelope",
    "link_to_statement",
    "statement_link_payload",
    "statement_to_link",
]

LINK_TYPE = "link"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
LINK_PREDICATE_TYPE = "https://in-toto.io/attestation/link/v0.3"

ArtifactDigests = Mapping[str, Mapping[str, str]]  # path -> {"sha256": hex, ...}

# in-toto checks digests with ^[0-9a-fA-F]+$ (in_toto.formats._check_hex); algorithm
# names as custody_core.digests says.
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]+")
_HEX_BYTES = b"0123456789abcdefABCDEF"


def build_link(
    *,
    name: str,
    command: Sequence[str],
    materials: ArtifactDigests,
    products: ArtifactDigests,
    byproducts: Mapping[str, Any],
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """The classic link `signed` dict, validated, as plain JSON values (copied).

    Artifact paths and digest algorithms come out in sorted order (cheaper to
    canonicalize; JSON object order carries no meaning).
    """
    _check_name_and_command(name, command)
    return _link_dict(
        name=name,
        command=command,
        materials=_artifact_digests(materials, field="materials"),
        products=_artifact_digests(products, field="products"),
        byproducts=byproducts,
        environment=environment,
    )


def _check_name_and_command(name: object, command: object) -> None:
    if not isinstance(name, str) or not name:
        raise MetadataError("link: name must be a non-empty string")
    if isinstance(command, str) or not isinstance(command, Sequence):
        raise MetadataError("link: command must be a list of strings")
    if not all(isinstance(part, str) for part in command):
        raise MetadataError("link: command must be a list of strings")


def _link_dict(
    *,
    name: str,
    command: Sequence[str],
    materials: dict[str, dict[str, str]],
    products: dict[str, dict[str, str]],
    byproducts: Mapping[str, Any],
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """The classic link dict; name and command checked, artifacts checked and copied."""
    return {
        "_type": LINK_TYPE,
        "name": name,
        "command": list(command),
        "materials": materials,
        "products": products,
        "byproducts": _plain_object(byproducts, field="byproducts"),
        "environment": _plain_object(environment, field="environment"),
    }


def link_to_statement(link: Mapping[str, Any]) -> dict[str, Any]:
    """Statement v1 with the link predicate v0.3 for a classic link dict."""
    checked = _classic_link(link)
    return {
        "_type": STATEMENT_TYPE,
        "subject": _resource_descriptors(checked["products"]),
        "predicateType": LINK_PREDICATE_TYPE,
        "predicate": {
            "name": checked["name"],
            "command": checked["command"],
            "materials": _resource_descriptors(checked["materials"]),
            "byproducts": checked["byproducts"],
            "environment": checked["environment"],
        },
    }


def statement_to_link(statement: Mapping[str, Any]) -> dict[str, Any]:
    """The classic link dict for a Statement v1 with the link predicate v0.3."""
    predicate = _link_predicate(statement)
    name = predicate.get("name", "")
    command = _list_field(predicate, "command", where="statement predicate")
    _check_name_and_command(name, command)
    return _link_dict(
        name=name,
        command=command,
        materials=_digests_from_descriptors(
            _list_field(predicate, "materials", where="statement predicate"),
            field="predicate.materials",
        ),
        products=_digests_from_descriptors(statement.get("subject"), field="subject"),
        byproducts=predicate.get("byproducts", {}),
        environment=predicate.get("environment", {}),
    )


def statement_link_payload(statement: Mapping[str, Any]) -> dict[str, Any]:
    """The classic link dict for a Statement v1 with the link predicate v0.3, reshaped
    but not validated: for `custody_core.models.Link.from_payload`, which validates it,
    once (a Statement of 100,000 artifacts is not checked twice).

    The Statement's own shape is checked (types, a list of ResourceDescriptors with
    unique names); MetadataError if it is wrong.
    """
    predicate = _link_predicate(statement)
    return {
        "_type": LINK_TYPE,
        "name": predicate.get("name", ""),
        "command": _list_field(predicate, "command", where="statement predicate"),
        "materials": _descriptor_digests(
            _list_field(predicate, "materials", where="statement predicate"),
            field="predicate.materials",
        ),
        "products": _descriptor_digests(statement.get("subject"), field="subject"),
        "byproducts": predicate.get("byproducts", {}),
        "environment": predicate.get("environment", {}),
    }


def _link_predicate(statement: object) -> Mapping[str, Any]:
    if not isinstance(statement, Mapping):
        raise MetadataError("statement: must be a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise MetadataError(f"statement: _type must be {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != LINK_PREDICATE_TYPE:
        raise MetadataError(f"statement: predicateType must be {LINK_PREDICATE_TYPE!r}")
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        raise MetadataError("statement: predicate must be a JSON object")
    return predicate


def link_payload_from_envelope(envelope: Envelope) -> dict[str, Any]:
    """The classic link dict carried by a Metablock or a DSSE envelope.

    Accepts a Metablock link, DSSE with a classic link payload, and DSSE with a
    Statement v1 + link predicate v0.3. Fields other than the link's own are
    ignored; missing optional fields get in-toto's defaults.
    """
    payload = envelope.payload
    if envelope.kind == "dsse":
        if envelope.payload_type != PAYLOAD_TYPE_INTOTO:
            raise MetadataError(
                f"link: DSSE payloadType must be {PAYLOAD_TYPE_INTOTO!r},"
                f" got {envelope.payload_type!r}"
            )
        if payload.get("_type") == STATEMENT_TYPE:
            return statement_to_link(payload)
    if payload.get("_type") != LINK_TYPE:
        raise MetadataError("link: payload is neither a link nor a link Statement")
    return _classic_link(payload)


def link_file_name(step_name: str, keyid: str) -> str:
    """`<step>.<first 8 characters of keyid>.link`."""
    return f"{step_name}.{keyid[:8]}.link"


def _classic_link(link: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(link, Mapping):
        raise MetadataError("link: must be a JSON object")
    if link.get("_type", LINK_TYPE) != LINK_TYPE:
        raise MetadataError("link: _type must be 'link'")
    return build_link(
        name=link.get("name", ""),  # type checked by build_link
        command=_list_field(link, "command", where="link"),
        materials=link.get("materials", {}),
        products=link.get("products", {}),
        byproducts=link.get("byproducts", {}),
        environment=link.get("environment", {}),
    )


def _list_field(container: Mapping[str, Any], key: str, *, where: str) -> list[Any]:
    value = container.get(key, [])
    if not isinstance(value, list):
        raise MetadataError(f"{where}: {key} must be a list")
    return value


def _artifact_digests(artifacts: object, *, field: str) -> dict[str, dict[str, str]]:
    if not isinstance(artifacts, Mapping):
        raise MetadataError(f"link: {field} must map paths to digest objects")
    fast = _artifact_digests_fast(artifacts)
    if fast is not None:
        return fast
    if not all(isinstance(path, str) for path in artifacts):
        raise MetadataError(f"link: {field} paths must be strings")
    return {
        path: _digest_set(artifacts[path], where=f"link: {field}[{path!r}]")
        for path in sorted(artifacts)
    }


def _artifact_digests_fast(artifacts: Mapping[Any, Any]) -> dict[str, dict[str, str]] | None:
    """Check and copy plain dicts in a few C-level passes (links hold 100,000s of paths).

    Returns None when anything is unusual; the slow path then gives the precise error.
    """
    paths = list(artifacts)
    digest_sets = list(artifacts.values())
    if not _only(str, paths) or not _only(dict, digest_sets):
        return None
    # A short printable name each (custody_core.digests), checked once per name.
    if bad_algorithm(set(chain.from_iterable(digest_sets))) is not None:
        return None
    digests = list(chain.from_iterable(map(dict.values, digest_sets)))
    if not _only(str, digests) or not all(digests):
        return None
    # Hex only: every byte deleted by one translate, faster than a regex (measured: see
    # docs/PERFORMANCE.md#core-checks-on-large-links).
    joined = "".join(digests)
    if not joined.isascii() or joined.encode("ascii").translate(None, _HEX_BYTES):
        return None
    # Sorted by path: canonical JSON then needs no sorted copy of 100,000 entries.
    ordered_paths = sorted(paths)
    return dict(
        zip(ordered_paths, map(dict.copy, map(artifacts.__getitem__, ordered_paths)), strict=True)
    )


def _only(kind: type, items: Iterable[Any]) -> bool:
    return set(map(type, items)) <= {kind}


def _digest_set(digests: object, *, where: str) -> dict[str, str]:
    if not isinstance(digests, Mapping):
        raise MetadataError(f"{where} must map algorithm names to hex digests")
    for algorithm, value in digests.items():
        check_algorithm(algorithm, where=where)
        if not isinstance(value, str) or not _HEX_DIGEST.fullmatch(value):
            raise MetadataError(f"{where}[{algorithm!r}] must be a hex string")
    return {algorithm: digests[algorithm] for algorithm in sorted(digests)}


def _plain_object(value: object, *, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise MetadataError(f"link: {field} must be a JSON object")
    return copy.deepcopy(dict(value))


def _resource_descriptors(artifacts: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    return [{"name": path, "digest": dict(artifacts[path])} for path in sorted(artifacts)]


def _descriptor_digests(descriptors: object, *, field: str) -> dict[str, Any]:
    """Path -> digest of ResourceDescriptors, reshaped in C-level passes (digests not
    checked); the precise check names the problem otherwise."""
    reshaped = _descriptor_digests_fast(descriptors)
    if reshaped is None:
        return _digests_from_descriptors(descriptors, field=field)
    return reshaped


def _descriptor_digests_fast(descriptors: object) -> dict[str, Any] | None:
    if type(descriptors) is not list or not _only(dict, descriptors):
        return None
    try:  # dict.__getitem__: a KeyError if a descriptor lacks the field
        names = list(map(dict.__getitem__, descriptors, repeat("name")))
        digests = list(map(dict.__getitem__, descriptors, repeat("digest")))
    except KeyError:
        return None
    reshaped = dict(zip(names, digests, strict=True))
    if len(reshaped) != len(names) or not _only(str, names):
        return None  # a name twice, or not a string
    return reshaped


def _digests_from_descriptors(descriptors: object, *, field: str) -> dict[str, dict[str, str]]:
    """Path -> checked, copied digest set, sorted by path; MetadataError names the
    descriptor that is wrong."""
    fast = _descriptor_digests_fast(descriptors)
    if fast is not None:
        checked = _artifact_digests_fast(fast)
        if checked is not None:
            return checked
    if not isinstance(descriptors, list):
        raise MetadataError(f"statement: {field} must be a list of ResourceDescriptors")
    result: dict[str, dict[str, str]] = {}
    for index, descriptor in enumerate(descriptors):
        where = f"statement: {field}[{index}]"
        if not isinstance(descriptor, Mapping):
            raise MetadataError(f"{where} must be a JSON object")
        name = descriptor.get("name")
        if not isinstance(name, str):
            raise MetadataError(f"{where}.name must be a string")
        if name in result:
            raise MetadataError(f"{where}.name {name!r} is not unique")
        result[name] = _digest_set(descriptor.get("digest"), where=f"{where}.digest")
    return {path: result[path] for path in sorted(result)}
