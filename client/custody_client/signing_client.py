"""The part of the Custody client a build agent needs: a channel, the preflight, SignLink.

`custody run` and `custody record` use it as it is; CustodyClient (custody_client.client)
adds every other call. It loads gRPC but not protobuf's runtime (a cost in every run:
docs/PERFORMANCE.md#client-start-up-and-exit): the request is in wire format already
(LinkDraft) and the reply is read by hand (custody_client.sign_link_reply).

Every call has one deadline (`ConnectionSettings.timeout`) that covers its retries;
UNAVAILABLE is retried with exponential backoff and jitter, except for calls made with
NO_RETRIES (CustodyClient's CreateKey and RotateKey, which are not idempotent) and for a
failed TLS handshake (a certificate either side refuses: retrying cannot fix it). Failures
raise ClientError with the status code name and one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from custody_client.errors import ClientError
from custody_client.link_draft import LinkDraft
from custody_client.models import EnvelopeKind, SignedMetadata
from custody_client.replicas import CHANNEL_OPTIONS, ReplicaChannel
from custody_client.settings import ConnectionSettings, RetryPolicy
from custody_client.sign_link_reply import read_sign_link_response

_Response = TypeVar("_Response")

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}, without grpcio-health-checking


class SigningClient:
    """Calls custody.v1.Custody/SignLink (and the standard health check) over one channel."""

    def __init__(self, settings: ConnectionSettings | None = None) -> None:
        self.settings = settings or ConnectionSettings()
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.enable_retries", 0),  # retries are ours: bounded, with jitter, logged
            *CHANNEL_OPTIONS,  # replicas behind a DNS name: balanced, reconnected quickly
        ]
        addresses = self.settings.addresses
        self._channel: grpc.Channel
        if len(addresses) == 1:
            self._channel = self._open_channel(addresses[0], options)
        else:  # several replicas: balanced, and a retry moves to another one
            self._channel = ReplicaChannel([self._open_channel(address, options)
                                            for address in addresses])
        # Bytes in, bytes out: the draft is in wire format already, the reply read by hand.
        self._sign_link_raw = self._channel.unary_unary(
            "/custody.v1.Custody/SignLink", request_serializer=_as_bytes,
            response_deserializer=_as_bytes)

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        tls = self.settings.tls
        if tls is None:
            return grpc.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
        return grpc.secure_channel(address, credentials, options=options)

    def __enter__(self) -> SigningClient:
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
        for _ in self.settings.addresses:  # replicas: one not serving, ask the next one
            try:
                status = self._call("health check", check, b"")  # HealthCheckRequest{""}
            except ClientError as error:
                if error.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
                return  # it answered (perhaps without a health service): reachable
            if status == _SERVING:
                return
        raise ClientError(f"the Custody server at {self.settings.address} is not serving "
                          "(its token or audit trail is unavailable, or it is shutting down; "
                          "it says which in its log) (UNAVAILABLE)", code="UNAVAILABLE")

    def sign_link(self, draft: LinkDraft, *, key_alias: str = "",
                  envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> SignedMetadata:
        """Sign a recorded link with a service key (empty alias: the server's default)."""
        reply: bytes = self._call("SignLink", self._sign_link_raw,
                                  draft.request_bytes(key_alias=key_alias, envelope=envelope))
        return read_sign_link_response(reply)

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
                if (code == grpc.StatusCode.UNAVAILABLE and attempt < policy.max_attempts
                        and not _handshake_failed(details, self.settings)):
                    pause = policy.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        attempt += 1
                        continue
                raise self._error(name, code, details, attempts=attempt) from None

    def _error(self, name: str, code: grpc.StatusCode, details: str, *,
               attempts: int) -> ClientError:
        detail = " ".join(details.split()) or code.name.lower()
        if code == grpc.StatusCode.UNAVAILABLE and _handshake_failed(detail, self.settings):
            message = (f"the TLS handshake with the Custody server at {self.settings.address} "
                       f"failed (not retried): {detail}")
            if hint := _connection_hint(detail, self.settings):
                message += f" -- {hint}"
        elif code == grpc.StatusCode.UNAVAILABLE:
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


# gRPC's words for a TLS handshake that failed: a certificate refused by this side
# ("Tls handshake failed ... CERTIFICATE_VERIFY_FAILED", a name mismatch) or by the
# server, which then closes the connection during the handshake ("Socket closed").
_HANDSHAKE_WORDS = ("handshake failed", "ssl_error", "certificate_verify_failed",
                    "certificate verify failed", "peer name", "tsi_")


def _handshake_failed(detail: str, settings: ConnectionSettings) -> bool:
    """Whether an UNAVAILABLE is a failed TLS handshake rather than a server that is down
    (connection refused, reset, timed out): not worth a retry."""
    if settings.tls is None:
        return False
    text = detail.lower()
    if any(word in text for word in _HANDSHAKE_WORDS):
        return True
    # The server refuses a client certificate (or its absence) by closing the connection
    # it was opening.
    # (gRPC's words for a connection that failed, not a call cut: "failed to connect to all
    # addresses", or with round_robin "connections to all backends failing").
    return "socket closed" in text and ("failed to connect" in text
                                        or "connections to all backends" in text)


def _connection_hint(detail: str, settings: ConnectionSettings) -> str:
    """What to check, from gRPC's description of a failed connection."""
    text = detail.lower()
    if "connection refused" in text:
        return "is custody-server running there?"
    tls = settings.tls
    if "wrong_version_number" in text or "packet length too long" in text:
        return "the server does not seem to speak TLS: try --plaintext"
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        trusted = tls.ca_source if tls is not None and tls.ca_source else "the CA trusted"
        return f"the server's certificate is not signed by {trusted}"
    if "peer name" in text:
        return "the server's certificate does not name the host given with --server"
    if not any(word in text for word in ("socket closed", "handshake", "ssl", "tls")):
        return ""
    if tls is None:
        return ("the server may require TLS: pass --ca, --cert and --key-file "
                "(or CUSTODY_STATE_DIR for the local default)")
    if tls.cert is None:
        return "the server may require a client certificate: pass --cert and --key-file"
    if "socket closed" in text:
        return ("the server closed the connection during the handshake: it refuses the "
                "client certificate (--cert); is it issued by the server's client CA, "
                "current and not revoked?")
    return "the TLS handshake failed: check --ca, --cert and --key-file"
