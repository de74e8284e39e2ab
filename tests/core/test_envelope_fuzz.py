"""Fuzzing: whatever bytes come in, parsing raises nothing but MetadataError."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from formats_support import DEMO, DEMO_DSSE, core_signer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from custody_core.envelope import Envelope, parse_envelope
from custody_core.errors import MetadataError
from custody_core.link import link_payload_from_envelope

_KEYS = {signer.public_key.keyid: signer.public_key for signer in [core_signer("ed25519")]}
_FIELD_NAMES = st.sampled_from(
    ["signed", "signatures", "payload", "payloadType", "keyid", "sig", "_type", "subject",
     "predicate", "predicateType", "name", "materials", "products", "other_headers"]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["link", "https://in-toto.io/Statement/v1", "00ff", "AA==", ""]),
)
json_like = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_FIELD_NAMES, st.text(max_size=5)), children, max_size=5),
    ),
    max_leaves=25,
)


def _parse_only_metadata_errors(data: bytes) -> Envelope | None:
    try:
        envelope = parse_envelope(data)
    except MetadataError:
        return None
    envelope.verified_keyids(_KEYS)
    with contextlib.suppress(MetadataError):
        link_payload_from_envelope(envelope)
    return envelope


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _parse_only_metadata_errors(data)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_random_json_documents(value: Any) -> None:
    _parse_only_metadata_errors(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(json_like, json_like, st.sampled_from(["signed", "payload"]))
def test_envelope_shaped_documents(body: Any, signatures: Any, kind: str) -> None:
    if kind == "payload":
        document = {
            "payload": base64.b64encode(json.dumps(body).encode()).decode(),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": signatures,
        }
    else:
        document = {"signed": body, "signatures": signatures}
    _parse_only_metadata_errors(json.dumps(document).encode())


_FIXTURES = [(DEMO / "package.2f89b927.link").read_bytes(),
             (DEMO_DSSE / "package.2f89b927.link").read_bytes()]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_FIXTURES), st.data())
def test_mutated_fixture_bytes(original: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(original) - 1))
    length = data.draw(st.integers(0, 8))
    replacement = data.draw(st.binary(max_size=8))
    _parse_only_metadata_errors(original[:position] + replacement + original[position + length :])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"[", b'{"a":']), min_size=1, max_size=3000))
@example([b"["] * 62)  # 64 levels with the envelope and `signed`: the deepest allowed
@example([b'{"a":'] * 63)
@example([b"["] * 50_000)
def test_deep_nesting(openers: list[bytes]) -> None:
    closers = [b"]" if opener == b"[" else b"}" for opener in reversed(openers)]
    data = b'{"signed":{"x":' + b"".join(openers) + b"0" + b"".join(closers) + b'},"signatures":[]}'
    envelope = _parse_only_metadata_errors(data)
    assert (envelope is not None) == (len(openers) <= 62)
