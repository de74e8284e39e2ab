"""Fail-closed audit in each service that records: nothing leaves without its entry.

Signing, Verify and key changes share one rule (custody_server.audit_events
.record_or_refuse): when the audit sink fails, the call raises AuditUnavailableError
(UNAVAILABLE) with what it withholds, and the sink's error stays attached as the cause.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from custody_core.api_enums import EnvelopeKind, KeyAlgorithm
from custody_server.audit_events import AuditEvent
from custody_server.errors import AuditUnavailableError
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.signing import LinkRequest, SigningService
from custody_server.verification import VerificationService, VerifyInput


class DownSink:
    """An audit sink whose disk is full: every record fails, after being attempted."""

    def __init__(self) -> None:
        self.attempted: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.attempted.append(event)
        raise OSError(28, "No space left on device")


def now() -> datetime:
    return datetime.now(UTC)


def test_a_signature_is_withheld_when_its_entry_cannot_be_written(service: Any) -> None:
    sink = DownSink()
    signing = SigningService(keys=service.keys, audit=sink, max_artifacts=10)
    request = LinkRequest(step_name="build", command=("make",), materials={}, products={},
                          byproducts={}, environment={}, key_alias="build",
                          envelope=EnvelopeKind.DSSE)

    with pytest.raises(AuditUnavailableError, match="signature withheld") as caught:
        signing.sign_link(request, caller="test")

    assert isinstance(caught.value.__cause__, OSError)
    assert [(e.action, e.outcome) for e in sink.attempted] == [("sign-link", "success")]
    assert sink.attempted[0].details["signed_sha256"]  # it was signed, then withheld


def test_a_refused_verify_is_still_unavailable_when_its_entry_fails(service: Any) -> None:
    sink = DownSink()
    verification = VerificationService(keys=service.keys, audit=sink, clock=now)
    request = VerifyInput(layout=b"", layout_keys=(), links={}, inspection_links={},
                          parameters={})

    with pytest.raises(AuditUnavailableError, match="verdict withheld"):
        verification.verify(request, caller="test")

    assert [(e.action, e.outcome, e.reason) for e in sink.attempted] == [
        ("verify", "failure", "layout is required")]


def test_a_key_change_says_it_was_done_but_not_recorded(service: Any,
                                                        unique_label: str) -> None:
    sink = DownSink()
    lifecycle = KeyLifecycle(keys=service.keys, audit=sink, clock=now)

    with pytest.raises(AuditUnavailableError,
                       match="key-create was done but its audit record could not be written"):
        lifecycle.create(unique_label, KeyAlgorithm.ED25519, caller="test")

    assert service.keys.exists(unique_label)  # the change happened; only its record failed
    assert [(e.action, e.outcome) for e in sink.attempted] == [("key-create", "success")]
