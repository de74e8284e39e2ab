"""SignLayout's append and refresh, the layout-lifetime check, and Verify's explanations,
over gRPC against a real server on a real SoftHSM token (fake clock)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.keys import ECDSA_P256
from custody_core.link import build_link, link_file_name
from custody_core.software_signer import SoftwareSigner
from custody_server.keystore import Pkcs11KeyStore
from custody_server.lifecycle.layout_lifetime import lifetime_warnings
from custody_server.lifecycle.model import next_rotation_remaining
from custody_server.lifecycle.rotation import format_time
from custody_server.lifecycle.settings import LifecycleSettings, RotationSchedule
from custody_server.metrics import ServiceMetrics

from .lifecycle_support import (
    FOO,
    ClockedService,
    clocked_fixture,
    clocked_service,
    layout,
    sign_link,
    step,
    unique_alias,
)

DAY = timedelta(days=1)


clocked = clocked_fixture("owners", LifecycleSettings(scheduler=False))


def _create(service: ClockedService, prefix: str) -> str:
    alias = unique_alias(prefix)
    service.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    return alias


def _sign(service: ClockedService, data: bytes, owner: str, **flags: Any) -> Any:
    return service.custody.SignLayout(pb.SignLayoutRequest(layout=data, key_alias=owner,
                                                           **flags))


def pb_hours(hours: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(hours=hours))
    return duration


def _refused(service: ClockedService, data: bytes, owner: str, **flags: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        _sign(service, data, owner, **flags)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value.details() or ""


def test_refresh_keeps_everything_but_the_service_keys(clocked: ClockedService) -> None:
    owner, builder = _create(clocked, "owner"), _create(clocked, "fn")
    external = SoftwareSigner.generate(ECDSA_P256).public_key
    payload = json.loads(layout(step("build", [external.keyid, f"alias:{builder}"]),
                                step("test", [f"alias:{builder}"], threshold=1)))
    payload["keys"][external.keyid] = external.to_dict()
    payload["inspect"] = [{"_type": "inspection", "name": "untar", "run": ["true"],
                           "expected_materials": [], "expected_products": []}]
    signed = _sign(clocked, json.dumps(payload).encode(), owner).signed
    before = json.loads(signed)["signed"]
    clocked.key_admin.RotateKey(pb.RotateKeyRequest(alias=builder, overlap=pb_hours(1)))
    clocked.clock.advance(2 * timedelta(hours=1))  # v1's window has ended

    refreshed = _sign(clocked, signed, owner, refresh=True)
    after = json.loads(refreshed.signed)["signed"]
    versions = {v.version: v for v in clocked.key_admin.GetPublicKey(
        pb.GetPublicKeyRequest(alias=builder)).key.versions}
    assert after["steps"][0]["pubkeys"] == [external.keyid, versions[2].keyid,
                                            versions[3].keyid]
    assert after["steps"][1]["pubkeys"] == [versions[2].keyid, versions[3].keyid]
    assert set(after["keys"]) == {external.keyid, versions[2].keyid, versions[3].keyid}
    assert after["keys"][external.keyid] == before["keys"][external.keyid]
    for name in ("expires", "readme", "inspect", "_type"):
        assert after[name] == before[name]
    assert [{k: v for k, v in s.items() if k != "pubkeys"} for s in after["steps"]] == \
        [{k: v for k, v in s.items() if k != "pubkeys"} for s in before["steps"]]
    assert refreshed.key_alias == owner and not refreshed.other_owners
    event = [e for e in clocked.audit.events if e.action == "sign-layout"][-1]
    assert event.details["mode"] == "refresh" and event.outcome == "success"


def test_refresh_with_several_owners_and_a_foreign_signature(clocked: ClockedService) -> None:
    owner, second, builder = (_create(clocked, p) for p in ("owner", "second", "fn"))
    signed = _sign(clocked, layout(step("build", [f"alias:{builder}"])), owner).signed
    signed = _sign(clocked, signed, second, append=True).signed
    document = json.loads(signed)
    foreign = SoftwareSigner.generate(ECDSA_P256)
    document["signatures"] += json.loads(sign_metablock(document["signed"],
                                                        [foreign]))["signatures"]
    three = json.dumps(document).encode()

    message = _refused(clocked, three, builder, refresh=True)
    assert f"the layout is signed by {owner}, {second}, not by {builder}" in message
    assert f"--key {owner}" in message
    response = _sign(clocked, three, owner, refresh=True)
    assert list(response.other_owners) == [second]
    assert any(f"keyid {foreign.public_key.keyid[:8]} is not a Custody key's" in w
               for w in response.warnings), response.warnings
    assert [s["keyid"] for s in json.loads(response.signed)["signatures"]] == [
        response.keyid]
    again = _sign(clocked, response.signed, second, append=True)
    assert len(json.loads(again.signed)["signatures"]) == 2

    tampered = json.loads(signed)
    tampered["signed"]["readme"] = "changed after signing"
    message = _refused(clocked, json.dumps(tampered).encode(), owner, refresh=True)
    assert f"the layout's signature by {owner} v1" in message and "does not verify" in message


def test_append_refuses_what_it_cannot_sign_as_it_is(clocked: ClockedService) -> None:
    owner, second = _create(clocked, "owner"), _create(clocked, "second")
    unsigned = layout(step("build", [f"alias:{owner}"]))
    assert "append needs a signed layout" in _refused(clocked, unsigned, second, append=True)
    signed = _sign(clocked, unsigned, owner).signed
    assert "is already signed by" in _refused(clocked, signed, owner, append=True)
    assert "the layout is in a metablock envelope, not dsse" in _refused(
        clocked, signed, second, append=True, envelope=pb.ENVELOPE_DSSE)
    with_alias = json.loads(signed)
    with_alias["signed"]["steps"][0]["pubkeys"] = ["alias:build"]
    assert "names 'alias:build'; a signed layout lists keyids" in _refused(
        clocked, json.dumps(with_alias).encode(), second, append=True)
    assert "append and refresh exclude each other" in _refused(
        clocked, signed, second, append=True, refresh=True)
    failures = [e for e in clocked.audit.events if e.action == "sign-layout"
                and e.outcome == "failure" and e.details.get("mode") == "append"]
    assert len(failures) >= 4  # refusals are on the record

    # Signing a signed Metablock anew drops its signatures, and says so.
    resigned = _sign(clocked, signed, second)
    assert any("1 existing signature(s) were dropped" in w for w in resigned.warnings)


def test_verify_explains_an_old_link_and_refuses_the_next_version(
        clocked: ClockedService, keystore: Pkcs11KeyStore) -> None:
    owner, a, b = (_create(clocked, p) for p in ("owner", "fa", "fb"))
    link_a1 = sign_link(clocked.custody, step_name="build", alias=a)
    link_b1 = sign_link(clocked.custody, step_name="build", alias=b)
    clocked.key_admin.RotateKey(pb.RotateKeyRequest(alias=a))
    # threshold 2: a's active and next versions (v2, v3), not v1
    signed = _sign(clocked, layout(step("build", [f"alias:{a}", f"alias:{b}"], threshold=2)),
                   owner).signed
    verdict = _verify(clocked, signed, owner, link_a1, link_b1)
    assert not verdict.passed
    assert (f"{link_a1.file_name} is signed by {a} v1, but the layout lists {a} v2, {a} v3 "
            "for step 'build': the link is older than the layout: record the step again"
            ) in verdict.failures[0].reason, verdict.failures[0].reason

    # A signature by b's next version, v2, cannot come from Custody: refused until promoted.
    signer = keystore.signer(f"custody:{b}:v2")
    link = build_link(name="build", command=(), materials={}, products=FOO, byproducts={},
                      environment={})
    forged = pb.SignLinkResponse(signed=sign_metablock(link, [signer]),
                                 file_name=link_file_name("build", signer.public_key.keyid))
    signed_b = _sign(clocked, layout(step("build", [f"alias:{b}"])), owner).signed
    verdict = _verify(clocked, signed_b, owner, forged)
    assert not verdict.passed
    assert (f"{b} v2 is the next version: it signs nothing until a rotation makes it active"
            ) in verdict.failures[0].reason
    clocked.key_admin.RotateKey(pb.RotateKeyRequest(alias=b))
    assert _verify(clocked, signed_b, owner, forged).passed  # promoted: it signs now


def _verify(service: ClockedService, signed: bytes, owner: str, *links: Any) -> Any:
    return service.custody.Verify(pb.VerifyRequest(
        layout=signed, layout_keys=[pb.TrustedKey(alias=owner)],
        links=[pb.MetadataFile(path=link.file_name, content=link.signed) for link in links]))


def test_layout_lifetime_against_the_schedules(clocked: ClockedService) -> None:
    """Pure rule on a real key: when a layout outlives its aliases' schedules."""
    alias = _create(clocked, "sched")
    key = clocked.keys.get(alias)
    now = clocked.clock.now()
    schedules = {alias: RotationSchedule(period=30 * DAY, overlap=DAY)}
    first = key.active.lifecycle.became_active
    assert first is not None
    first += 30 * DAY

    def warnings(expires: timedelta, *, lists_next: bool = True, owner: bool = False
                 ) -> list[str]:
        return lifetime_warnings(expires=now + expires, functionaries=[] if owner else [
            (key, lists_next)], owners=[key] if owner else [], schedules=schedules, now=now)

    assert warnings(59 * DAY) == []
    [line] = warnings(61 * DAY)
    assert f"{alias} rotates every 30d (next {format_time(first)})" in line
    assert f"after its second rotation, at {format_time(first + 30 * DAY)}" in line
    [line] = warnings(31 * DAY, lists_next=False)
    assert f"after its next rotation, at {format_time(first)}" in line
    assert warnings(30 * DAY, owner=True) == []
    [line] = warnings(32 * DAY, owner=True)
    assert f"its owner key {alias} rotates every 30d" in line
    assert f"for its overlap of 1d after that, until {format_time(first + DAY)}" in line

    metrics = ServiceMetrics()
    metrics.watch_next_rotation(lambda: next_rotation_remaining(
        [key], periods={alias: 30 * DAY}, now=now))
    series = f'custody_key_next_rotation_seconds{{alias="{alias}"}} '
    [sample] = [line for line in metrics.render().splitlines() if line.startswith(series)]
    assert float(sample[len(series):]) == (first - now).total_seconds()


def test_sign_layout_warns_or_refuses_by_setting(keystore: Pkcs11KeyStore,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    builder, owner = unique_alias("due"), unique_alias("owner")
    for check in ("warn", "refuse"):
        settings = LifecycleSettings(scheduler=False, layout_expiry_check=check, schedules={
            builder: RotationSchedule(period=30 * DAY)})
        with clocked_service(keystore, tmp_path_factory.mktemp(check),
                             settings=settings) as service:
            if check == "warn":
                service.key_admin.CreateKey(pb.CreateKeyRequest(alias=builder))
                service.key_admin.CreateKey(pb.CreateKeyRequest(alias=owner))
                response = _sign(service, layout(step("build", [f"alias:{builder}"])), owner)
                assert any(f"but {builder} rotates every 30d" in w for w in response.warnings)
                continue
            message = _refused(service, layout(step("build", [f"alias:{builder}"])), owner)
            assert f"but {builder} rotates every 30d" in message
            assert "(lifecycle.layout_expiry_check = refuse)" in message
            assert [e.outcome for e in service.audit.events
                    if e.action == "sign-layout"] == ["failure"]
