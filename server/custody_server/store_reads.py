"""Reads of the attestation store, each audited before its answer leaves (fail-closed).

The store holds every run's links: what was built, by which command, from what. Reading
it is recorded like every other call (docs/STORE.md, "Who may read the store"): GetLink
and ListLinks write a `store-read` entry saying what was asked (the filters) and what was
found (how many files, of which runs, how many bytes), never a file's content; a refused
read (a bad filter, the store down) writes one too, with the reason. If the entry cannot
be written, the caller gets UNAVAILABLE and nothing of what was read. Verify's reads of
the store are audited by the verification service (its `verify` entry, or a `store-read`
entry for a plan). Only ListKeys and GetPublicKey, which read public keys, write no entry
(custody_server.policy.rpcs.READS_WITHOUT_AUDIT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from custody_core.errors import CustodyError
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse

STORE_READ = "store-read"  # the audit action (ECS: database / access)
STORE_READ_CATEGORY = "database"
MAX_RUNS = 20  # the runs a ListLinks entry names (the count says how many files)
_REFUSAL = "audit log unavailable: store read withheld"

Answer = TypeVar("Answer")


def audited_read(audit: AuditSink, read: Callable[[], Answer], *, caller: str,
                 asked: Mapping[str, Any],
                 found: Callable[[Answer], Mapping[str, Any]]) -> Answer:
    """`read()`'s answer once its `store-read` entry is written: `asked` (the request's
    filters) and `found(answer)` (what it holds, without contents). A read that raises is
    recorded as a failure with its reason, then re-raised."""
    details: dict[str, Any] = {"caller": caller, **asked}
    try:
        answer = read()
    except CustodyError as error:
        record_or_refuse(audit, AuditEvent.failure(
            action=STORE_READ, category=STORE_READ_CATEGORY, error=error, details=details),
            refusal=_REFUSAL)
        raise
    record_or_refuse(audit, AuditEvent(action=STORE_READ, category=STORE_READ_CATEGORY,
                                       outcome="success", details={**details, **found(answer)}),
                     refusal=_REFUSAL)
    return answer


def found_files(runs: Iterable[str], sizes: Iterable[int], *, count: int) -> dict[str, Any]:
    """What a read returned: how many files, the runs they belong to (the first
    MAX_RUNS distinct ones; "" is a file of no run) and their bytes (0 without contents)."""
    distinct = list(dict.fromkeys(runs))
    found: dict[str, Any] = {"count": count, "run_ids": distinct[:MAX_RUNS],
                             "content_bytes": sum(sizes)}
    if len(distinct) > MAX_RUNS:
        found["runs"] = len(distinct)
    return found
