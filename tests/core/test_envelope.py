"""Metablock and DSSE envelopes: parsing, exact signed bytes, verification, errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from formats_support import DEMO, DEMO_DSSE, core_signer, demo_layout_keys
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope as ReferenceEnvelope
from securesystemslib.formats import encode_canonical as reference_encode_canonical

from custody_core.envelope import (
    MAX_SIGNATURE_BYTES,
    PAYLOAD_TYPE_INTOTO,
    Envelope,
    Signature,
    pae,
    parse_envelope,
    prepare_dsse,
    prepare_metablock,
    sign_dsse,
    sign_metablock,
)
from custody_core.errors import MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.software_signer import SoftwareSigner

FIXTURE_LINKS = ["write-code.776a00e2.link", "package.2f89b927.link"]


def test_pae_matches_the_dsse_spec_vector() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t\u00e9", b"") == "DSSEv1 3 t\u00e9 0 ".encode()


@pytest.mark.parametrize("name", FIXTURE_LINKS)
def test_fixture_metablock_links_verify_under_legacy_keyids(name: str) -> None:
    data = (DEMO / name).read_bytes()
    envelope = parse_envelope(data)
    keys = demo_layout_keys()
    assert envelope.kind == "metablock"
    assert envelope.payload_type is None
    signed = json.loads(data)["signed"]
    assert envelope.signed_bytes == str(reference_encode_canonical(signed)).encode()
    assert envelope.payload == signed
    signer_keyid = envelope.signatures[0].keyid
    assert name.split(".")[1] == signer_keyid[:8]
    assert envelope.verified_keyids(keys) == {signer_keyid}


@pytest.mark.parametrize("name", FIXTURE_LINKS)
def test_fixture_dsse_links_verify_under_legacy_keyids(name: str) -> None:
    data = (DEMO_DSSE / name).read_bytes()
    envelope = parse_envelope(data)
    reference = ReferenceEnvelope.from_dict(json.loads(data))
    assert envelope.kind == "dsse"
    assert envelope.payload_type == PAYLOAD_TYPE_INTOTO
    assert envelope.signed_bytes == reference.pae()
    assert envelope.payload == json.loads(reference.payload)
    assert envelope.verified_keyids(demo_layout_keys()) == {envelope.signatures[0].keyid}


def test_keys_under_other_keyids_do_not_match() -> None:
    envelope = parse_envelope((DEMO / FIXTURE_LINKS[0]).read_bytes())
    keyid = envelope.signatures[0].keyid
    legacy = demo_layout_keys()[keyid]
    # Same key material, modern keyid: the signature names the legacy id, so no match.
    modern = PublicKey.from_pem(legacy.public)
    assert envelope.verified_keyids({modern.keyid: modern}) == frozenset()
    assert envelope.verified_keyids({}) == frozenset()


def test_tampered_payload_does_not_verify() -> None:
    document = json.loads((DEMO / FIXTURE_LINKS[1]).read_bytes())
    document["signed"]["products"]["foo.tar.gz"]["sha256"] = "00" * 32
    envelope = parse_envelope(json.dumps(document).encode())
    assert envelope.verified_keyids(demo_layout_keys()) == frozenset()

    dsse = json.loads((DEMO_DSSE / FIXTURE_LINKS[1]).read_bytes())
    payload = base64.b64decode(dsse["payload"]).replace(b"package", b"packagE")
    dsse["payload"] = base64.b64encode(payload).decode()
    assert parse_envelope(json.dumps(dsse).encode()).verified_keyids(demo_layout_keys()) == set()


def test_metablock_bytes_are_independent_of_layout_whitespace_and_order() -> None:
    signer = core_signer("ecdsa")
    signed = {"_type": "link", "name": "x", "z": ["\n", {"b": 1, "a": 2}]}
    data = sign_metablock(signed, [signer])
    compact = json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode()
    shuffled = json.dumps(
        {
            "signed": {"z": signed["z"], "name": "x", "_type": "link"},
            "signatures": json.loads(data)["signatures"],
        }
    ).encode()
    keys = {signer.public_key.keyid: signer.public_key}
    for variant in (data, compact, shuffled):
        assert parse_envelope(variant).verified_keyids(keys) == {signer.public_key.keyid}


def test_one_good_signature_among_bad_ones_is_enough() -> None:
    good, other = core_signer("ed25519"), core_signer("ecdsa")
    document = json.loads(sign_metablock({"_type": "link"}, [good, other]))
    document["signatures"].insert(0, {"keyid": good.public_key.keyid, "sig": "00" * 64})
    document["signatures"][2]["sig"] = "11" * 70  # other's signature is now junk
    envelope = parse_envelope(json.dumps(document).encode())
    keys = {key.keyid: key for key in (good.public_key, other.public_key)}
    assert envelope.verified_keyids(keys) == {good.public_key.keyid}


def test_sign_dsse_round_trip_and_payload_bytes_as_received() -> None:
    signer = core_signer("rsa")
    payload = b'{"b": 1, "a": 2.5}'  # floats are fine in DSSE: bytes are signed, not JSON
    data = sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer])
    envelope = parse_envelope(data)
    assert envelope.signed_bytes == pae(PAYLOAD_TYPE_INTOTO, payload)
    assert envelope.payload == {"a": 2.5, "b": 1}
    assert envelope.verified_keyids({signer.public_key.keyid: signer.public_key})


def test_dsse_accepts_url_safe_and_unpadded_base64_and_missing_keyid() -> None:
    signer = core_signer("ed25519")
    payload = b'{"_type": "link", "name": "\xc3\xa9?>>"}'
    document = json.loads(sign_dsse(payload, payload_type="t", signers=[signer]))
    signature = document["signatures"][0]
    document["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    signature["sig"] = base64.urlsafe_b64encode(base64.b64decode(signature["sig"])).decode()
    envelope = parse_envelope(json.dumps(document).encode())
    assert envelope.verified_keyids({signer.public_key.keyid: signer.public_key})
    del signature["keyid"]
    envelope = parse_envelope(json.dumps(document).encode())
    assert envelope.signatures[0].keyid == ""
    assert envelope.verified_keyids({signer.public_key.keyid: signer.public_key}) == set()


def test_unsigned_layout_template_parses() -> None:
    envelope = parse_envelope((DEMO / "demo.layout.template").read_bytes())
    assert envelope.signatures == ()
    assert envelope.payload["_type"] == "layout"


def test_signing_refuses_floats_and_faulty_signers() -> None:
    with pytest.raises(MetadataError, match="floats"):
        sign_metablock({"x": 1.5}, [core_signer("ed25519")])

    class FaultySigner:
        public_key = core_signer("ed25519").public_key

        def sign(self, data: bytes) -> bytes:
            return b"\x00" * 64

    with pytest.raises(SignatureError, match="does not verify"):
        sign_metablock({"x": 1}, [FaultySigner()])
    with pytest.raises(SignatureError):
        sign_dsse(b"{}", payload_type="t", signers=[FaultySigner()])


def test_envelope_values_validate_on_construction() -> None:
    with pytest.raises(MetadataError):
        Envelope(kind="dsse", signed_bytes=b"", payload={}, payload_type=None, signatures=())
    with pytest.raises(MetadataError):
        Envelope(kind="metablock", signed_bytes=b"", payload={}, payload_type="t", signatures=())
    with pytest.raises(MetadataError):
        Signature(keyid="k", sig="hex")  # type: ignore[arg-type]


def _metablock(**changes: Any) -> bytes:
    document: dict[str, Any] = {"signed": {"_type": "link"}, "signatures": []}
    document.update(changes)
    return json.dumps(document).encode()


def _dsse(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "payload": base64.b64encode(b"{}").decode(),
        "payloadType": PAYLOAD_TYPE_INTOTO,
        "signatures": [],
    }
    document.update(changes)
    return json.dumps(document).encode()


def _nested(depth: int) -> bytes:
    """A Metablock whose JSON nests `depth` containers deep (the top level is 1)."""
    lists = depth - 2
    return b'{"signed": {"a": ' + b"[" * lists + b"]" * lists + b'}, "signatures": []}'


MALFORMED = [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b"{} []", "invalid JSON"),
    (b"[]", "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b"{}", "neither a Metablock"),
    (b'{"signed": {}, "signed": {}, "signatures": []}', "duplicate key 'signed'"),
    (b'{"signed": {"a": 1, "a": 2}, "signatures": []}', "duplicate key 'a'"),
    (b'{"signed": {"a": NaN}, "signatures": []}', "constant NaN"),
    (b'{"signed": {"a": Infinity}, "signatures": []}', "constant Infinity"),
    (b'{"signed": {"a": 1.5}, "signatures": []}', "floats"),
    (b'{"signed": {"a": 1' + b"0" * 5000 + b"}, \"signatures\": []}", "5001 digits"),
    (b'{"signed": {"a": 1e400}, "signatures": []}', "out of range"),
    (b'{"signed": "\\ud800", "signatures": []}', "lone surrogate"),
    (b'{"signed": {"a": "\\ud800"}, "signatures": []}', "lone surrogate"),
    (_nested(65), "nested deeper than 64"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b'{"signed": {}, "payload": "", "signatures": []}', "both"),
    (_metablock(signed=[]), "'signed' must be a JSON object"),
    (_metablock(signatures={}), "'signatures' must be a list"),
    (_metablock(signatures=None), "'signatures' must be a list"),
    (_metablock(signatures=["x"]), r"signatures\[0\] must be a JSON object"),
    (_metablock(signatures=[{"sig": "00"}]), r"signatures\[0\].keyid"),
    (_metablock(signatures=[{"keyid": 1, "sig": "00"}]), r"signatures\[0\].keyid"),
    (_metablock(signatures=[{"keyid": "k"}]), r"signatures\[0\].sig"),
    (_metablock(signatures=[{"keyid": "k", "sig": ""}]), r"signatures\[0\].sig"),
    (_metablock(signatures=[{"keyid": "k", "sig": "abc"}]), "even-length hex"),
    (_metablock(signatures=[{"keyid": "k", "sig": "zz"}]), "even-length hex"),
    (_metablock(signatures=[{"keyid": "k", "sig": " 00"}]), "even-length hex"),
    (
        _metablock(signatures=[{"keyid": "k", "signature": "00", "other_headers": "00"}]),
        "GPG signature",
    ),
    (_dsse(payload=5), "'payload' must be a base64 string"),
    (_dsse(payload="not base64!"), "not valid base64"),
    (_dsse(payload="abcde"), "not valid base64"),
    (_dsse(payloadType=None), "'payloadType' must be a string"),
    (_dsse(payload=base64.b64encode(b"[]").decode()), "payload must be a JSON object"),
    (_dsse(payload=base64.b64encode(b"\xff").decode()), "DSSE payload: not valid UTF-8"),
    (_dsse(payload=base64.b64encode(b'{"a":1,"a":1}').decode()), "DSSE payload: duplicate"),
    (_dsse(signatures=[{"keyid": "k", "sig": "***"}]), "not valid base64"),
    (_dsse(signatures=[{"keyid": "k", "sig": 5}]), "non-empty base64"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_envelopes_raise_precise_metadata_errors(data: bytes, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_envelope(data)


def test_depth_limit_is_configurable() -> None:
    assert parse_envelope(_nested(64)).kind == "metablock"
    with pytest.raises(MetadataError, match="deeper than 10"):
        parse_envelope(_nested(11), max_depth=10)
    parse_envelope(_nested(100), max_depth=200)


def test_generated_signers_cover_all_schemes() -> None:
    for scheme in ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ed25519"):
        signer = SoftwareSigner.generate(scheme)
        envelope = parse_envelope(sign_metablock({"_type": "layout"}, [signer]))
        assert envelope.verified_keyids({"name": signer.public_key}) == {"name"}


_JSON_TEXT = st.text(alphabet=st.characters(max_codepoint=0x2FF, exclude_categories=["Cs"]))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _JSON_TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_JSON_TEXT, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(signed=st.dictionaries(_JSON_TEXT, _JSON_VALUES, max_size=6))
def test_compact_metablock_is_in_totos_compact_json_whatever_the_strings(
    signed: dict[str, Any],
) -> None:
    # Printable-ASCII documents take the canonical bytes as written; any other string
    # (control characters, DEL, non-ASCII) goes through json.dumps: the bytes must be
    # the same either way.
    content = sign_metablock(signed, [_ED25519], compact=True)
    document = json.loads(content)
    assert document["signed"] == signed
    assert content == json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    [signature] = document["signatures"]
    canonical = reference_encode_canonical(signed)
    assert canonical is not None  # None only when an output function is given
    assert _ED25519.public_key.verify(bytes.fromhex(signature["sig"]), canonical.encode())


_ED25519 = SoftwareSigner.generate("ed25519")


# Strings of what JSON writes escaped: control characters, DEL, non-ASCII of each UTF-8
# length, quotes and backslashes.
_escaped_text = st.text(
    st.sampled_from(["a", " ", "\n", "\t", "\x01", "\x1f", "\x7f", "é", "€", "😀", '"', "\\"]),
    max_size=8,
)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), _escaped_text),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(_escaped_text, children, max_size=3)),
    max_leaves=12,
)


class _CountingSigner:
    def __init__(self, signer: SoftwareSigner) -> None:
        self.public_key = signer.public_key
        self._signer = signer
        self.calls = 0

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self._signer.sign(data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_escaped_text, _json_values, max_size=4),
       st.sampled_from([True, False, None]))
def test_the_size_of_a_signed_file_is_known_before_signing(
        signed: dict[str, Any], compact: bool | None) -> None:
    # Ed25519 signatures have one length (64 bytes): the bound is exact but for the
    # room it leaves for the longest signature.
    signer = _CountingSigner(core_signer("ed25519"))
    keyids = [signer.public_key.keyid]
    unsigned = prepare_metablock(signed, compact=compact)
    bound = unsigned.size_bound(keyids)
    assert signer.calls == 0
    content = unsigned.sign([signer])
    assert signer.calls == 1
    assert content == sign_metablock(signed, [signer], compact=compact)
    assert json.loads(content)["signed"] == signed
    assert bound - len(content) == 2 * (MAX_SIGNATURE_BYTES - 64)
    payload = json.dumps(signed, sort_keys=True).encode()
    dsse = prepare_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, compact=compact)
    bound = dsse.size_bound(keyids)
    content = dsse.sign([signer])
    longest = len(base64.b64encode(bytes(MAX_SIGNATURE_BYTES)))
    assert bound - len(content) == longest - len(base64.b64encode(bytes(64)))


@pytest.mark.parametrize("log", ["\x01" * 5000, "make\n\t\x1b[0m\x7f\"\\" * 900,
                                 "é\x01" * 900])
def test_a_compact_metablock_is_written_as_json_dumps_writes_it(log: str) -> None:
    signer = core_signer("ed25519")
    signed = {"_type": "link", "byproducts": {"stdout": log}, "name": "build"}
    content = sign_metablock(signed, [signer], compact=True)
    expected = json.dumps(json.loads(content) | {"signed": signed}, separators=(",", ":"),
                          sort_keys=True).encode("ascii")
    assert content == expected
