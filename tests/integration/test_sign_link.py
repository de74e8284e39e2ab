"""SignLink end to end: real server, real SoftHSM token, reference in-toto as the oracle."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import grpc
import pytest
from in_toto.models.metadata import Metadata
from securesystemslib.signer import SSlibKey

from custody_api.v1 import custody_pb2 as pb

ARTIFACTS = {
    "src/main.c": {"sha256": "a" * 64},
    "README.md": {"sha256": "b" * 64},
}


def _link_request(**overrides: Any) -> pb.SignLinkRequest:
    fields: dict[str, Any] = {
        "step_name": "build",
        "command": ["make", "all"],
        "materials": [pb.Artifact(path=p, digest=d) for p, d in ARTIFACTS.items()],
        "products": [pb.Artifact(path="bin/app", digest={"sha256": "c" * 64})],
        "byproducts": pb.Byproducts(stdout="ok\n", stderr="", return_value=0),
        "environment": {"workdir": "/src"},
    }
    fields.update(overrides)
    return pb.SignLinkRequest(**fields)


def _reference_key(key_admin: Any, alias: str) -> SSlibKey:
    info = key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=alias)).key
    data = json.loads(info.public_key_json)
    return SSlibKey.from_dict(info.keyid, {k: v for k, v in data.items() if k != "keyid"})


@pytest.mark.parametrize("envelope", [pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE])
def test_signed_link_verifies_with_reference(custody: Any, key_admin: Any, tmp_path: Any,
                                             envelope: int) -> None:
    response = custody.SignLink(_link_request(envelope=envelope))
    assert response.key_alias == "build"
    assert response.file_name == f"build.{response.keyid[:8]}.link"
    path = tmp_path / response.file_name
    path.write_bytes(response.signed)

    metadata = Metadata.load(str(path))
    metadata.verify_signature(_reference_key(key_admin, "build").to_dict()
                              | {"keyid": response.keyid})
    link = metadata.get_payload()
    assert link.name == "build"
    assert link.command == ["make", "all"]
    assert link.materials == ARTIFACTS
    assert link.products == {"bin/app": {"sha256": "c" * 64}}
    assert link.byproducts == {"stdout": "ok\n", "stderr": "", "return-value": 0}


def test_statement_envelope(custody: Any, key_admin: Any) -> None:
    response = custody.SignLink(_link_request(envelope=pb.ENVELOPE_STATEMENT))
    envelope = json.loads(response.signed)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://in-toto.io/attestation/link/v0.3"
    assert statement["subject"] == [{"name": "bin/app", "digest": {"sha256": "c" * 64}}]
    assert statement["predicate"]["name"] == "build"
    # The signature is a DSSE signature over PAE by the build key.
    key = _reference_key(key_admin, "build")
    from securesystemslib.dsse import Envelope

    Envelope.from_dict(envelope).verify([key], 1)
    payload_type = envelope["payloadType"].encode()
    payload = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    assert response.sha256 == hashlib.sha256(pae).hexdigest()


def test_unknown_alias_is_not_found(custody: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        custody.SignLink(_link_request(key_alias="no-such-key"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-key" in (caught.value.details() or "")


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"step_name": ""}, "step_name"),
    ({"materials": [pb.Artifact(path="a", digest={"sha256": "x"}),
                    pb.Artifact(path="a", digest={"sha256": "y"})]}, "duplicate"),
    ({"key_alias": "Bad Alias!"}, "alias"),
    ({"envelope": 99}, "envelope"),
])
def test_bad_link_requests_are_invalid_argument(custody: Any, overrides: dict[str, Any],
                                                needle: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        custody.SignLink(_link_request(**overrides))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (caught.value.details() or "").lower()
