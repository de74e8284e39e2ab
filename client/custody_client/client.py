"""A typed, synchronous client for the Custody API (custody.v1).

    with CustodyClient(ConnectionSettings(address="custody.internal:50051")) as custody:
        draft = LinkDraft(step_name="build", command=["make"])
        draft.add_materials(iter_artifacts(["."]))
        ...
        signed = custody.sign_link(draft)

Every call has one deadline (`ConnectionSettings.timeout`) that covers its retries;
UNAVAILABLE is retried with exponential backoff and jitter, except for CreateKey and
RotateKey, which are not idempotent. Failures raise ClientError with the status code name
and one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import grpc

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_client.errors import ClientError
from custody_client.link_draft import ENVELOPE_TO_PB, LinkDraft
from custody_client.models import (
    EnvelopeKind,
    KeyAlgorithm,
    KeyInfo,
    KeyRotation,
    KeyVersionInfo,
    LayoutKey,
    SignedMetadata,
    VerifyFailure,
    VerifyResult,
    VerifyWarning,
)
from custody_client.settings import NO_RETRIES, ConnectionSettings, RetryPolicy

__all__ = ["CustodyClient", "LinkDraft"]

_Response = TypeVar("_Response")

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}, without grpcio-health-checking

_ENVELOPE_FROM_PB = {v: k for k, v in ENVELOPE_TO_PB.items()}
ALGORITHM_TO_PB = {
    KeyAlgorithm.ECDSA_P256: pb.KEY_ALGORITHM_ECDSA_P256,
    KeyAlgorithm.ECDSA_P384: pb.KEY_ALGORITHM_ECDSA_P384,
    KeyAlgorithm.ED25519: pb.KEY_ALGORITHM_ED25519,
    KeyAlgorithm.RSA_3072: pb.KEY_ALGORITHM_RSA_3072,
}
_ALGORITHM_FROM_PB = {v: k for k, v in ALGORITHM_TO_PB.items()}


class CustodyClient:
    """Calls custody.v1.Custody and custody.v1.KeyAdmin over one channel."""

    def __init__(self, settings: ConnectionSettings | None = None) -> None:
        self.settings = settings or ConnectionSettings()
        options = [
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.enable_retries", 0),  # retries are ours: bounded, with jitter, logged
        ]
        tls = self.settings.tls
        if tls is None:
            self._channel = grpc.insecure_channel(self.settings.address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
            self._channel = grpc.secure_channel(self.settings.address, credentials,
                                                options=options)
        self._custody = pb_grpc.CustodyStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = pb_grpc.KeyAdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._sign_link_raw = self._channel.unary_unary(
            "/custody.v1.Custody/SignLink", request_serializer=_as_bytes,
            response_deserializer=pb.SignLinkResponse.FromString)

    def __enter__(self) -> CustodyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def check_server(self) -> None:
        """Preflight: one standard health check, retried like any call, so that a dead or
        misconfigured server is found before a long build rather than after it."""
        check = self._channel.unary_unary(_HEALTH_CHECK, request_serializer=bytes,
                                          response_deserializer=bytes)
        try:
            status = self._call("health check", check, b"")  # HealthCheckRequest{service=""}
        except ClientError as error:
            if error.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise
            return  # it answered (perhaps without a health service): reachable
        if status != _SERVING:
            raise ClientError(f"the Custody server at {self.settings.address} is not serving "
                              "(shutting down?) (UNAVAILABLE)", code="UNAVAILABLE")

    # Custody service

    def sign_link(self, draft: LinkDraft, *, key_alias: str = "",
                  envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> SignedMetadata:
        """Sign a recorded link with a service key (empty alias: the server's default)."""
        # The draft is already in wire format: send its bytes as they are.
        response = self._call("SignLink", self._sign_link_raw,
                              draft.request_bytes(key_alias=key_alias, envelope=envelope))
        return _signed(response, file_name=response.file_name)

    def sign_layout(self, layout: bytes, *, key_alias: str = "",
                    envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> SignedMetadata:
        response = self._call("SignLayout", self._custody.SignLayout, pb.SignLayoutRequest(
            layout=layout, key_alias=key_alias,
            envelope=cast("pb.Envelope", ENVELOPE_TO_PB[envelope])))
        return _signed(response, file_name="", warnings=tuple(response.warnings))

    def verify(
        self,
        *,
        layout: bytes,
        layout_keys: Sequence[LayoutKey],
        links: Mapping[str, bytes],
        inspection_links: Mapping[str, bytes] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> VerifyResult:
        request = pb.VerifyRequest(
            layout=layout,
            layout_keys=[pb.TrustedKey(alias=k.alias) if k.alias else
                         pb.TrustedKey(public_key_json=k.public_key_json)
                         if k.public_key_json else pb.TrustedKey(public_key_pem=k.public_key_pem)
                         for k in layout_keys],
            links=[pb.MetadataFile(path=p, content=c) for p, c in sorted(links.items())],
            inspection_links=[pb.MetadataFile(path=p, content=c)
                              for p, c in sorted((inspection_links or {}).items())],
            parameters=dict(parameters or {}),
        )
        response = self._call("Verify", self._custody.Verify, request)
        try:
            verdict = json.loads(response.verdict_json) if response.verdict_json else {}
        except ValueError:
            verdict = {}
        return VerifyResult(
            passed=response.passed,
            failures=tuple(VerifyFailure(stage=f.stage, step=f.step, rule=f.rule,
                                         paths=tuple(f.paths), reason=f.reason)
                           for f in response.failures),
            warnings=tuple(VerifyWarning(stage=w.stage, step=w.step, message=w.message)
                           for w in response.warnings),
            verdict=verdict if isinstance(verdict, dict) else {},
        )

    # KeyAdmin service

    def create_key(self, alias: str,
                   algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256) -> KeyInfo:
        # Not retried: a retry after a lost response would report ALREADY_EXISTS.
        response = self._call("CreateKey", self._admin.CreateKey, pb.CreateKeyRequest(
            alias=alias, algorithm=ALGORITHM_TO_PB[algorithm]), retry=NO_RETRIES)
        return _key_info(response.key)

    def list_keys(self) -> tuple[KeyInfo, ...]:
        response = self._call("ListKeys", self._admin.ListKeys, pb.ListKeysRequest())
        return tuple(_key_info(key) for key in response.keys)

    def get_public_key(self, alias: str) -> KeyInfo:
        response = self._call("GetPublicKey", self._admin.GetPublicKey,
                              pb.GetPublicKeyRequest(alias=alias))
        return _key_info(response.key)

    def rotate_key(self, alias: str, *, overlap: timedelta | None = None,
                   algorithm: KeyAlgorithm | None = None) -> KeyRotation:
        """A new active version; the old one verifies for `overlap` (None: the server's
        configured overlap for the alias, 72 h by default)."""
        request = pb.RotateKeyRequest(alias=alias)
        if algorithm is not None:
            request.algorithm = ALGORITHM_TO_PB[algorithm]
        if overlap is not None:
            request.overlap.FromTimedelta(overlap)
        # Not retried: a retry after a lost response would rotate twice.
        response = self._call("RotateKey", self._admin.RotateKey, request, retry=NO_RETRIES)
        return KeyRotation(
            key=_key_info(response.key),
            previous_version=response.previous_version,
            new_version=response.new_version,
            previous_verify_until=_time(response, "previous_verify_until"),
            warnings=tuple(response.warnings),
        )

    def retire_key(self, alias: str, *, version: int) -> KeyInfo:
        """End a verify-only version's window now (idempotent)."""
        response = self._call("RetireKey", self._admin.RetireKey,
                              pb.RetireKeyRequest(alias=alias, version=version))
        return _key_info(response.key)

    def _call(self, name: str, method: Callable[..., _Response], request: Any,
              *, retry: RetryPolicy | None = None) -> _Response:
        policy = retry or self.settings.retry
        deadline = time.monotonic() + self.settings.timeout
        attempt = 1
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = (error.details() if isinstance(error, grpc.Call) else "") or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < policy.max_attempts:
                    pause = policy.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        attempt += 1
                        continue
                raise self._error(name, code, details, attempts=attempt) from None

    def _error(self, name: str, code: grpc.StatusCode, details: str, *,
               attempts: int) -> ClientError:
        detail = " ".join(details.split()) or code.name.lower()
        if code == grpc.StatusCode.UNAVAILABLE:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            message = (f"cannot reach the Custody server at {self.settings.address} over "
                       f"{self.settings.transport}{tries}: {detail}")
            if hint := _connection_hint(detail, self.settings):
                message += f" -- {hint}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = (f"{name}: no answer from {self.settings.address} within "
                       f"{self.settings.timeout:g} s")
        else:
            message = f"{name}: {detail}"
        return ClientError(f"{message} ({code.name})", code=code.name)


def _as_bytes(data: bytes) -> bytes:
    return data


def _connection_hint(detail: str, settings: ConnectionSettings) -> str:
    """What to check, from gRPC's description of a failed connection."""
    text = detail.lower()
    if "connection refused" in text:
        return "is custody-server running there?"
    tls = settings.tls
    if "wrong_version_number" in text or "packet length too long" in text:
        return "the server does not seem to speak TLS: try --plaintext"
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return "the server's certificate is not signed by the CA given with --ca"
    if not any(word in text for word in ("socket closed", "handshake", "ssl", "tls")):
        return ""
    if tls is None:
        return ("the server may require TLS: pass --ca, --cert and --key-file "
                "(or CUSTODY_STATE_DIR for the local default)")
    if tls.cert is None:
        return "the server may require a client certificate: pass --cert and --key-file"
    return "the TLS handshake failed: check --ca, --cert and --key-file"


def _signed(response: Any, *, file_name: str, warnings: tuple[str, ...] = ()) -> SignedMetadata:
    return SignedMetadata(
        content=bytes(response.signed),
        file_name=file_name,
        keyid=response.keyid,
        key_alias=response.key_alias,
        key_version=response.key_version,
        envelope=_ENVELOPE_FROM_PB.get(response.envelope, EnvelopeKind.METABLOCK),
        sha256=response.sha256,
        warnings=warnings,
    )


def _key_info(key: pb.KeyInfo) -> KeyInfo:
    return KeyInfo(
        alias=key.alias,
        algorithm=_ALGORITHM_FROM_PB.get(key.algorithm),
        scheme=key.scheme,
        keyid=key.keyid,
        public_key_pem=key.public_key_pem,
        public_key_json=key.public_key_json,
        versions=tuple(KeyVersionInfo(
            version=v.version, keyid=v.keyid, state=v.state, created=_time(v, "created"),
            verify_until=_time(v, "verify_until"), retired=_time(v, "retired"),
            destroyed=_time(v, "destroyed"),
        ) for v in key.versions),
        rotation_period=(key.rotation_period.ToTimedelta()
                         if key.HasField("rotation_period") else None),
        next_rotation=_time(key, "next_rotation"),
    )


def _time(message: Any, name: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime, or None when unset."""
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value
