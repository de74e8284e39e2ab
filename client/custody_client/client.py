"""A typed, synchronous client for the Custody API (custody.v1).

    with CustodyClient(ConnectionSettings(address="custody.internal:50051")) as custody:
        draft = LinkDraft(step_name="build", command=["make"])
        draft.add_materials(iter_artifacts(["."]))
        ...
        signed = custody.sign_link(draft)

Every call has one deadline (`ConnectionSettings.timeout`) that covers its retries;
UNAVAILABLE is retried with exponential backoff and jitter, except for CreateKey and
RotateKey, which are not idempotent. Failures raise ClientError with the status code name
and one line. The channel, retries, the preflight and SignLink are SigningClient's
(custody_client.signing_client), which `custody run` uses without loading protobuf.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_client.errors import ClientError, InputError
from custody_client.link_draft import LinkDraft
from custody_client.models import (
    EnvelopeKind,
    KeyAlgorithm,
    KeyInfo,
    KeyRetirement,
    KeyRotation,
    KeyVersionInfo,
    LayoutKey,
    SignedMetadata,
    StoredLink,
    VerifyFailure,
    VerifyResult,
    VerifyWarning,
)
from custody_client.settings import NO_RETRIES, ConnectionSettings
from custody_client.signing_client import SigningClient
from custody_core.api_enums import (
    ENVELOPE_NUMBERS,
    ENVELOPES_BY_NUMBER,
    KEY_ALGORITHM_NUMBERS,
    KEY_ALGORITHMS_BY_NUMBER,
)
from custody_core.errors import MetadataError
from custody_core.strict_json import parse_json

__all__ = ["CustodyClient", "LinkDraft"]

DEFAULT_BATCH_SIZE = 100  # links per SignLinks call
_LINKS = 1  # custody.v1.SignLinksRequest.links
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class CustodyClient(SigningClient):
    """Calls custody.v1.Custody and custody.v1.KeyAdmin over one channel."""

    def __init__(self, settings: ConnectionSettings | None = None) -> None:
        super().__init__(settings)
        self._custody = pb_grpc.CustodyStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = pb_grpc.KeyAdminStub(self._channel)  # type: ignore[no-untyped-call]
        # The request framed by hand from the drafts' wire bytes (no parse of each link).
        self._sign_links_raw = self._channel.unary_unary(
            "/custody.v1.Custody/SignLinks", request_serializer=bytes,
            response_deserializer=pb.SignLinksResponse.FromString)

    def __enter__(self) -> CustodyClient:
        return self

    # Custody service (sign_link: SigningClient's)

    def sign_links(self, drafts: Sequence[LinkDraft], *, key_alias: str = "",
                   envelope: EnvelopeKind = EnvelopeKind.METABLOCK,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[SignedMetadata | ClientError]:
        """Sign many recorded links, `batch_size` to a SignLinks call: one result per
        draft, in order, the signed link or the ClientError its SignLink would have
        raised. A call that fails as a whole (UNAVAILABLE after its retries, a batch over
        the server's limits.max_links_per_batch) raises."""
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        results: list[SignedMetadata | ClientError] = []
        for start in range(0, len(drafts), batch_size):
            request = b"".join(_field(_LINKS, draft.request_bytes(key_alias=key_alias,
                                                                  envelope=envelope))
                               for draft in drafts[start:start + batch_size])
            response = self._call("SignLinks", self._sign_links_raw, request)
            results += [_link_result(result) for result in response.results]
        return results

    def sign_layout(self, layout: bytes, *, key_alias: str = "",
                    envelope: EnvelopeKind | None = EnvelopeKind.METABLOCK,
                    append: bool = False, refresh: bool = False) -> SignedMetadata:
        """Sign a layout; `append`: add a signature to a signed one; `refresh`: re-resolve a
        signed one's service keys and sign it again. `envelope` None: the server's default,
        or the signed layout's own."""
        request = pb.SignLayoutRequest(layout=layout, key_alias=key_alias, append=append,
                                       refresh=refresh)
        if envelope is not None:
            request.envelope = cast("pb.Envelope", ENVELOPE_NUMBERS[envelope])
        response = self._call("SignLayout", self._custody.SignLayout, request)
        return _signed_layout(response)

    def verify(
        self,
        *,
        layout: bytes,
        layout_keys: Sequence[LayoutKey],
        links: Mapping[str, bytes],
        inspection_links: Mapping[str, bytes] | None = None,
        parameters: Mapping[str, str] | None = None,
        unlisted_links: Mapping[str, bytes] | None = None,
        plan: bool = False,
        artifacts: Sequence[tuple[str, Mapping[str, str]]] = (),
        stored_links: bool = False,
        run_id: str = "",
    ) -> VerifyResult:
        """`unlisted_links`: link files of the layout's steps that no authorized keyid
        names; never counted, they only let a failed verdict name a key rotation.
        `plan`: the verdict, neither recorded nor counted (to learn which inspections
        to run before the Verify that is recorded; a plan that reads the store still
        leaves a store-read audit entry). `artifacts`: (path,
        {algorithm: hex}) of files the caller holds, each of which must be a product of
        the layout's final step(s). `stored_links`: verify the links the server's
        attestation store holds for `run_id`, or without it for the newest run that made
        the artifacts, instead of `links`."""
        request = pb.VerifyRequest(
            layout=layout,
            layout_keys=[_trusted_key(k) for k in layout_keys],
            parameters=dict(parameters or {}),
            plan=plan,
            artifacts=[pb.Artifact(path=path, digest=dict(digest)) for path, digest in artifacts],
            stored_links=stored_links,
            run_id=run_id,
        )
        # Added in place: a MetadataFile made apart is copied again into the request (20 MB
        # links: a tenth of a second).
        for files, field in ((links, request.links),
                             (inspection_links or {}, request.inspection_links),
                             (unlisted_links or {}, request.unlisted_links)):
            for path, content in sorted(files.items()):
                field.add(path=path, content=content)
        response = self._call("Verify", self._custody.Verify, request)
        return VerifyResult(
            passed=response.passed,
            failures=tuple(VerifyFailure(stage=f.stage, step=f.step, rule=f.rule,
                                         paths=tuple(f.paths), reason=f.reason)
                           for f in response.failures),
            warnings=tuple(VerifyWarning(stage=w.stage, step=w.step, message=w.message)
                           for w in response.warnings),
            verdict=_VerdictJson(response.verdict_json),
            run_id=response.run_id,
        )

    # The attestation store

    def add_link(self, link: bytes, *, run_id: str = "",
                 keys: Sequence[LayoutKey] = ()) -> StoredLink:
        """Store a link signed elsewhere; the server checks that a key it knows (or one of
        `keys`) signed it."""
        response = self._call("AddLink", self._custody.AddLink, pb.AddLinkRequest(
            link=link, run_id=run_id, keys=[_trusted_key(k) for k in keys]))
        return _stored_link(response.link)

    def get_link(self, link_id: str) -> StoredLink:
        """A stored link or layout by its id (or an id prefix of 8 hex digits or more)."""
        response = self._call("GetLink", self._custody.GetLink, pb.GetLinkRequest(id=link_id))
        return _stored_link(response.link)

    def list_links(self, *, run_id: str = "", step: str = "", artifact_digest: str = "",
                   since: datetime | None = None, until: datetime | None = None,
                   limit: int = 0, page_token: str = "", include_content: bool = False,
                   kind: str = "") -> tuple[list[StoredLink], str]:
        """Stored links (or layouts, kind="layout"), newest first, and the next page's
        token ("" on the last page)."""
        request = pb.ListLinksRequest(run_id=run_id, step=step,
                                      artifact_digest=artifact_digest, limit=limit,
                                      page_token=page_token,
                                      include_content=include_content, kind=kind)
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        response = self._call("ListLinks", self._custody.ListLinks, request)
        return [_stored_link(link) for link in response.links], response.next_page_token

    # KeyAdmin service

    def create_key(self, alias: str,
                   algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256) -> KeyInfo:
        # Not retried: a retry after a lost response would report ALREADY_EXISTS.
        response = self._call("CreateKey", self._admin.CreateKey, pb.CreateKeyRequest(
            alias=alias, algorithm=_algorithm_number(algorithm)), retry=NO_RETRIES)
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
            request.algorithm = _algorithm_number(algorithm)
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

    def retire_key(self, alias: str, *, version: int) -> KeyRetirement:
        """End a verify-only version's window now; a next version is replaced by a new one
        (idempotent)."""
        response = self._call("RetireKey", self._admin.RetireKey,
                              pb.RetireKeyRequest(alias=alias, version=version))
        return KeyRetirement(key=_key_info(response.key), warnings=tuple(response.warnings))


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    header = bytearray([number << 3 | 2])
    size = len(data)
    while size > 0x7F:
        header.append(size & 0x7F | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + data


def _link_result(result: pb.SignLinkResult) -> SignedMetadata | ClientError:
    if result.HasField("signed"):
        signed = result.signed
        return SignedMetadata(
            content=bytes(signed.signed), file_name=signed.file_name, keyid=signed.keyid,
            key_alias=signed.key_alias, key_version=signed.key_version,
            envelope=ENVELOPES_BY_NUMBER.get(signed.envelope, EnvelopeKind.METABLOCK),
            sha256=signed.sha256)
    code = _STATUS_NAMES.get(result.error.code, "UNKNOWN")
    message = result.error.message or code.lower()
    return ClientError(f"SignLinks: {message} ({code})", code=code)


class _VerdictJson(Mapping[str, Any]):
    """The server's verdict_json, read through the strict reader when first looked at:
    the rule trace of 100,000 artifacts is megabytes that a verdict printed without
    --trace or --json never shows."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._value: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._value is None:
            try:
                value = (parse_json(self._text.encode(), what="verdict_json").value
                         if self._text else {})
            except MetadataError:
                value = {}
            self._value = value if isinstance(value, dict) else {}
            self._text = ""
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


def _trusted_key(key: LayoutKey) -> pb.TrustedKey:
    if key.alias:
        return pb.TrustedKey(alias=key.alias)
    if key.public_key_json:
        return pb.TrustedKey(public_key_json=key.public_key_json)
    return pb.TrustedKey(public_key_pem=key.public_key_pem)


def _stored_link(link: pb.StoredLink) -> StoredLink:
    return StoredLink(id=link.id, kind=link.kind, run_id=link.run_id, step=link.step,
                      keyid=link.keyid, file_name=link.file_name, origin=link.origin,
                      caller=link.caller, stored=_time(link, "stored"),
                      content=bytes(link.content))


def _algorithm_number(algorithm: KeyAlgorithm) -> pb.KeyAlgorithm:
    return cast("pb.KeyAlgorithm", KEY_ALGORITHM_NUMBERS[algorithm])


def _signed_layout(response: pb.SignLayoutResponse) -> SignedMetadata:
    return SignedMetadata(
        content=bytes(response.signed),
        file_name="",
        keyid=response.keyid,
        key_alias=response.key_alias,
        key_version=response.key_version,
        envelope=ENVELOPES_BY_NUMBER.get(response.envelope, EnvelopeKind.METABLOCK),
        sha256=response.sha256,
        warnings=tuple(response.warnings),
        other_owners=tuple(response.other_owners),
    )


def _key_info(key: pb.KeyInfo) -> KeyInfo:
    return KeyInfo(
        alias=key.alias,
        algorithm=KEY_ALGORITHMS_BY_NUMBER.get(key.algorithm),
        scheme=key.scheme,
        keyid=key.keyid,
        public_key_pem=key.public_key_pem,
        public_key_json=key.public_key_json,
        versions=tuple(KeyVersionInfo(
            version=v.version, keyid=v.keyid, state=v.state, created=_time(v, "created"),
            verify_until=_time(v, "verify_until"), retired=_time(v, "retired"),
            destroyed=_time(v, "destroyed"), activated=_time(v, "activated"),
        ) for v in key.versions),
        rotation_period=(key.rotation_period.ToTimedelta()
                         if key.HasField("rotation_period") else None),
        next_rotation=_time(key, "next_rotation"),
        next_version=key.next_version,
    )


def _time(message: Any, name: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime, or None when unset."""
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value
