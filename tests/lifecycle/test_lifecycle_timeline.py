"""The timeline on a real SoftHSM token, with an injected clock: rotate, windows, retire,
destroy; a layout signed by an owner version in its window; audit events."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from custody_api.v1 import custody_pb2 as pb
from custody_server.keystore import KeyNotFoundError, Pkcs11KeyStore
from custody_server.lifecycle.rotation import format_time
from custody_server.lifecycle.settings import LifecycleSettings

from .lifecycle_support import (
    ClockedService,
    clocked_fixture,
    clocked_service,
    layout,
    sign_link,
    step,
    unique_alias,
    verify,
)

HOUR = timedelta(hours=1)
RETENTION = timedelta(days=1)


clocked = clocked_fixture("clocked", LifecycleSettings(scheduler=False,
                                                       destroy_after=RETENTION))


def _hours(value: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value * HOUR)
    return duration


def _create(service: ClockedService, prefix: str) -> str:
    alias = unique_alias(prefix)
    service.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    return alias


def _sign_layout(service: ClockedService, *, owner: str, functionary: str
                 ) -> pb.SignLayoutResponse:
    response: pb.SignLayoutResponse = service.custody.SignLayout(pb.SignLayoutRequest(
        layout=layout(step("build", [f"alias:{functionary}"])), key_alias=owner))
    return response


def _versions(service: ClockedService, alias: str) -> dict[int, Any]:
    key = service.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=alias)).key
    return {v.version: v for v in key.versions}


def test_timeline(clocked: ClockedService, keystore: Pkcs11KeyStore) -> None:
    service, clock = clocked, clocked.clock
    owner, builder = _create(service, "owner"), _create(service, "build")
    t0 = clock.now()

    link1 = sign_link(service.custody, step_name="build", alias=builder)
    assert link1.key_version == 1
    before = _sign_layout(service, owner=owner, functionary=builder)
    assert verify(service.custody, before.signed, [link1], owner=owner).passed

    # Rotate at t0+1h with a 2 h overlap: v2 signs, v1 verifies until t0+3h.
    clock.advance(HOUR)
    rotated = service.key_admin.RotateKey(pb.RotateKeyRequest(alias=builder,
                                                             overlap=_hours(2)))
    assert (rotated.previous_version, rotated.new_version) == (1, 2)
    assert rotated.previous_verify_until.ToDatetime().replace(tzinfo=t0.tzinfo) == t0 + 3 * HOUR
    states = {v.version: v.state for v in rotated.key.versions}
    assert states == {1: "verify-only", 2: "active", 3: "next"}
    assert rotated.key.next_version == 3

    # Links signed after the rotation use the new version (and its file name).
    link2 = sign_link(service.custody, step_name="build", alias=builder)
    assert link2.key_version == 2 and link2.keyid == rotated.key.keyid
    assert link2.file_name == f"build.{rotated.key.keyid[:8]}.link"
    after = _sign_layout(service, owner=owner, functionary=builder)
    assert any(f"{builder} v1" in w and format_time(t0 + 3 * HOUR) in w
               for w in after.warnings), after.warnings

    # Inside the window, the old link verifies, under the old and the re-signed layout.
    clock.advance(HOUR)
    assert verify(service.custody, before.signed, [link1], owner=owner).passed
    assert verify(service.custody, after.signed, [link1], owner=owner).passed
    assert verify(service.custody, after.signed, [link2], owner=owner).passed

    # At the end of the window it fails, with a reason naming alias, version and the end.
    clock.advance(HOUR)
    verdict = verify(service.custody, after.signed, [link1], owner=owner)
    assert not verdict.passed
    assert verdict.failures[0].stage == "threshold"
    expected = f"{builder} v1 is retired: its window ended at {format_time(t0 + 3 * HOUR)}"
    assert expected in verdict.failures[0].reason, verdict.failures[0].reason
    assert verify(service.custody, after.signed, [link2], owner=owner).passed

    # Retire ends a window at once.
    service.key_admin.RotateKey(pb.RotateKeyRequest(alias=builder, overlap=_hours(10)))
    assert verify(service.custody, after.signed, [link2], owner=owner).passed
    clock.advance(timedelta(minutes=1))
    retired_at = clock.now()
    retired = service.key_admin.RetireKey(pb.RetireKeyRequest(alias=builder, version=2))
    assert {v.version: v.state for v in retired.key.versions} == {
        1: "retired", 2: "retired", 3: "active", 4: "next"}
    verdict = verify(service.custody, after.signed, [link2], owner=owner)
    assert not verdict.passed
    assert (f"{builder} v2 is retired: its window ended at {format_time(retired_at)} "
            "(ended early by RetireKey)") in verdict.failures[0].reason

    # After the retention period the scheduler's due work destroys retired keys.
    label_v1 = f"custody:{builder}:v1"
    assert service.keys.find_keyid(link1.keyid) is not None
    clock.advance(RETENTION - timedelta(seconds=30))  # v1 ended 1 min before v2
    work = service.lifecycle.run_due()
    assert f"{builder} v1" in work.destroyed and f"{builder} v2" not in work.destroyed
    with pytest.raises(KeyNotFoundError):
        keystore.private_key_attributes(label_v1)
    assert label_v1 not in {k.label for k in keystore.list_keys()}
    versions = _versions(service, builder)
    assert versions[1].state == "destroyed" and versions[1].keyid == link1.keyid
    assert versions[1].HasField("destroyed")
    verdict = verify(service.custody, after.signed, [link1], owner=owner)
    assert f"{builder} v1 is destroyed: its window ended at" in verdict.failures[0].reason
    clock.advance(timedelta(minutes=1))
    assert f"{builder} v2" in service.lifecycle.run_due().destroyed
    assert not [d for d in service.lifecycle.run_due().destroyed
                if d.startswith(f"{builder} ")]  # once

    # Every change is on the audit record.
    assert len(service.events("key-create", builder)) == 1
    assert [e.details["key_version"] for e in service.events("key-rotate", builder)] == [2, 3]
    assert [e.details["key_version"] for e in service.events("key-retire", builder)] == [2]
    destroyed = service.events("key-destroy", builder)
    assert [e.details["key_version"] for e in destroyed] == [1, 2]
    assert all(e.outcome == "success" and e.details["key_was_present"] for e in destroyed)


def test_layout_signed_by_owner_version_in_window_passes_with_warning(
        clocked: ClockedService) -> None:
    service, clock = clocked, clocked.clock
    owner, builder = _create(service, "owner"), _create(service, "build")
    signed = _sign_layout(service, owner=owner, functionary=builder)
    link = sign_link(service.custody, step_name="build", alias=builder)
    assert not verify(service.custody, signed.signed, [link], owner=owner).warnings

    service.key_admin.RotateKey(pb.RotateKeyRequest(alias=owner, overlap=_hours(1)))
    until = format_time(clock.now() + HOUR)
    verdict = verify(service.custody, signed.signed, [link], owner=owner)
    assert verdict.passed
    warning = verdict.warnings[0]
    assert warning.stage == "layout-signature"
    assert warning.message.startswith(f"the layout is signed by {owner} v1")
    assert f"verifies only until {until}: re-sign it with {owner} v2" in warning.message

    clock.advance(HOUR)
    verdict = verify(service.custody, signed.signed, [link], owner=owner)
    assert not verdict.passed and verdict.failures[0].stage == "layout-signature"
    assert f"{owner} v1 is retired: its window ended at {until}" in verdict.failures[0].reason

    resigned = _sign_layout(service, owner=owner, functionary=builder)
    assert resigned.key_version == 2
    verdict = verify(service.custody, resigned.signed, [link], owner=owner)
    assert verdict.passed and not verdict.warnings


def test_lifecycle_errors_are_precise(clocked: ClockedService) -> None:
    service = clocked
    alias = _create(service, "err")
    cases = [
        (pb.RetireKeyRequest(alias=alias, version=1), grpc.StatusCode.INVALID_ARGUMENT,
         f"{alias} v1 is the active version and signs: rotate first"),
        (pb.RetireKeyRequest(alias=alias, version=9), grpc.StatusCode.NOT_FOUND,
         f"{alias} has no version 9"),
        (pb.RetireKeyRequest(alias=alias), grpc.StatusCode.INVALID_ARGUMENT, "version"),
        (pb.RetireKeyRequest(alias="missing-alias", version=1), grpc.StatusCode.NOT_FOUND,
         "no key with alias"),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            service.key_admin.RetireKey(request)
        assert caught.value.code() == code
        assert message in (caught.value.details() or "")
    negative = Duration(seconds=-5)
    for rotate in (pb.RotateKeyRequest(alias=alias, overlap=negative),
                   pb.RotateKeyRequest(alias="Bad Alias")):
        with pytest.raises(grpc.RpcError) as caught:
            service.key_admin.RotateKey(rotate)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    failures = [e for e in service.audit.events
                if e.action == "key-retire" and e.outcome == "failure"
                and e.details.get("key_alias") == alias]
    assert len(failures) == 2  # refusals are on the record too


def test_rotation_keeps_or_changes_the_algorithm(clocked: ClockedService) -> None:
    service = clocked
    alias = unique_alias("alg")
    service.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias,
                                                    algorithm=pb.KEY_ALGORITHM_ED25519))
    same = service.key_admin.RotateKey(pb.RotateKeyRequest(alias=alias))
    assert same.key.algorithm == pb.KEY_ALGORITHM_ED25519 and same.new_version == 2
    # No overlap given: the default (72 h) applies.
    until = same.previous_verify_until.ToDatetime()
    assert until.replace(tzinfo=None) == (service.clock.now() + 72 * HOUR).replace(tzinfo=None)
    # Pre-rotation: the promoted version (listed in layouts) keeps its algorithm; the new
    # next version gets the one asked for, and signs after the next rotation.
    changed = service.key_admin.RotateKey(pb.RotateKeyRequest(
        alias=alias, algorithm=pb.KEY_ALGORITHM_ECDSA_P384))
    assert changed.key.algorithm == pb.KEY_ALGORITHM_ED25519 and changed.new_version == 3
    assert any(f"{alias} v4, made with ecdsa-p384, signs after the next rotation" in w
               for w in changed.warnings), changed.warnings
    link = sign_link(service.custody, step_name="s", alias=alias)
    assert link.key_version == 3 and link.keyid == changed.key.keyid
    switched = service.key_admin.RotateKey(pb.RotateKeyRequest(alias=alias))
    assert switched.key.algorithm == pb.KEY_ALGORITHM_ECDSA_P384
    assert sign_link(service.custody, step_name="s", alias=alias).key_version == 4


def test_overlap_shorter_than_cache_ttl_warns(keystore: Pkcs11KeyStore, tmp_path: Path) -> None:
    settings = LifecycleSettings(scheduler=False, cache_ttl_seconds=5)
    with clocked_service(keystore, tmp_path, settings=settings) as service:
        alias = _create(service, "ttl")
        rotated = service.key_admin.RotateKey(pb.RotateKeyRequest(alias=alias,
                                                                 overlap=Duration()))
        assert any("shorter than the replicas' cache TTL (5s)" in w for w in rotated.warnings)
        assert {v.version: v.state for v in rotated.key.versions} == {1: "retired",
                                                                     2: "active", 3: "next"}
