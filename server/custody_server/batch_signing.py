"""SignLinks: many links in one call, each decided, signed and audited on its own.

The links are signed one after another in the calling thread (the token signs one at a
time anyway, docs/DESIGN.md). Then every link's audit entry goes to a recording thread
at once, so that they queue together and the trail's group commit writes them together:
a batch of 100 costs a few synchronous writes, not 100. (Recording each entry as soon
as its link was signed measured about 30% more CPU per link than this: more, smaller
writes, and the interpreter lock passed back and forth between signing and recording.) A link's
result is given only once its own entry is on disk (fail-closed per link): when an entry
cannot be written, that link's signature is withheld (UNAVAILABLE) and the others are
not affected. The links whose entries are written then go into the attestation store in
one transaction; if that fails, each of them is withheld (UNAVAILABLE).

A link refused before signing (the policy, the rate, a malformed field) comes in as a
RefusedLink carrying its error and the audit event that records it. The response as a
whole stays within `max_response_bytes`: a link that would not fit is refused before it
is signed (RESOURCE_EXHAUSTED), as a SignLink's would be.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from custody_core.errors import CustodyError
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.errors import LimitExceededError
from custody_server.signing import (
    RESPONSE_FIELDS_ALLOWANCE,
    LinkRequest,
    PreparedLink,
    SignedMetadata,
    SigningService,
)

RECORDING_THREADS = 32  # entries of one or more batches waiting for the trail at once
ERROR_ALLOWANCE = 64  # a result's framing and status code, besides its message


@dataclass(frozen=True)
class RefusedLink:
    """A link refused before it was signed: its error, and the audit event that records
    it (None: recorded already, or a refusal the trail samples, such as a rate limit)."""

    error: CustodyError
    event: AuditEvent | None = None


LinkResult = SignedMetadata | CustodyError


class BatchSigning:
    def __init__(self, *, signing: SigningService, audit: AuditSink, max_links: int,
                 max_response_bytes: int | None = None,
                 threads: int = RECORDING_THREADS) -> None:
        self._signing = signing
        self._audit = audit
        self.max_links = max_links
        self._max_response_bytes = max_response_bytes
        self._recorders = ThreadPoolExecutor(max_workers=threads,
                                             thread_name_prefix="custody-batch-audit")

    def check_size(self, count: int, *, caller: str) -> None:
        """LimitExceededError (audited) for a call with more links than
        limits.max_links_per_batch: nothing of it is signed."""
        if count <= self.max_links:
            return
        error = LimitExceededError(
            f"{count} links is over the limit of {self.max_links} per SignLinks call "
            "(limits.max_links_per_batch): split the batch")
        record_or_refuse(self._audit, AuditEvent.failure(
            action="request-limit", category="api", error=error,
            details={"rpc": "SignLinks", "caller": caller, "links": count}),
            refusal="audit log unavailable")
        raise error

    def sign_links(self, links: Sequence[LinkRequest | RefusedLink], *,
                   caller: str) -> list[LinkResult]:
        """One result per link, in order: its signed link, or the error its SignLink
        would have raised."""
        self.check_size(len(links), caller=caller)
        prepared: list[PreparedLink] = []
        used = 0
        for link in links:
            if isinstance(link, RefusedLink):
                prepared.append(PreparedLink(event=link.event or _NOT_RECORDED,
                                             error=link.error))
            else:
                budget = (None if self._max_response_bytes is None
                          else self._max_response_bytes - used)
                prepared.append(self._signing.prepare_link(link, caller=caller,
                                                           response_budget=budget))
            used += _response_size(prepared[-1])
        # All entries queue at once, so that the trail's writes take many each.
        recordings = [self._record(item) for item in prepared]
        recorded = [_recorded(recording) for recording in recordings]
        # The links whose entries are written go into the attestation store together
        # (one transaction); if that fails, none of them is delivered.
        withheld: CustodyError | None = None
        try:
            self._signing.keep([item for item, error in zip(prepared, recorded, strict=True)
                                if error is None])
        except CustodyError as error:  # StoreUnavailableError
            withheld = error
        return [error or (withheld if withheld is not None and item.result is not None
                          else None) or _delivered(item)
                for item, error in zip(prepared, recorded, strict=True)]

    def _record(self, prepared: PreparedLink) -> Future[None] | None:
        if prepared.event is _NOT_RECORDED:
            return None
        context = contextvars.copy_context()  # the request id and caller, for the entry
        return self._recorders.submit(context.run, record_or_refuse, self._audit,
                                      prepared.event, refusal=prepared.refusal)

    def close(self) -> None:
        self._recorders.shutdown(wait=True)


# A stand-in event for a refusal that is not recorded here (never written).
_NOT_RECORDED = AuditEvent(action="sign-link", category="process", outcome="failure")


def _response_size(prepared: PreparedLink) -> int:
    if prepared.result is not None:
        return len(prepared.result.content) + RESPONSE_FIELDS_ALLOWANCE
    return len(str(prepared.error)) + ERROR_ALLOWANCE


def _recorded(recording: Future[None] | None) -> CustodyError | None:
    """None once the link's entry is on disk; its audit error if it is not."""
    if recording is not None:
        try:
            recording.result()
        except CustodyError as error:  # AuditUnavailableError: withheld
            return error
    return None


def _delivered(prepared: PreparedLink) -> LinkResult:
    try:
        return prepared.deliver()
    except CustodyError as error:
        return error
