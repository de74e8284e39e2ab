import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVELOPE_UNSPECIFIED: _ClassVar[Envelope]
    ENVELOPE_METABLOCK: _ClassVar[Envelope]
    ENVELOPE_DSSE: _ClassVar[Envelope]
    ENVELOPE_STATEMENT: _ClassVar[Envelope]

class KeyAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ALGORITHM_UNSPECIFIED: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_ECDSA_P256: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_ECDSA_P384: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_ED25519: _ClassVar[KeyAlgorithm]
    KEY_ALGORITHM_RSA_3072: _ClassVar[KeyAlgorithm]
ENVELOPE_UNSPECIFIED: Envelope
ENVELOPE_METABLOCK: Envelope
ENVELOPE_DSSE: Envelope
ENVELOPE_STATEMENT: Envelope
KEY_ALGORITHM_UNSPECIFIED: KeyAlgorithm
KEY_ALGORITHM_ECDSA_P256: KeyAlgorithm
KEY_ALGORITHM_ECDSA_P384: KeyAlgorithm
KEY_ALGORITHM_ED25519: KeyAlgorithm
KEY_ALGORITHM_RSA_3072: KeyAlgorithm

class Artifact(_message.Message):
    __slots__ = ("path", "digest")
    class DigestEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: _containers.ScalarMap[str, str]
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Byproducts(_message.Message):
    __slots__ = ("stdout", "stderr", "return_value")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    RETURN_VALUE_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    return_value: int
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., return_value: _Optional[int] = ...) -> None: ...

class SignLinkRequest(_message.Message):
    __slots__ = ("step_name", "command", "materials", "products", "byproducts", "environment", "key_alias", "envelope", "preliminary_link", "run_id")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    MATERIALS_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    BYPRODUCTS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_ALIAS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PRELIMINARY_LINK_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    step_name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    materials: _containers.RepeatedCompositeFieldContainer[Artifact]
    products: _containers.RepeatedCompositeFieldContainer[Artifact]
    byproducts: Byproducts
    environment: _containers.ScalarMap[str, str]
    key_alias: str
    envelope: Envelope
    preliminary_link: bytes
    run_id: str
    def __init__(self, step_name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., materials: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., products: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., byproducts: _Optional[_Union[Byproducts, _Mapping]] = ..., environment: _Optional[_Mapping[str, str]] = ..., key_alias: _Optional[str] = ..., envelope: _Optional[_Union[Envelope, str]] = ..., preliminary_link: _Optional[bytes] = ..., run_id: _Optional[str] = ...) -> None: ...

class SignLinkResponse(_message.Message):
    __slots__ = ("signed", "file_name", "keyid", "key_alias", "key_version", "envelope", "sha256")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    KEY_ALIAS_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    signed: bytes
    file_name: str
    keyid: str
    key_alias: str
    key_version: int
    envelope: Envelope
    sha256: str
    def __init__(self, signed: _Optional[bytes] = ..., file_name: _Optional[str] = ..., keyid: _Optional[str] = ..., key_alias: _Optional[str] = ..., key_version: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class SignLinksRequest(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[SignLinkRequest]
    def __init__(self, links: _Optional[_Iterable[_Union[SignLinkRequest, _Mapping]]] = ...) -> None: ...

class SignLinkError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SignLinkResult(_message.Message):
    __slots__ = ("signed", "error")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    signed: SignLinkResponse
    error: SignLinkError
    def __init__(self, signed: _Optional[_Union[SignLinkResponse, _Mapping]] = ..., error: _Optional[_Union[SignLinkError, _Mapping]] = ...) -> None: ...

class SignLinksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SignLinkResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SignLinkResult, _Mapping]]] = ...) -> None: ...

class SignLayoutRequest(_message.Message):
    __slots__ = ("layout", "key_alias", "envelope", "append", "refresh")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    KEY_ALIAS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    layout: bytes
    key_alias: str
    envelope: Envelope
    append: bool
    refresh: bool
    def __init__(self, layout: _Optional[bytes] = ..., key_alias: _Optional[str] = ..., envelope: _Optional[_Union[Envelope, str]] = ..., append: _Optional[bool] = ..., refresh: _Optional[bool] = ...) -> None: ...

class SignLayoutResponse(_message.Message):
    __slots__ = ("signed", "keyid", "key_alias", "key_version", "envelope", "sha256", "warnings", "other_owners")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    KEY_ALIAS_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    OTHER_OWNERS_FIELD_NUMBER: _ClassVar[int]
    signed: bytes
    keyid: str
    key_alias: str
    key_version: int
    envelope: Envelope
    sha256: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    other_owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, signed: _Optional[bytes] = ..., keyid: _Optional[str] = ..., key_alias: _Optional[str] = ..., key_version: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, str]] = ..., sha256: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., other_owners: _Optional[_Iterable[str]] = ...) -> None: ...

class TrustedKey(_message.Message):
    __slots__ = ("alias", "public_key_json", "public_key_pem")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    alias: str
    public_key_json: str
    public_key_pem: str
    def __init__(self, alias: _Optional[str] = ..., public_key_json: _Optional[str] = ..., public_key_pem: _Optional[str] = ...) -> None: ...

class MetadataFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("layout", "layout_keys", "links", "inspection_links", "parameters", "unlisted_links", "plan", "artifacts", "stored_links", "run_id")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_KEYS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    INSPECTION_LINKS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    UNLISTED_LINKS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    STORED_LINKS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    layout: bytes
    layout_keys: _containers.RepeatedCompositeFieldContainer[TrustedKey]
    links: _containers.RepeatedCompositeFieldContainer[MetadataFile]
    inspection_links: _containers.RepeatedCompositeFieldContainer[MetadataFile]
    parameters: _containers.ScalarMap[str, str]
    unlisted_links: _containers.RepeatedCompositeFieldContainer[MetadataFile]
    plan: bool
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    stored_links: bool
    run_id: str
    def __init__(self, layout: _Optional[bytes] = ..., layout_keys: _Optional[_Iterable[_Union[TrustedKey, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[MetadataFile, _Mapping]]] = ..., inspection_links: _Optional[_Iterable[_Union[MetadataFile, _Mapping]]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., unlisted_links: _Optional[_Iterable[_Union[MetadataFile, _Mapping]]] = ..., plan: _Optional[bool] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., stored_links: _Optional[bool] = ..., run_id: _Optional[str] = ...) -> None: ...

class VerifyFailure(_message.Message):
    __slots__ = ("stage", "step", "rule", "paths", "reason")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: str
    rule: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[str] = ..., rule: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class VerifyWarning(_message.Message):
    __slots__ = ("stage", "step", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: str
    message: str
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("passed", "failures", "warnings", "verdict_json", "run_id")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    failures: _containers.RepeatedCompositeFieldContainer[VerifyFailure]
    warnings: _containers.RepeatedCompositeFieldContainer[VerifyWarning]
    verdict_json: str
    run_id: str
    def __init__(self, passed: _Optional[bool] = ..., failures: _Optional[_Iterable[_Union[VerifyFailure, _Mapping]]] = ..., warnings: _Optional[_Iterable[_Union[VerifyWarning, _Mapping]]] = ..., verdict_json: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class StoredLink(_message.Message):
    __slots__ = ("id", "kind", "run_id", "step", "keyid", "file_name", "origin", "caller", "stored", "content")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    run_id: str
    step: str
    keyid: str
    file_name: str
    origin: str
    caller: str
    stored: _timestamp_pb2.Timestamp
    content: bytes
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., run_id: _Optional[str] = ..., step: _Optional[str] = ..., keyid: _Optional[str] = ..., file_name: _Optional[str] = ..., origin: _Optional[str] = ..., caller: _Optional[str] = ..., stored: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class AddLinkRequest(_message.Message):
    __slots__ = ("link", "run_id", "keys")
    LINK_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    link: bytes
    run_id: str
    keys: _containers.RepeatedCompositeFieldContainer[TrustedKey]
    def __init__(self, link: _Optional[bytes] = ..., run_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[TrustedKey, _Mapping]]] = ...) -> None: ...

class AddLinkResponse(_message.Message):
    __slots__ = ("link",)
    LINK_FIELD_NUMBER: _ClassVar[int]
    link: StoredLink
    def __init__(self, link: _Optional[_Union[StoredLink, _Mapping]] = ...) -> None: ...

class GetLinkRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetLinkResponse(_message.Message):
    __slots__ = ("link",)
    LINK_FIELD_NUMBER: _ClassVar[int]
    link: StoredLink
    def __init__(self, link: _Optional[_Union[StoredLink, _Mapping]] = ...) -> None: ...

class ListLinksRequest(_message.Message):
    __slots__ = ("run_id", "step", "artifact_digest", "since", "until", "limit", "page_token", "include_content", "kind")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CONTENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step: str
    artifact_digest: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    include_content: bool
    kind: str
    def __init__(self, run_id: _Optional[str] = ..., step: _Optional[str] = ..., artifact_digest: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., include_content: _Optional[bool] = ..., kind: _Optional[str] = ...) -> None: ...

class ListLinksResponse(_message.Message):
    __slots__ = ("links", "next_page_token")
    LINKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[StoredLink]
    next_page_token: str
    def __init__(self, links: _Optional[_Iterable[_Union[StoredLink, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "keyid", "state", "created", "verify_until", "retired", "destroyed", "public_key_json", "activated")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_UNTIL_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    version: int
    keyid: str
    state: str
    created: _timestamp_pb2.Timestamp
    verify_until: _timestamp_pb2.Timestamp
    retired: _timestamp_pb2.Timestamp
    destroyed: _timestamp_pb2.Timestamp
    public_key_json: str
    activated: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., keyid: _Optional[str] = ..., state: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verify_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retired: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destroyed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., public_key_json: _Optional[str] = ..., activated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("alias", "algorithm", "scheme", "keyid", "public_key_pem", "public_key_json", "versions", "active_version", "rotation_period", "next_rotation", "next_version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    KEYID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_FIELD_NUMBER: _ClassVar[int]
    NEXT_VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    algorithm: KeyAlgorithm
    scheme: str
    keyid: str
    public_key_pem: str
    public_key_json: str
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    active_version: int
    rotation_period: _duration_pb2.Duration
    next_rotation: _timestamp_pb2.Timestamp
    next_version: int
    def __init__(self, alias: _Optional[str] = ..., algorithm: _Optional[_Union[KeyAlgorithm, str]] = ..., scheme: _Optional[str] = ..., keyid: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., public_key_json: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., active_version: _Optional[int] = ..., rotation_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., next_rotation: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_version: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("alias", "algorithm")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    alias: str
    algorithm: KeyAlgorithm
    def __init__(self, alias: _Optional[str] = ..., algorithm: _Optional[_Union[KeyAlgorithm, str]] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("alias", "overlap", "algorithm")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    alias: str
    overlap: _duration_pb2.Duration
    algorithm: KeyAlgorithm
    def __init__(self, alias: _Optional[str] = ..., overlap: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., algorithm: _Optional[_Union[KeyAlgorithm, str]] = ...) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("key", "previous_version", "new_version", "previous_verify_until", "warnings")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERIFY_UNTIL_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    previous_version: int
    new_version: int
    previous_verify_until: _timestamp_pb2.Timestamp
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., previous_version: _Optional[int] = ..., new_version: _Optional[int] = ..., previous_verify_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class RetireKeyRequest(_message.Message):
    __slots__ = ("alias", "version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    version: int
    def __init__(self, alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RetireKeyResponse(_message.Message):
    __slots__ = ("key", "warnings")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
