"""SignLayout and Verify end to end, held against the reference in-toto-verify."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from venv_tools import venv_tool

from custody_api.v1 import custody_pb2 as pb

FOO = {"foo.py": {"sha256": "1" * 64}}
FOO_TAR = {"foo.tar.gz": {"sha256": "2" * 64}}


def _layout(expires: str = "2099-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "_type": "layout",
        "expires": expires,
        "readme": "integration",
        "keys": {},
        "steps": [
            {"_type": "step", "name": "write-code", "threshold": 1,
             "pubkeys": ["alias:build"], "expected_command": [],
             "expected_materials": [],
             "expected_products": [["CREATE", "foo.py"], ["DISALLOW", "*"]]},
            {"_type": "step", "name": "package", "threshold": 1,
             "pubkeys": ["alias:build"],
             "expected_command": ["tar", "zcvf", "foo.tar.gz", "foo.py"],
             "expected_materials": [["MATCH", "foo.py", "WITH", "PRODUCTS", "FROM", "write-code"],
                                    ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "foo.tar.gz"], ["DISALLOW", "*"]]},
        ],
        "inspect": [],
    }


def _sign_links(custody: Any, envelope: pb.Envelope, *, package_materials: dict[str, Any] = FOO
                ) -> list[pb.SignLinkResponse]:
    def art(items: dict[str, Any]) -> list[pb.Artifact]:
        return [pb.Artifact(path=p, digest=d) for p, d in items.items()]

    return [
        custody.SignLink(pb.SignLinkRequest(step_name="write-code", products=art(FOO),
                                            envelope=envelope)),
        custody.SignLink(pb.SignLinkRequest(step_name="package",
                                            command=["tar", "zcvf", "foo.tar.gz", "foo.py"],
                                            materials=art(package_materials),
                                            products=art(FOO_TAR), envelope=envelope)),
    ]


def _owner_pem(key_admin: Any) -> str:
    return str(key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias="owner")).key.public_key_pem)


def _reference_verify(tmp_path: Path, layout: bytes, links: list[pb.SignLinkResponse],
                      owner_pem: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "root.layout").write_bytes(layout)
    (tmp_path / "owner.pub").write_text(owner_pem)
    for link in links:
        (tmp_path / link.file_name).write_bytes(link.signed)
    return subprocess.run(
        [venv_tool("in-toto-verify"), "-l", "root.layout", "--verification-keys", "owner.pub"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )


def _verify(custody: Any, layout: bytes, links: list[pb.SignLinkResponse]) -> pb.VerifyResponse:
    response: pb.VerifyResponse = custody.Verify(pb.VerifyRequest(
        layout=layout,
        layout_keys=[pb.TrustedKey(alias="owner")],
        links=[pb.MetadataFile(path=link.file_name, content=link.signed) for link in links],
    ))
    return response


@pytest.mark.parametrize("envelope", [pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE])
def test_chain_passes_here_and_in_reference(custody: Any, key_admin: Any, tmp_path: Path,
                                            envelope: pb.Envelope) -> None:
    signed = custody.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(_layout()).encode(), key_alias="owner", envelope=envelope))
    links = _sign_links(custody, envelope)
    verdict = _verify(custody, signed.signed, links)
    assert verdict.passed, verdict.failures
    result = _reference_verify(tmp_path, signed.signed, links, _owner_pem(key_admin))
    assert result.returncode == 0, result.stderr


def test_tampered_chain_fails_here_and_in_reference(custody: Any, key_admin: Any,
                                                    tmp_path: Path) -> None:
    signed = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps(_layout()).encode()))
    links = _sign_links(custody, pb.ENVELOPE_METABLOCK,
                        package_materials={"foo.py": {"sha256": "9" * 64}})
    verdict = _verify(custody, signed.signed, links)
    assert not verdict.passed
    assert any("foo.py" in f.paths for f in verdict.failures), verdict.failures
    assert any(f.step == "package" for f in verdict.failures)
    result = _reference_verify(tmp_path, signed.signed, links, _owner_pem(key_admin))
    assert result.returncode != 0


def test_expired_layout_fails_with_reason(custody: Any) -> None:
    signed = custody.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(_layout(expires="2001-01-01T00:00:00Z")).encode()))
    verdict = _verify(custody, signed.signed, _sign_links(custody, pb.ENVELOPE_METABLOCK))
    assert not verdict.passed
    assert "expire" in verdict.failures[0].reason.lower()


def test_layout_signed_by_other_key_fails(custody: Any) -> None:
    signed = custody.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(_layout()).encode(), key_alias="build"))
    verdict = _verify(custody, signed.signed, _sign_links(custody, pb.ENVELOPE_METABLOCK))
    assert not verdict.passed
    assert verdict.failures[0].stage.startswith("layout")


@pytest.mark.parametrize(("layout", "needle"), [
    (b"", "layout"),
    (b"{not json", "json"),
    (b"\xff\xfe", "utf-8"),
    (b"[" * 10_000 + b"]" * 10_000, "nested"),
    (json.dumps({"_type": "link"}).encode(), "layout"),
])
def test_bad_layouts_are_invalid_argument(custody: Any, layout: bytes, needle: str) -> None:
    calls: tuple[Callable[[], object], ...] = (
        lambda: custody.SignLayout(pb.SignLayoutRequest(layout=layout)),
        lambda: custody.Verify(pb.VerifyRequest(
            layout=layout, layout_keys=[pb.TrustedKey(alias="owner")])),
    )
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (caught.value.details() or "").lower()


def test_verify_without_layout_keys_is_invalid(custody: Any) -> None:
    signed = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps(_layout()).encode()))
    with pytest.raises(grpc.RpcError) as caught:
        custody.Verify(pb.VerifyRequest(layout=signed.signed))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
