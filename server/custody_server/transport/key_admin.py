"""The KeyAdmin servicer: create, list, rotate and retire service keys (protobuf at the edge)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import cast

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_core.api_enums import (
    KEY_ALGORITHM_NUMBERS,
    KEY_ALGORITHMS_BY_NUMBER,
    UNSPECIFIED,
    KeyAlgorithm,
)
from custody_server.errors import RequestError
from custody_server.lifecycle import rotation
from custody_server.lifecycle.keyring import KeyVersion, ServiceKey
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.lifecycle.settings import RotationSchedule
from custody_server.transport.servicer import caller_identity

DEFAULT_ALGORITHM = KeyAlgorithm.ECDSA_P256  # CreateKey's, for KEY_ALGORITHM_UNSPECIFIED
_MAX_OVERLAP = timedelta(days=100 * 365)


def _algorithm(value: int) -> KeyAlgorithm:
    algorithm = KEY_ALGORITHMS_BY_NUMBER.get(value)
    if algorithm is None:
        raise RequestError(f"unknown key algorithm {value}")
    return algorithm


def _required_alias(alias: str) -> str:
    if not alias:
        raise RequestError("alias is required")
    return alias


class KeyAdminServicer(pb_grpc.KeyAdminServicer):
    def __init__(self, *, lifecycle: KeyLifecycle) -> None:
        self._lifecycle = lifecycle
        self._keys = lifecycle.keys

    def CreateKey(self, request: pb.CreateKeyRequest,
                  context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        algorithm = (DEFAULT_ALGORITHM if request.algorithm == UNSPECIFIED
                     else _algorithm(request.algorithm))
        key = self._lifecycle.create(_required_alias(request.alias), algorithm,
                                     caller=caller_identity(context))
        return pb.CreateKeyResponse(key=self._info(key))

    def ListKeys(self, request: pb.ListKeysRequest,
                 context: grpc.ServicerContext) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[self._info(k) for k in self._keys.all()])

    def GetPublicKey(self, request: pb.GetPublicKeyRequest,
                     context: grpc.ServicerContext) -> pb.GetPublicKeyResponse:
        key = self._keys.get(_required_alias(request.alias))
        return pb.GetPublicKeyResponse(key=self._info(key))

    def RotateKey(self, request: pb.RotateKeyRequest,
                  context: grpc.ServicerContext) -> pb.RotateKeyResponse:
        overlap = request.overlap.ToTimedelta() if request.HasField("overlap") else None
        if overlap is not None and not timedelta(0) <= overlap <= _MAX_OVERLAP:
            raise RequestError("overlap must be between 0 and 100 years")
        algorithm = (None if request.algorithm == UNSPECIFIED  # the key's own algorithm
                     else _algorithm(request.algorithm))
        result = self._lifecycle.rotate(_required_alias(request.alias), overlap=overlap,
                                          algorithm=algorithm, caller=caller_identity(context))
        return pb.RotateKeyResponse(
            key=self._info(result.key),
            previous_version=result.previous.version,
            new_version=result.new.version,
            previous_verify_until=_timestamp(result.previous.lifecycle.verify_until),
            warnings=list(result.warnings),
        )

    def RetireKey(self, request: pb.RetireKeyRequest,
                  context: grpc.ServicerContext) -> pb.RetireKeyResponse:
        if request.version < 1:
            raise RequestError("version is required (1 or more)")
        result = self._lifecycle.retire(_required_alias(request.alias),
                                        version=request.version,
                                        caller=caller_identity(context))
        return pb.RetireKeyResponse(key=self._info(result.key), warnings=list(result.warnings))

    def _info(self, key: ServiceKey) -> pb.KeyInfo:
        return key_info(key, now=self._lifecycle.now(),
                        schedule=self._lifecycle.schedule_of(key.alias))


def key_info(key: ServiceKey, *, now: datetime,
             schedule: RotationSchedule | None = None) -> pb.KeyInfo:
    active = key.active.public_key
    info = pb.KeyInfo(
        alias=key.alias,
        algorithm=cast("pb.KeyAlgorithm", KEY_ALGORITHM_NUMBERS[key.algorithm]),
        scheme=active.scheme,
        keyid=active.keyid,
        public_key_pem=active.public if active.keytype != "ed25519" else "",
        public_key_json=json.dumps(active.to_dict(), sort_keys=True),
        versions=[_version_info(v, now) for v in key.versions],
        active_version=key.active.version,
        next_version=key.next.version if key.next is not None else 0,
    )
    if schedule is not None:
        info.rotation_period.CopyFrom(_duration(schedule.period))
        due = rotation.rotation_due_at(key.lifecycle, period=schedule.period)
        if (next_rotation := _timestamp(due)) is not None:
            info.next_rotation.CopyFrom(next_rotation)
    return info


def _version_info(version: KeyVersion, now: datetime) -> pb.KeyVersion:
    lifecycle = version.lifecycle
    return pb.KeyVersion(
        version=version.version,
        keyid=version.keyid,
        state=str(version.state_at(now)),
        created=_timestamp(lifecycle.created),
        verify_until=_timestamp(lifecycle.verify_until),
        retired=_timestamp(lifecycle.retired_at),
        destroyed=_timestamp(lifecycle.destroyed_at),
        public_key_json=json.dumps(version.public_key.to_dict(), sort_keys=True),
        activated=_timestamp(None if lifecycle.pending else lifecycle.became_active),
    )


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration
