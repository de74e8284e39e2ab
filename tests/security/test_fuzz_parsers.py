"""Fuzzing, short run: every network-reachable parser returns or raises its documented
error, never anything else, and never takes long. (benchmarks/fuzz_parsers.py runs the
same targets on >= 100,000 inputs.) Plus hypothesis properties of the access parsers."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import time
from typing import Any

import pytest
from fuzz_targets import TARGETS, _general_names, _identity, fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody_core.errors import MetadataError
from custody_core.models import Layout, Link
from custody_core.strict_json import JsonLimits, parse_json
from custody_server.errors import LimitExceededError
from custody_server.policy import (
    AccessRequest,
    Grant,
    Policy,
    PolicyError,
    RequestLimits,
    parse_policy,
)
from custody_server.policy.errors import IdentityError
from custody_server.policy.identity import check_identity_string
from custody_server.policy.rpcs import RPCS_BY_NAME, KeyScope

FUZZ_INPUTS_PER_TARGET = 1_500
QUICK = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_mutation_fuzzing_finds_nothing(target: Any) -> None:
    tally = fuzz(target, inputs=FUZZ_INPUTS_PER_TARGET, seed=11)
    assert tally.inputs >= FUZZ_INPUTS_PER_TARGET
    assert [(f.kind, f.detail, f.data[:200]) for f in tally.findings] == []
    assert (tally.accepted and tally.refused) or target.name in ("verify-links",)


# JSON nesting: the reader's linear scan agrees with the real depth of any JSON document.

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(
    alphabet=st.sampled_from('ab"\\[]{}\n'), max_size=6))
_json = st.recursive(_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.dictionaries(st.text(alphabet=st.sampled_from('k"\\[{'), max_size=4), children,
                    max_size=3)), max_leaves=30)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@QUICK
@given(_json, st.integers(min_value=1, max_value=8))
def test_depth_scanner_agrees_with_the_document(value: Any, limit: int) -> None:
    try:
        JsonLimits(max_depth=limit).check_size_and_depth(json.dumps(value).encode(), what="x")
        exceeds = False
    except MetadataError:
        exceeds = True
    assert exceeds == (_depth(value) > limit)


@pytest.mark.parametrize("unit", [b'"\\', b'\\"', b'["\\', b'"[', b"[", b'{"a":'])
def test_adversarial_nesting_input_is_linear(unit: bytes) -> None:
    data = unit * (2 * 1024 * 1024 // len(unit))  # 2 MiB of the worst patterns we know
    started = time.perf_counter()
    for check in (lambda: parse_json(data, what="x"),
                  lambda: RequestLimits().check_layout(data)):
        with contextlib.suppress(MetadataError, LimitExceededError):
            check()
    assert time.perf_counter() - started < 2.0


# Models: any JSON-like value is a model or a MetadataError.

@QUICK
@given(st.dictionaries(st.sampled_from(
    ["_type", "expires", "readme", "keys", "steps", "inspect", "name", "materials", "products",
     "command", "byproducts", "environment", "threshold", "pubkeys", "expected_materials"]),
    _json, max_size=8))
def test_models_take_any_json(payload: dict[str, Any]) -> None:
    for kind in ("layout", "link"):
        with contextlib.suppress(MetadataError):
            (Layout if kind == "layout" else Link).from_payload({**payload, "_type": kind})


# The policy file: generated TOML documents parse or fail with a PolicyError.

_identities = st.sampled_from(["spiffe://x/a", "dns:b.example", "cn:c", "anonymous", "bad",
                               "dns:", "spiffe://x/\u0007", ""])
_rpc_names = st.sampled_from([*RPCS_BY_NAME, "*", "Nope"])
_patterns = st.lists(st.sampled_from(["build", "b*", "*", "", "[a-", "test-?"]), max_size=3)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


@st.composite
def _policy_documents(draw: st.DrawFn) -> str:
    lines = [f"version = {draw(st.sampled_from([1, 1, 1, 2]))}"]
    if draw(st.booleans()):
        lines += ["[rate_limit]", f"per_second = {draw(st.sampled_from([0, 1, 2.5, -1]))}",
                  f"burst = {draw(st.sampled_from([1, 10, 0, 2.5]))}"]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        lines.append("[[grant]]")
        lines.append(f"identities = {_toml_value(draw(st.lists(_identities, max_size=3)))}")
        lines.append(f"rpcs = {_toml_value(draw(st.lists(_rpc_names, max_size=3)))}")
        for name in ("link_keys", "steps", "layout_keys", "admin_keys", "extra"):
            if draw(st.booleans()):
                lines.append(f"{name} = {_toml_value(draw(_patterns))}")
    return "\n".join(lines) + "\n"


@QUICK
@given(_policy_documents())
def test_policy_documents_parse_or_fail_precisely(text: str) -> None:
    try:
        policy = parse_policy(text.encode(), source="p.toml")
    except PolicyError as error:
        assert str(error).startswith("p.toml: ")
        return
    for grant in policy.grants:  # what parses is consistent
        assert grant.identities and grant.rpcs
        for identity in grant.identities:
            check_identity_string(identity)


@QUICK
@given(st.binary(max_size=300))
def test_policy_bytes(data: bytes) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(data)


# Identity: any auth context gives an identity that obeys the rules, or IdentityError.

_name_bytes = st.lists(st.sampled_from(
    [b"spiffe://a/b", b"dns:x", b"cn:y", b"a.example", b"\x00", b"\n", b"\x7f", b"\x85",
     b"\xff", b":", b"/", b"x"]), max_size=4).map(b"".join)
_names = st.lists(st.tuples(st.sampled_from([2, 6]), _name_bytes), max_size=3)


@QUICK
@given(_names, st.text(alphabet=st.sampled_from("ab\x00\n\x85:"), max_size=6))
def test_identity_from_any_certificate(names: list[tuple[int, bytes]], common_name: str
                                       ) -> None:
    """Any URI and DNS SANs and CN: an identity by the rules, or IdentityError; a name
    with a control character, or an empty one, never yields one."""
    data = (_general_names(*names) if names else b"") + b"\xfe" + common_name.encode()
    try:
        source = _identity(data)
    except IdentityError:
        return
    raw = [value for _tag, value in names] + [common_name.encode()]
    assert not any(re.search(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]", value) for value in raw)
    assert all(value for _tag, value in names)  # an empty name refuses the certificate
    uris = [value for tag, value in names if tag == 6]
    assert source == ("uri-san" if uris else "dns-san" if names else "common-name")
    if uris:  # exactly one, and a URI can never pass for a DNS name or a CN
        assert len(uris) == 1 and not uris[0].lower().startswith((b"dns:", b"cn:"))


# The matcher: allowed exactly when one single grant covers RPC, key and step.

_alias = st.sampled_from(["build", "owner", "b2"])
_step = st.sampled_from(["build", "test-1", "deploy"])
_grant_patterns = st.lists(st.sampled_from(["build", "b*", "owner", "test-*", "*", "deploy"]),
                           min_size=1, max_size=2)


@st.composite
def _grants(draw: st.DrawFn) -> list[Grant]:
    grants = []
    for number in range(1, draw(st.integers(min_value=0, max_value=3)) + 1):
        grants.append(Grant(
            number=number,
            identities=frozenset(draw(st.lists(st.sampled_from(["dns:a", "dns:b"]),
                                               min_size=1, max_size=2))),
            rpcs=frozenset(draw(st.lists(st.sampled_from(["SignLink", "SignLayout", "*"]),
                                         min_size=1, max_size=2))),
            link_keys=tuple(draw(_grant_patterns)), steps=tuple(draw(_grant_patterns)),
            layout_keys=tuple(draw(_grant_patterns))))
    return grants


@QUICK
@given(_grants(), st.sampled_from(["dns:a", "dns:b", "dns:c"]),
       st.sampled_from(["SignLink", "SignLayout"]), _alias, _step)
def test_matcher_against_a_brute_force_oracle(grants: list[Grant], identity: str, rpc: str,
                                              alias: str, step: str) -> None:
    scope = KeyScope.LINK if rpc == "SignLink" else KeyScope.LAYOUT
    request = AccessRequest(identity=identity, rpc=rpc, key_scope=scope, key_alias=alias,
                            step=step if rpc == "SignLink" else None)
    decision = Policy(grants=tuple(grants)).decide(request)

    def covers(grant: Grant) -> bool:
        keys = grant.link_keys if rpc == "SignLink" else grant.layout_keys
        return (identity in grant.identities and (rpc in grant.rpcs or "*" in grant.rpcs)
                and any(fnmatch.fnmatchcase(alias, p) for p in keys)
                and (rpc != "SignLink" or any(fnmatch.fnmatchcase(step, p)
                                              for p in grant.steps)))

    assert decision.allowed == any(covers(g) for g in grants)
    assert decision.known == any(identity in g.identities for g in grants)
