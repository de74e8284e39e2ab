"""`record stop` uses the materials of `record start` only if the service signed them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, sign_dsse, sign_metablock
from custody_core.errors import MetadataError, SignatureError
from custody_core.link import build_link
from custody_core.preliminary_link import check_preliminary_link
from custody_core.software_signer import SoftwareSigner

SHA = {"sha256": "ab" * 32}
OTHER = {"sha256": "cd" * 32}
WHO = {"custody.requested-by": "spiffe://ci/agent"}


@pytest.fixture(scope="module")
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate("ecdsa-sha2-nistp256")


def _link(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": "edit", "command": [], "materials": {"a.py": SHA},
                              "products": {}, "byproducts": {}, "environment": WHO}
    return build_link(**{**fields, **changes})


def _check(data: bytes, signer: SoftwareSigner) -> Any:
    return check_preliminary_link(data, step_name="edit",
                                  keys={signer.public_key.keyid: signer.public_key},
                                  environment=WHO)


def test_the_signed_preliminary_link_gives_its_materials(signer: SoftwareSigner) -> None:
    for data in (sign_metablock(_link(), [signer]),
                 sign_dsse(json.dumps(_link()).encode(), payload_type=PAYLOAD_TYPE_INTOTO,
                           signers=[signer])):
        assert dict(_check(data, signer).materials) == {"a.py": SHA}


def _tampered(data: bytes) -> bytes:
    document = json.loads(data)
    document["signed"]["materials"]["a.py"] = OTHER
    return json.dumps(document).encode()


def _added(data: bytes) -> bytes:
    document = json.loads(data)
    document["signed"]["materials"]["b.py"] = SHA
    return json.dumps(document).encode()


def _unsigned(data: bytes) -> bytes:
    document = json.loads(data)
    document["signatures"] = []
    return json.dumps(document).encode()


@pytest.mark.parametrize("change", [_tampered, _added, _unsigned])
def test_a_changed_preliminary_link_is_refused(signer: SoftwareSigner,
                                               change: Callable[[bytes], bytes]) -> None:
    with pytest.raises(SignatureError, match="not signed by the key"):
        _check(change(sign_metablock(_link(), [signer])), signer)


def test_another_key_is_refused(signer: SoftwareSigner) -> None:
    other = SoftwareSigner.generate("ed25519")
    with pytest.raises(SignatureError):
        _check(sign_metablock(_link(), [other]), signer)


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"name": "build"}, MetadataError, "for step 'build', not 'edit'"),
    ({"products": {"a.py": SHA}}, MetadataError, "records a command or products"),
    ({"command": ["make"]}, MetadataError, "records a command or products"),
    ({"environment": {"custody.requested-by": "mallory"}}, SignatureError, "another"),
    ({"environment": {}}, SignatureError, "another"),
])
def test_what_record_start_did_not_sign_is_refused(
        signer: SoftwareSigner, changes: dict[str, Any], error: type[Exception],
        message: str) -> None:
    with pytest.raises(error, match=message):
        _check(sign_metablock(_link(**changes), [signer]), signer)


@pytest.mark.parametrize("data", [b"", b"{}", b"not json", b'{"signed": {}, "signatures": []}'])
def test_garbage_is_a_metadata_error(signer: SoftwareSigner, data: bytes) -> None:
    with pytest.raises(MetadataError, match="preliminary link"):
        _check(data, signer)
