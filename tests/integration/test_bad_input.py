"""Bad input to every RPC gets a clear status and message; the server stays up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custody_api.v1 import custody_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# No such KeyAlgorithm value: the server must refuse it, not guess.
UNKNOWN_ALGORITHM = cast(pb.KeyAlgorithm, 42)

VALID_LAYOUT: dict[str, Any] = {
    "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "", "keys": {},
    "steps": [{"_type": "step", "name": "s", "threshold": 1, "pubkeys": ["alias:build"],
               "expected_command": [], "expected_materials": [], "expected_products": []}],
    "inspect": [],
}


def _layout(**changes: Any) -> bytes:
    return json.dumps({**VALID_LAYOUT, **changes}).encode()


def _signed_layout(custody: Any) -> bytes:
    return bytes(custody.SignLayout(pb.SignLayoutRequest(layout=_layout())).signed)


CASES: list[tuple[str, Callable[[Any, Any], Any], grpc.StatusCode, str]] = [
    ("sign-layout empty", lambda c, k: c.SignLayout(pb.SignLayoutRequest()), INVALID, "layout"),
    ("sign-layout truncated",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout()[:40])), INVALID, "json"),
    ("sign-layout steps wrong type",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout(steps="nope"))),
     INVALID, "steps"),
    ("sign-layout bad expires",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout(expires="tomorrow"))),
     INVALID, "expires"),
    ("sign-layout unknown functionary alias",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout(steps=[
         {**VALID_LAYOUT["steps"][0], "pubkeys": ["alias:ghost"]}]))),
     grpc.StatusCode.NOT_FOUND, "ghost"),
    ("sign-layout statement envelope",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout(),
                                                    envelope=pb.ENVELOPE_STATEMENT)),
     INVALID, "statement"),
    ("sign-layout unknown owner alias",
     lambda c, k: c.SignLayout(pb.SignLayoutRequest(layout=_layout(), key_alias="ghost")),
     grpc.StatusCode.NOT_FOUND, "ghost"),
    ("sign-link bad digest",
     lambda c, k: c.SignLink(pb.SignLinkRequest(step_name="s", products=[
         pb.Artifact(path="a", digest={"sha256": "not hex"})])), INVALID, "a"),
    ("verify empty", lambda c, k: c.Verify(pb.VerifyRequest()), INVALID, "layout"),
    ("verify garbage key json",
     lambda c, k: c.Verify(pb.VerifyRequest(layout=_signed_layout(c), layout_keys=[
         pb.TrustedKey(public_key_json="{\"keytype\": 5}")])), INVALID, "key"),
    ("verify garbage key pem",
     lambda c, k: c.Verify(pb.VerifyRequest(layout=_signed_layout(c), layout_keys=[
         pb.TrustedKey(public_key_pem="-----BEGIN PUBLIC KEY-----\nxx\n")])), INVALID, "pem"),
    ("verify empty trusted key",
     lambda c, k: c.Verify(pb.VerifyRequest(layout=_signed_layout(c),
                                            layout_keys=[pb.TrustedKey()])), INVALID, "empty"),
    ("verify duplicate link paths",
     lambda c, k: c.Verify(pb.VerifyRequest(
         layout=_signed_layout(c), layout_keys=[pb.TrustedKey(alias="owner")],
         links=[pb.MetadataFile(path="a.link", content=b"{}"),
                pb.MetadataFile(path="a.link", content=b"{}")])), INVALID, "duplicate"),
    ("create-key unknown algorithm",
     lambda c, k: k.CreateKey(pb.CreateKeyRequest(alias="x-alg", algorithm=UNKNOWN_ALGORITHM)),
     INVALID, "algorithm"),
    ("create-key empty alias",
     lambda c, k: k.CreateKey(pb.CreateKeyRequest()), INVALID, "alias"),
]


@pytest.mark.parametrize(("name", "call", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(custody: Any, key_admin: Any, channel: grpc.Channel, name: str,
                   call: Callable[[Any, Any], Any], code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(custody, key_admin)
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    assert needle in details.lower()
    assert "Traceback" not in details
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_garbage_links_fail_verification_not_the_rpc(custody: Any) -> None:
    """A link file that is not metadata is the verdict's business, named precisely."""
    response = custody.Verify(pb.VerifyRequest(
        layout=_signed_layout(custody), layout_keys=[pb.TrustedKey(alias="owner")],
        links=[pb.MetadataFile(path="s.12345678.link", content=b"\xff\xfe garbage")]))
    assert not response.passed
    assert response.failures


def test_oversized_message_is_refused(service: Any) -> None:
    big = 65 * 1024 * 1024
    with service.open_channel([("grpc.max_send_message_length", big + 1024)]) as channel:
        from custody_api.v1 import custody_pb2_grpc

        stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Verify(pb.VerifyRequest(layout=b"x" * big))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_too_many_artifacts_is_refused_before_signing(service: Any) -> None:
    from custody_core.api_enums import EnvelopeKind
    from custody_server.audit_events import MemoryAuditSink
    from custody_server.errors import LimitExceededError
    from custody_server.signing import LinkRequest, SigningService

    audit = MemoryAuditSink()
    signing = SigningService(keys=service.keys, audit=audit, max_artifacts=2)
    request = LinkRequest(step_name="s", command=(), byproducts={}, environment={},
                          materials={"a": {"sha256": "ab" * 32}, "b": {"sha256": "ab" * 32}},
                          products={"c": {"sha256": "ab" * 32}}, key_alias="build",
                          envelope=EnvelopeKind.METABLOCK)
    with pytest.raises(LimitExceededError, match="3 artifacts is over the limit of 2"):
        signing.sign_link(request, caller="test")
    [event] = audit.events  # the refusal is on the record, and nothing was signed
    assert (event.action, event.outcome) == ("sign-link", "failure")
    assert "limit" in event.reason
