"""Audit test fixtures: a checkpoint key in the session's SoftHSM token, trails in temp dirs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_server.audit import AuditSettings, AuditTrail
from custody_server.audit.anchor import TrailAnchor
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore


@pytest.fixture(scope="session")
def audit_key_label(keystore: Pkcs11KeyStore) -> str:
    label = "custody:audit-tests:v1"
    if not any(key.label == label for key in keystore.list_keys()):
        keystore.generate_key(label=label, algorithm=KeyAlgorithm.ECDSA_P256)
    return label


@pytest.fixture(scope="session")
def audit_signer(keystore: Pkcs11KeyStore, audit_key_label: str) -> Signer:
    """The checkpoint signer: a P-256 key inside the SoftHSM token."""
    return keystore.signer(audit_key_label)


@pytest.fixture(scope="session")
def audit_keys(audit_signer: Signer) -> dict[str, PublicKey]:
    return {audit_signer.public_key.keyid: audit_signer.public_key}


@pytest.fixture
def trail_anchor(keystore: Pkcs11KeyStore) -> TrailAnchor:
    """This test's anchor in the session's token: a node name of its own."""
    return TrailAnchor(keystore, f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def open_trail(tmp_path: Path, audit_signer: Signer, trail_anchor: TrailAnchor
               ) -> Iterator[Callable[..., AuditTrail]]:
    """Opens trails on tmp_path/audit (closed at the end of the test)."""
    opened: list[AuditTrail] = []

    def open_(**overrides: Any) -> AuditTrail:
        settings = AuditSettings(**{"directory": tmp_path / "audit",
                                    "retry_interval_seconds": 0.05, **overrides})
        trail = AuditTrail(settings=settings, checkpoint_signer=lambda: audit_signer,
                           anchor=trail_anchor)
        opened.append(trail)
        return trail

    yield open_
    for trail in opened:
        trail.close()
