"""Key administration, health and reflection on the real server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from custody_api.v1 import custody_pb2 as pb

ALGORITHMS = {
    pb.KEY_ALGORITHM_ECDSA_P256: "ecdsa-sha2-nistp256",
    pb.KEY_ALGORITHM_ECDSA_P384: "ecdsa-sha2-nistp384",
    pb.KEY_ALGORITHM_ED25519: "ed25519",
    pb.KEY_ALGORITHM_RSA_3072: "rsassa-pss-sha256",
}


@pytest.mark.parametrize(("algorithm", "scheme"), ALGORITHMS.items())
def test_create_key_then_sign_with_it(custody: Any, key_admin: Any, service: Any,
                                      algorithm: pb.KeyAlgorithm, scheme: str) -> None:
    alias = f"k-{uuid.uuid4().hex[:12]}"
    created = key_admin.CreateKey(pb.CreateKeyRequest(alias=alias, algorithm=algorithm)).key
    assert created.alias == alias
    assert created.scheme == scheme
    assert [(v.version, v.state) for v in created.versions] == [(1, "active"), (2, "next")]
    assert created.next_version == 2
    assert json.loads(created.versions[1].public_key_json)["scheme"] == scheme
    key_dict = json.loads(created.public_key_json)
    assert key_dict["scheme"] == scheme
    if scheme != "ed25519":
        load_pem_public_key(created.public_key_pem.encode())  # a real SPKI PEM

    # The private keys (the next version's too) are inside the token, sensitive and not
    # extractable.
    for version in (1, 2):
        attributes = service.store.private_key_attributes(f"custody:{alias}:v{version}")
        assert attributes["sensitive"] is True
        assert attributes["extractable"] is False

    listed = {k.alias: k for k in key_admin.ListKeys(pb.ListKeysRequest()).keys}
    assert listed[alias].keyid == created.keyid
    signed = custody.SignLink(pb.SignLinkRequest(step_name="s", key_alias=alias))
    assert signed.keyid == created.keyid


def test_create_existing_alias_is_already_exists(key_admin: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        key_admin.CreateKey(pb.CreateKeyRequest(alias="build"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(("alias", "code"), [
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("UPPER", grpc.StatusCode.INVALID_ARGUMENT),
    ("x" * 500, grpc.StatusCode.INVALID_ARGUMENT),
    ("missing", grpc.StatusCode.NOT_FOUND),
])
def test_get_public_key_errors(key_admin: Any, alias: str, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=alias))
    assert caught.value.code() == code


def test_health_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service_name in ("", "custody.v1.Custody", "custody.v1.KeyAdmin"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service_name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"custody.v1.Custody", "custody.v1.KeyAdmin", "grpc.health.v1.Health"} <= names


def test_request_id_trailer(key_admin: Any) -> None:
    _, call = key_admin.ListKeys.with_call(pb.ListKeysRequest())
    trailers = dict(call.trailing_metadata())
    assert len(trailers["x-request-id"]) == 32
