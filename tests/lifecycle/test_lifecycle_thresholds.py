"""A threshold counts functionaries, not key versions: in Custody's Verify, and in layouts
Custody signs for the reference in-toto-verify (which counts keyids).

Pre-rotation lists an alias's active and next versions in threshold steps too, so that
they survive a rotation (docs/KEYS.md): Custody's Verify counts one functionary's links by
two of its versions once; the reference counts them twice, the documented limit, which
`lifecycle.threshold_next = false` removes at the price of breaking at every rotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.keys import ECDSA_P256
from custody_core.software_signer import SoftwareSigner
from custody_server.lifecycle.functionaries import resolve_functionaries
from custody_server.lifecycle.settings import LifecycleSettings

from .lifecycle_support import (
    EXPIRES,
    ClockedService,
    clocked_fixture,
    layout,
    reference_verify,
    sign_link,
    step,
    unique_alias,
)

clocked = clocked_fixture("thresholds", LifecycleSettings(scheduler=False))


@pytest.fixture(scope="module")
def rotated(clocked: ClockedService) -> dict[str, Any]:
    """Alias `a` rotated (v1 in its window, v2 active) with a link by each version; alias
    `b` with one version and a link; an owner key."""
    service = clocked
    a, b, owner = unique_alias("fa"), unique_alias("fb"), unique_alias("owner")
    for alias in (a, b, owner):
        service.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    link_a1 = sign_link(service.custody, step_name="build", alias=a)
    service.key_admin.RotateKey(pb.RotateKeyRequest(alias=a))  # 72 h overlap
    link_a2 = sign_link(service.custody, step_name="build", alias=a)
    link_b1 = sign_link(service.custody, step_name="build", alias=b)
    assert (link_a1.key_version, link_a2.key_version) == (1, 2)
    versions = service.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=a)).key.versions
    assert [v.state for v in versions] == ["verify-only", "active", "next"]
    b_next = service.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=b)).key.versions[1]
    owner_pem = service.key_admin.GetPublicKey(
        pb.GetPublicKeyRequest(alias=owner)).key.public_key_pem
    return {"a": a, "b": b, "owner": owner, "owner_pem": owner_pem,
            "a_keys": [json.loads(v.public_key_json) for v in versions[:2]],
            "a3": versions[2].keyid, "b2": b_next.keyid,
            "link_a1": link_a1, "link_a2": link_a2, "link_b1": link_b1}


def _files(*links: pb.SignLinkResponse) -> list[tuple[str, bytes]]:
    return [(link.file_name, link.signed) for link in links]


def _custody_verify(service: ClockedService, signed_layout: bytes, trusted: pb.TrustedKey,
                    *links: pb.SignLinkResponse) -> pb.VerifyResponse:
    response: pb.VerifyResponse = service.custody.Verify(pb.VerifyRequest(
        layout=signed_layout, layout_keys=[trusted],
        links=[pb.MetadataFile(path=name, content=data) for name, data in _files(*links)]))
    return response


def test_verify_counts_two_versions_of_one_alias_once(
        clocked: ClockedService, rotated: dict[str, Any], tmp_path: Path) -> None:
    """A layout signed elsewhere that lists both versions of `a` for a threshold of 2: the
    reference counts two keyids and passes; Custody counts one functionary and fails."""
    owner = SoftwareSigner.generate(ECDSA_P256)
    keys = {key["keyid"]: key for key in rotated["a_keys"]}
    payload = {"_type": "layout", "expires": EXPIRES, "readme": "external", "keys": keys,
               "steps": [step("build", list(keys), threshold=2)], "inspect": []}
    signed = sign_metablock(payload, [owner])
    links = (rotated["link_a1"], rotated["link_a2"])

    verdict = _custody_verify(clocked, signed,
                              pb.TrustedKey(public_key_pem=owner.public_key.public), *links)
    assert not verdict.passed
    failure = verdict.failures[0]
    assert failure.stage == "threshold" and failure.step == "build"
    assert "needs 2 link(s) signed by distinct authorized functionaries, found 1" in \
        failure.reason
    assert any("signed by one functionary" in w.message and "counted once" in w.message
               for w in verdict.warnings), verdict.warnings

    reference = reference_verify(tmp_path, signed_layout=signed,
                                 owner_pem=owner.public_key.public, links=_files(*links))
    assert reference.returncode == 0, reference.stderr  # why Custody never signs this


def test_custody_signed_threshold_layout_lists_active_and_next_versions(
        clocked: ClockedService, rotated: dict[str, Any], tmp_path: Path) -> None:
    a, b, owner = rotated["a"], rotated["b"], rotated["owner"]
    response = clocked.custody.SignLayout(pb.SignLayoutRequest(
        layout=layout(step("build", [f"alias:{a}", f"alias:{b}"], threshold=2)),
        key_alias=owner))
    assert any(f"alias:{a} resolved to its active version v2 and next version v3 only; "
               f"{a} v1 (until" in w for w in response.warnings), response.warnings
    assert any(f"alias:{b} lists {b} v1 and its next version {b} v2" in w
               and "the reference in-toto-verify counts keyids" in w
               for w in response.warnings), response.warnings
    signed_payload = json.loads(response.signed)["signed"]
    listed = signed_payload["steps"][0]["pubkeys"]
    assert listed == [rotated["link_a2"].keyid, rotated["a3"], rotated["link_b1"].keyid,
                      rotated["b2"]]
    assert rotated["link_a1"].keyid not in signed_payload["keys"]

    trusted = pb.TrustedKey(alias=owner)
    two_aliases = (rotated["link_a2"], rotated["link_b1"])
    assert _custody_verify(clocked, response.signed, trusted, *two_aliases).passed
    reference = reference_verify(tmp_path / "two", signed_layout=response.signed,
                                 owner_pem=rotated["owner_pem"], links=_files(*two_aliases))
    assert reference.returncode == 0, reference.stderr

    # A left-out version does not count, in either verifier.
    old_and_new = (rotated["link_a1"], rotated["link_a2"])
    verdict = _custody_verify(clocked, response.signed, trusted, *old_and_new)
    assert not verdict.passed and verdict.failures[0].stage == "threshold"
    reference = reference_verify(tmp_path / "old", signed_layout=response.signed,
                                 owner_pem=rotated["owner_pem"], links=_files(*old_and_new))
    assert reference.returncode != 0
    assert "requires '2' link metadata file(s), found '1'" in reference.stderr


def test_one_functionary_with_links_by_two_listed_versions(
        clocked: ClockedService, tmp_path: Path) -> None:
    """The trade-off of pre-rotation in a threshold step: after a rotation of `a`, its
    links by the active version of the signing time and by the next one (now active) are
    both listed. Custody counts them once and fails; the reference counts two keyids and
    passes. Links by `a` and `b` pass in both, before and after the rotation."""
    service = clocked
    a, b, owner = unique_alias("ta"), unique_alias("tb"), unique_alias("towner")
    for alias in (a, b, owner):
        service.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    owner_pem = service.key_admin.GetPublicKey(
        pb.GetPublicKeyRequest(alias=owner)).key.public_key_pem
    signed = service.custody.SignLayout(pb.SignLayoutRequest(
        layout=layout(step("build", [f"alias:{a}", f"alias:{b}"], threshold=2)),
        key_alias=owner)).signed
    trusted = pb.TrustedKey(alias=owner)
    link_a1 = sign_link(service.custody, step_name="build", alias=a)
    link_b1 = sign_link(service.custody, step_name="build", alias=b)
    service.key_admin.RotateKey(pb.RotateKeyRequest(alias=a))
    link_a2 = sign_link(service.custody, step_name="build", alias=a)
    assert (link_a1.key_version, link_a2.key_version) == (1, 2)

    for name, links in (("before", (link_a1, link_b1)), ("after", (link_a2, link_b1))):
        assert _custody_verify(service, signed, trusted, *links).passed, name
        reference = reference_verify(tmp_path / name, signed_layout=signed,
                                     owner_pem=owner_pem, links=_files(*links))
        assert reference.returncode == 0, (name, reference.stderr)

    one_functionary = (link_a1, link_a2)
    verdict = _custody_verify(service, signed, trusted, *one_functionary)
    assert not verdict.passed
    assert "needs 2 link(s) signed by distinct authorized functionaries, found 1" in \
        verdict.failures[0].reason
    assert any("signed by one functionary" in w.message and "counted once" in w.message
               for w in verdict.warnings), verdict.warnings
    reference = reference_verify(tmp_path / "one", signed_layout=signed, owner_pem=owner_pem,
                                 links=_files(*one_functionary))
    assert reference.returncode == 0, reference.stderr  # the documented limit


def test_threshold_next_off_lists_only_the_active_version(
        clocked: ClockedService, rotated: dict[str, Any]) -> None:
    payload = json.loads(layout(step("build", [f"alias:{rotated['a']}",
                                               f"alias:{rotated['b']}"], threshold=2)))
    resolution = resolve_functionaries(payload, keys=clocked.keys, now=clocked.clock.now(),
                                       threshold_next=False)
    assert resolution.payload["steps"][0]["pubkeys"] == [rotated["link_a2"].keyid,
                                                         rotated["link_b1"].keyid]
    assert any(f"does not list its next version {rotated['a']} v3" in w
               and "fails for links signed after the next rotation" in w
               for w in resolution.warnings), resolution.warnings
    assert resolution.aliases == {rotated["a"]: False, rotated["b"]: False}


def test_threshold_one_step_lists_every_verifying_version(
        clocked: ClockedService, rotated: dict[str, Any], tmp_path: Path) -> None:
    response = clocked.custody.SignLayout(pb.SignLayoutRequest(
        layout=layout(step("build", [f"alias:{rotated['a']}"])), key_alias=rotated["owner"]))
    listed = json.loads(response.signed)["signed"]["steps"][0]["pubkeys"]
    assert listed == [rotated["link_a1"].keyid, rotated["link_a2"].keyid, rotated["a3"]]
    assert any("the reference in-toto-verify does not: re-sign this layout after" in w
               for w in response.warnings)
    reference = reference_verify(tmp_path, signed_layout=response.signed,
                                 owner_pem=rotated["owner_pem"],
                                 links=_files(rotated["link_a1"]))
    assert reference.returncode == 0, reference.stderr


@pytest.mark.parametrize(("pubkeys", "message"), [
    (["alias:{a}"], "has threshold 2 but its pubkeys name only 1 distinct functionary"),
    (["{a1}", "{a2}", "alias:{b}"],
     "has threshold 2 and lists 2 versions of one key ({a} v1, {a} v2)"),
    (["alias:{a}", "{a1}"],
     "has threshold 2 and lists 3 versions of one key ({a} v2, {a} v3, {a} v1)"),
])
def test_two_versions_of_one_key_in_a_threshold_step_are_refused(
        clocked: ClockedService, rotated: dict[str, Any], pubkeys: list[str],
        message: str) -> None:
    names = {"a": rotated["a"], "b": rotated["b"], "a1": rotated["link_a1"].keyid,
             "a2": rotated["link_a2"].keyid}
    with pytest.raises(grpc.RpcError) as caught:
        clocked.custody.SignLayout(pb.SignLayoutRequest(
            layout=layout(step("build", [p.format(**names) for p in pubkeys], threshold=2)),
            key_alias=rotated["owner"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message.format(**names) in (caught.value.details() or "")
