"""Shared material for the core format tests: fixture paths, keys and reference signers."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer._crypto_signer import CryptoSigner

from custody_core.keys import PublicKey
from custody_core.software_signer import SoftwareSigner

CONFORMANCE = Path("/work/shared/conformance/in-toto-python")
DEMO = CONFORMANCE / "demo_files"
DEMO_DSSE = CONFORMANCE / "demo_dsse_files"
PEMS = CONFORMANCE / "pems"
PEM_PASSWORD = b"hunter2"

# Key kinds used across the cross tests with the reference: three fixture PEMs and
# one generated P-384 key (the fixtures have none).
KEY_KINDS = ("rsa", "ecdsa", "ed25519", "ecdsa-p384")


@functools.cache
def private_pem(kind: str) -> bytes:
    if kind == "ecdsa-p384":
        key = ec.generate_private_key(ec.SECP384R1())
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return (PEMS / f"{kind}_private_unencrypted.pem").read_bytes()


def core_signer(kind: str) -> SoftwareSigner:
    return SoftwareSigner.from_private_pem(private_pem(kind))


def reference_signer(kind: str) -> CryptoSigner:
    key = serialization.load_pem_private_key(private_pem(kind), password=None)
    return CryptoSigner(key)


def demo_layout() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEMO / "demo.layout.template").read_text())
    return data


def demo_layout_keys() -> dict[str, PublicKey]:
    """The functionary keys of the demo layout, under their legacy keyids."""
    keys = demo_layout()["signed"]["keys"]
    return {keyid: PublicKey.from_dict(key) for keyid, key in keys.items()}
