"""What a request may contain, through a real server (mTLS, SoftHSM token, the audit sink):
one JSON reader for every document (issue 14.2), the step-name grammar (14.4), and work
bounded before anything is signed (14.5).

Each refusal is checked for its status, that the token made no signature, and that the
audit trail holds the refusal."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from policy_support import grant, policy
from security_support import AccessServer, StartServer
from venv_tools import venv_tool

from custody_api.v1 import custody_pb2 as pb
from custody_server.audit_events import AuditEvent
from custody_server.config import Limits
from custody_server.keystore import Pkcs11KeyStore

FREE = "spiffe://example.test/intake"
POLICY = policy(grant([FREE], ["SignLink", "SignLayout", "Verify"], link_keys=["build"],
                      steps=["*"], layout_keys=["owner"]), rate=(100000.0, 100000))
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class TokenSignatures:
    """Counts the signatures the token makes (every key, every thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self.count = 0
        sign = Pkcs11KeyStore.sign

        def counting(store: Pkcs11KeyStore, label: str, data: bytes) -> bytes:
            with self._lock:
                self.count += 1
            return sign(store, label, data)

        monkeypatch.setattr(Pkcs11KeyStore, "sign", counting)


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> TokenSignatures:
    return TokenSignatures(monkeypatch)


@pytest.fixture
def server(start_server: StartServer) -> Iterator[AccessServer]:
    yield start_server(POLICY)


def _stub(server: AccessServer) -> Any:
    return server.custody(server.pki.client(uri=(FREE,)))


def _refused(server: AccessServer, signatures: TokenSignatures, call: Any,
             code: grpc.StatusCode, message: str, *, action: str) -> AuditEvent:
    """Make the call; it must fail with `code` and `message`, the token must make no
    signature, and the refusal must be the one new audit entry (returned)."""
    before, made = len(server.audit.events), signatures.count
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    assert message in str(caught.value.details())
    assert signatures.count == made, "the token signed something"
    [entry] = server.audit.events[before:]
    assert (entry.action, entry.outcome) == (action, "failure")
    assert message in entry.reason
    return entry


def _layout(step: str = "build", **extra: Any) -> dict[str, Any]:
    return {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "reviewed",
            "keys": {}, "inspect": [],
            "steps": [{"_type": "step", "name": step, "threshold": 1,
                       "pubkeys": ["alias:build"], "expected_command": [],
                       "expected_materials": [], "expected_products": []}],
            **extra}


_GOOD = json.dumps(_layout())
_LONG = "7" * 5_000

# Layouts every JSON reader does not read alike. The first is the review's: a reader
# that keeps the last value signed "SMUGGLED" where the reviewer read "reviewed".
DISAGREEING_LAYOUTS = [
    ("duplicate key", _GOOD.replace('"readme": "reviewed"',
                                    '"readme": "reviewed", "readme": "SMUGGLED"'),
     "layout: duplicate key 'readme'"),
    ("duplicate nested key", _GOOD.replace('"threshold": 1', '"threshold": 1, "threshold": 9'),
     "layout: duplicate key 'threshold'"),
    ("NaN", _GOOD[:-1] + ', "x-extra": NaN}', "layout: JSON constant NaN is not allowed"),
    ("Infinity", _GOOD[:-1] + ', "x-extra": [-Infinity]}', "JSON constant -Infinity"),
    ("float out of range", _GOOD[:-1] + ', "x-extra": 1e400}', "number 1e400 is out of range"),
    ("5,000-digit integer", _GOOD[:-1] + f', "x-extra": {_LONG}}}',
     "layout: integer of 5000 digits"),
    ("lone surrogate", _GOOD.replace('"reviewed"', '"review\\ud800ed"'), "lone surrogate"),
    ("not UTF-8", _GOOD.replace("reviewed", "r\udcffeviewed"), "not valid UTF-8 (at byte"),
    ("float", _GOOD[:-1] + ', "x-extra": 1.5}', "fraction or an exponent"),
]


@pytest.mark.parametrize("envelope", [pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE])
@pytest.mark.parametrize(("layout", "message"), [case[1:] for case in DISAGREEING_LAYOUTS],
                         ids=[case[0] for case in DISAGREEING_LAYOUTS])
def test_sign_layout_refuses_json_that_readers_disagree_on(
        server: AccessServer, signatures: TokenSignatures, layout: str, message: str,
        envelope: pb.Envelope) -> None:
    data = layout.encode("utf-8", "surrogateescape")
    stub = _stub(server)
    entry = _refused(server, signatures,
                     lambda: stub.SignLayout(pb.SignLayoutRequest(layout=data, envelope=envelope),
                                             timeout=30),
                     INVALID, message, action="sign-layout")
    assert "SMUGGLED" not in json.dumps(dict(entry.details))  # nothing of it was taken in
    assert stub.SignLayout(pb.SignLayoutRequest(layout=_GOOD.encode(), envelope=envelope),
                           timeout=30).signed  # the server still signs a good one


def test_a_dsse_layout_custody_signs_is_one_custody_verifies(
        server: AccessServer) -> None:
    """The review's second finding: a DSSE layout with NaN in an extra field was signed
    and then refused by Custody's own Verify. What SignLayout signs, Verify reads."""
    stub = _stub(server)
    extra: Any = {"n": 12, "s": "\u00e9\x01"}
    layout = json.dumps(_layout(**{"x-extra": extra})).encode()
    signed = stub.SignLayout(pb.SignLayoutRequest(layout=layout, envelope=pb.ENVELOPE_DSSE),
                             timeout=30).signed
    verdict = stub.Verify(pb.VerifyRequest(layout=signed,
                                           layout_keys=[pb.TrustedKey(alias="owner")]),
                          timeout=30)
    # It fails for want of the build link, not because the layout cannot be read.
    # It fails for want of the build link, past the layout's signature, expiry and keys.
    assert [(f.stage, f.step) for f in verdict.failures] == [("threshold", "build")]


@pytest.mark.parametrize(("key_json", "message"), [
    ('{"keytype": "ecdsa", "keytype": "ed25519"}', "duplicate key 'keytype'"),
    ('{"keytype": "ecdsa", "x": ' + _LONG + "}", "integer of 5000 digits"),
    ('{"keytype": NaN}', "JSON constant NaN"),
    ('{"keytype": "\\udc00"}', "lone surrogate"),
])
def test_verify_refuses_key_json_that_readers_disagree_on(
        server: AccessServer, signatures: TokenSignatures, key_json: str,
        message: str) -> None:
    stub = _stub(server)
    request = pb.VerifyRequest(layout=_GOOD.encode(), layout_keys=[
        pb.TrustedKey(alias="owner"), pb.TrustedKey(public_key_json=key_json)])
    entry = _refused(server, signatures, lambda: stub.Verify(request, timeout=30), INVALID,
                     message, action="verify")
    assert entry.reason.startswith("layout_keys[1].public_key_json: ")  # the field
    assert entry.details["caller"] == FREE


BAD_STEP_NAMES = [
    ("traversal", "build/../../deploy", "has a '..' path segment"),
    ("absolute", "/abs", "is an absolute path"),
    ("NUL", "build\x00.evil", "character U+0000"),
    ("newline", "build\nrelease approved", "character U+000A"),
    ("100,000 characters", "b" * 100_000, "100000 bytes long, over the limit of 240"),
    ("empty segment", "a//b", "an empty path segment"),
    ("dot segment", "./x", "has a '.' path segment"),
    ("backslash", "..\\deploy", "backslash"),
]


@pytest.mark.parametrize(("name", "message"), [case[1:] for case in BAD_STEP_NAMES],
                         ids=[case[0] for case in BAD_STEP_NAMES])
def test_bad_step_names_are_refused_and_audited_whole(
        server: AccessServer, signatures: TokenSignatures, name: str, message: str) -> None:
    stub = _stub(server)
    request = pb.SignLinkRequest(step_name=name, key_alias="build")
    entry = _refused(server, signatures, lambda: stub.SignLink(request, timeout=30), INVALID,
                     message, action="sign-link")
    # Never a silent prefix of the name: its digest and length, and an excerpt that
    # says it is one.
    assert "step" not in entry.details
    assert entry.details["step_bytes"] == len(name.encode())
    assert len(entry.details["step_sha256"]) == 64
    assert entry.details["step_excerpt"].startswith("'")


@pytest.mark.parametrize(("name", "message"), [case[1:] for case in BAD_STEP_NAMES[:4]],
                         ids=[case[0] for case in BAD_STEP_NAMES[:4]])
def test_sign_layout_refuses_bad_step_and_inspection_names(
        server: AccessServer, signatures: TokenSignatures, name: str, message: str) -> None:
    stub = _stub(server)
    as_step = json.dumps(_layout(step=name)).encode()
    _refused(server, signatures,
             lambda: stub.SignLayout(pb.SignLayoutRequest(layout=as_step), timeout=30),
             INVALID, "layout steps[0].name", action="sign-layout")
    inspection = {"_type": "inspection", "name": name, "run": ["true"],
                  "expected_materials": [], "expected_products": []}
    as_inspection = json.dumps(_layout(inspect=[inspection])).encode()
    _refused(server, signatures,
             lambda: stub.SignLayout(pb.SignLayoutRequest(layout=as_inspection), timeout=30),
             INVALID, "layout inspect[0].name", action="sign-layout")


def test_a_step_in_a_directory_signs_and_the_reference_verifies_it(
        server: AccessServer, tmp_path: Path) -> None:
    """`ci/build` stays allowed: in-toto writes its link to ci/build.<keyid8>.link, and
    in-toto-verify finds it there."""
    stub = _stub(server)
    layout = stub.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(_layout(step="ci/build")).encode()), timeout=30)
    link = stub.SignLink(pb.SignLinkRequest(step_name="ci/build", key_alias="build"),
                         timeout=30)
    assert link.file_name == f"ci/build.{link.keyid[:8]}.link"
    assert server.audit.events[-1].details["step"] == "ci/build"
    (tmp_path / "ci").mkdir()
    (tmp_path / link.file_name).write_bytes(link.signed)
    (tmp_path / "root.layout").write_bytes(layout.signed)
    (tmp_path / "owner.pub").write_text(server.keys.get("owner").active.public_key.public)
    result = subprocess.run(
        [venv_tool("in-toto-verify"), "-l", "root.layout", "--verification-keys",
         "owner.pub"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _control_characters(size: int) -> pb.Byproducts:
    return pb.Byproducts(stdout="\x01" * size, stderr="", return_value=0)


def test_byproducts_over_their_limit_are_refused_before_anything_is_signed(
        start_server: StartServer, signatures: TokenSignatures) -> None:
    server = start_server(POLICY, limits=Limits(max_byproducts_bytes=1000))
    stub = _stub(server)
    request = pb.SignLinkRequest(step_name="build", key_alias="build",
                                 byproducts=pb.Byproducts(stdout="o" * 600, stderr="é" * 201))
    _refused(server, signatures, lambda: stub.SignLink(request, timeout=30), INVALID,
             "byproducts (stdout and stderr) are 1002 bytes, over the limit of 1000 "
             "(limits.max_byproducts_bytes)", action="sign-link")
    request.byproducts.stderr = "é" * 200  # exactly the limit
    assert stub.SignLink(request, timeout=30).signed


@pytest.mark.parametrize("envelope", [pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE,
                                      pb.ENVELOPE_STATEMENT])
def test_a_response_that_would_exceed_the_limit_is_refused_before_signing(
        start_server: StartServer, signatures: TokenSignatures, envelope: pb.Envelope) -> None:
    """The review's finding: byproducts of control characters grow sixfold when
    written escaped, so a response over the limit was made, signed and audited as a
    success, and then not delivered. Now the size is known before the signer is asked."""
    limit = 1 << 20
    server = start_server(POLICY, limits=Limits(max_message_bytes=limit,
                                                max_byproducts_bytes=limit))
    stub = _stub(server)
    request = pb.SignLinkRequest(step_name="build", key_alias="build", envelope=envelope,
                                 byproducts=_control_characters(300_000))
    entry = _refused(server, signatures, lambda: stub.SignLink(request, timeout=30),
                     EXHAUSTED, f"over the response limit of {limit}", action="sign-link")
    assert "nothing was signed" in entry.reason
    # A third of it fits, and is signed and delivered whole.
    request.byproducts.stdout = "\x01" * 100_000
    response = stub.SignLink(request, timeout=30)
    assert limit // 2 < response.ByteSize() <= limit
    document = json.loads(response.signed)
    if envelope != pb.ENVELOPE_METABLOCK:
        document = json.loads(base64.b64decode(document["payload"]))
        document = document.get("predicate", document)
    else:
        document = document["signed"]
    assert document["byproducts"]["stdout"] == "\x01" * 100_000


def test_the_reviewed_12_mb_request_is_refused_with_the_default_limits(
        server: AccessServer, signatures: TokenSignatures) -> None:
    stub = _stub(server)
    request = pb.SignLinkRequest(step_name="build", key_alias="build",
                                 byproducts=_control_characters(12_000_000))
    _refused(server, signatures, lambda: stub.SignLink(request, timeout=60), INVALID,
             "over the limit of 8388608 (limits.max_byproducts_bytes)", action="sign-link")
