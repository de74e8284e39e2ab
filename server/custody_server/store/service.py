"""The attestation store as the services use it: keep what is signed, add what was signed
elsewhere (checked), find a run by its final product, delete by retention (audited),
and health that follows the database.

In the signing path like the audit trail: a link is returned only once it is stored.
The order is audit, then store. The audit entry records the key's use, which happened
whether or not the link can then be delivered; the store only ever holds links whose
signing is audited. When the store fails after the entry was written, the link is
withheld (UNAVAILABLE) and a `store-link` failure entry names it by its signed SHA-256.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, parse_envelope
from custody_core.errors import CustodyError, KeyFormatError, MetadataError, SignatureError
from custody_core.keys import (
    LEGACY_KEYID_HASH_ALGORITHMS,
    PublicKey,
    compute_keyid,
    compute_legacy_keyid,
)
from custody_core.link import STATEMENT_TYPE, link_file_name
from custody_core.step_links import link_from_envelope
from custody_core.step_names import check_step_name
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.errors import (
    LimitExceededError,
    NotFoundError,
    RequestError,
    StoreUnavailableError,
)
from custody_server.store.records import (
    SIGNED_RUN_ID,
    LinkPage,
    LinkQuery,
    NewRecord,
    StoredRecord,
    check_id_prefix,
    check_run_id,
)
from custody_server.store.settings import DEFAULT_MAX_LINK_BYTES
from custody_server.store.sql import SqlStore

log = structlog.get_logger("custody.store")

STORE_UNAVAILABLE = "store"  # the health reason while the store cannot be written
PROBE_INTERVAL_SECONDS = 1.0  # while the store is failing
SWEEP_BATCH = 10_000  # records deleted per transaction (and per audit entry)
WITHHELD = "attestation store unavailable: link withheld"

HealthListener = Callable[[bool], None]


class AttestationStore:
    def __init__(self, sql: SqlStore, *, audit: AuditSink, clock: Callable[[], datetime],
                 max_link_bytes: int = DEFAULT_MAX_LINK_BYTES) -> None:
        """`max_link_bytes`: AddLink refuses a larger file before parsing it."""
        self.sql = sql
        self.max_link_bytes = max_link_bytes
        self._audit = audit
        self._clock = clock
        self._healthy = True
        self._listener: HealthListener | None = None
        self._lock = threading.Lock()
        self._failed = threading.Event()  # wakes the watch

    @property
    def description(self) -> str:
        return str(getattr(self.sql.source, "description", self.sql.dialect))

    # health

    def set_health_listener(self, listener: HealthListener) -> None:
        self._listener = listener
        listener(self._healthy)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _report(self, healthy: bool) -> None:
        with self._lock:
            if healthy == self._healthy:
                return
            self._healthy = healthy
        if healthy:
            log.info("store.available", store=self.description)
        else:
            log.error("store.unavailable", store=self.description)
            self._failed.set()
        if self._listener is not None:
            try:
                self._listener(healthy)
            except Exception:  # health must not break a call
                log.exception("store.health_listener_failed")

    def _guarded(self, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except StoreUnavailableError:
            self._report(False)
            raise
        self._report(True)
        return result

    def probe(self) -> bool:
        """One query; the health it shows is reported."""
        try:
            self._guarded(self.sql.ping)
        except StoreUnavailableError:
            return False
        return True

    def wait_for_failure(self, timeout: float) -> bool:
        fired = self._failed.wait(timeout)
        self._failed.clear()
        return fired

    # the signing path

    def keep_signed(self, records: Sequence[tuple[NewRecord, str]]) -> None:
        """Store links and layouts the service signed (their audit entries are written):
        (record, signed SHA-256) each, in one transaction. StoreUnavailableError if they
        cannot be, after a `store-link` failure entry for each (best effort)."""
        if not records:
            return
        kept = [record for record, _ in records]
        try:
            self._guarded(lambda: self._insert(kept))
        except Exception as error:
            # Whatever stopped it (intake refuses what the store cannot hold, so a request
            # error here is a bug), a signature was made and is withheld: say so.
            for record, signed_sha256 in records:
                with contextlib.suppress(Exception):  # the store failure is what counts
                    self._audit.record(AuditEvent(
                        action="store-link", category="database", outcome="failure",
                        reason=f"{WITHHELD}: {error}"[:500], details={
                            "kind": record.kind, "step": record.step[:240],
                            "run_id": record.run_id, "caller": record.caller,
                            "signed_sha256": signed_sha256, "store": self.description}))
            if isinstance(error, StoreUnavailableError):
                raise StoreUnavailableError(WITHHELD) from error
            raise

    def _insert(self, records: Sequence[NewRecord]) -> int:
        return self.sql.insert(records, stored_at=self._clock())

    # AddLink

    def add_link(self, content: bytes, *, run_id: str, trusted: Mapping[str, PublicKey],
                 known: Mapping[str, PublicKey], caller: str) -> StoredRecord:
        """Store a link signed elsewhere once it is shown to be a well-formed link signed
        by a key of `known` (the service's) or `trusted` (given: each must carry its own
        keyid, and never stands in for a service key). Filed under the run the link names
        in its signed environment, if it names one: `run_id` must then be that run (or
        empty). Audited either way; the record is committed only once its entry is
        written."""
        details: dict[str, Any] = {"caller": caller, "run_id": run_id[:200],
                                   "bytes": len(content)}
        try:
            if len(content) > self.max_link_bytes:  # before it is parsed: memory
                raise LimitExceededError(
                    f"the link is {len(content)} bytes, over the limit of "
                    f"{self.max_link_bytes} (store.max_link_bytes)")
            check_run_id(run_id)
            keys = {**_given_keys(trusted, known=known), **known}  # a service key wins
            record = _checked_link(content, run_id=run_id, keys=keys, caller=caller)
            details.update(step=record.step, keyid=record.keyid, id=record.id,
                           run_id=record.run_id, store=self.description)
            event = AuditEvent(action="add-link", category="database", outcome="success",
                               details=details)

            def audited(cursor_count: int) -> None:
                record_or_refuse(self._audit, event, refusal="audit log unavailable: "
                                                            "link not stored")

            self._guarded(lambda: self.sql.insert([record], stored_at=self._clock(),
                                                  confirm=audited))
        except CustodyError as error:
            with contextlib.suppress(CustodyError):
                record_or_refuse(self._audit, AuditEvent.failure(
                    action="add-link", category="database", error=error, details=details),
                    refusal="audit log unavailable")
            raise
        return self.get(record.id, content=False)

    # reads

    def get(self, id_prefix: str, *, content: bool = True) -> StoredRecord:
        prefix = check_id_prefix(id_prefix)
        found: list[StoredRecord] = self._guarded(lambda: self.sql.get(prefix))
        if not found:
            raise NotFoundError(f"no stored link or layout with id {prefix}")
        if len(found) > 1:
            raise RequestError(f"id {prefix} names more than one stored file: give more digits")
        record = found[0]
        if not content:
            return StoredRecord(**{**record.__dict__, "content": None})
        return record

    def query(self, query: LinkQuery) -> list[StoredRecord]:
        result: list[StoredRecord] = self._guarded(lambda: self.sql.query(query))
        return result

    def page(self, query: LinkQuery) -> LinkPage:
        """A page of ListLinks, with where the next one goes on (SqlStore.page)."""
        result: LinkPage = self._guarded(lambda: self.sql.page(query))
        return result

    def find_runs(self, digests: Sequence[str], signers: Mapping[str, Sequence[str]]
                  ) -> list[str]:
        """The newest run whose final-step link, by a keyid listed for that step (`signers`:
        step -> keyids), made every digest (SqlStore.find_runs)."""
        result: list[str] = self._guarded(lambda: self.sql.find_runs(digests, signers))
        return result

    def run_links(self, run_id: str, *, steps: Mapping[str, Sequence[str]],
                  unlisted: int) -> list[StoredRecord]:
        """The links of a run a layout's verification can use (SqlStore.run_links)."""
        result: list[StoredRecord] = self._guarded(
            lambda: self.sql.run_links(run_id, steps=steps, unlisted=unlisted))
        return result

    def has_product(self, digest: str, signers: Mapping[str, Sequence[str]]) -> bool:
        return bool(self._guarded(lambda: self.sql.has_product(digest, signers)))

    # retention

    def sweep(self, *, retention: Any, now: datetime | None = None) -> int:
        """Delete what was stored more than `retention` (a timedelta) ago; each batch is
        committed only once its `store-retention` entry is written. How many went."""
        cutoff = (now or self._clock()) - retention
        total = 0
        while True:
            def audited(count: int, runs: list[str]) -> None:
                record_or_refuse(self._audit, AuditEvent(
                    action="store-retention", category="database", outcome="success",
                    details={"deleted": count, "stored_before": cutoff.isoformat(),
                             "runs": runs[:100], "store": self.description}),
                    refusal="audit log unavailable: nothing deleted")

            count: int = self._guarded(lambda: self.sql.delete_before(
                cutoff, limit=SWEEP_BATCH, confirm=audited))
            total += count
            if count < SWEEP_BATCH:
                return total


def _checked_link(content: bytes, *, run_id: str, keys: Mapping[str, PublicKey],
                  caller: str) -> NewRecord:
    if not content:
        raise RequestError("link is required")
    envelope = parse_envelope(content)
    if envelope.kind == "dsse" and envelope.payload_type != PAYLOAD_TYPE_INTOTO:
        raise MetadataError(f"link: DSSE payloadType must be {PAYLOAD_TYPE_INTOTO}")
    if envelope.payload.get("_type") == "layout":
        raise RequestError("AddLink takes links: a layout is stored when the service signs it")
    link = link_from_envelope(envelope)
    check_step_name(link.name, what="the link's name")
    verified = envelope.verified_keyids(keys)
    # The key that verified names the record (its keyid, its file name), in the order of
    # the signatures.
    signers = [keys[s.keyid].keyid for s in envelope.signatures if s.keyid in verified]
    if not signers:
        raise SignatureError("the link has no valid signature by a key the service knows or "
                             "one given in keys")
    signed_run = signed_run_id(envelope.payload)
    if signed_run is not None:
        if not isinstance(signed_run, str):
            raise RequestError(f"the link's signed {SIGNED_RUN_ID} is not a string")
        check_run_id(signed_run, what=f"the link's signed {SIGNED_RUN_ID}")
        if run_id and run_id != signed_run:
            raise RequestError(f"run_id {run_id!r} is not the run the link names in its "
                               f"signed environment ({SIGNED_RUN_ID} {signed_run!r}): a "
                               "link is filed only under its own run")
        run_id = signed_run
    return NewRecord.link(content=content, step=link.name, keyid=signers[0],
                          file_name=link_file_name(link.name, signers[0]),
                          products=link.products, run_id=run_id, origin="added",
                          caller=caller)


def signed_run_id(payload: Mapping[str, Any]) -> object | None:
    """What a link payload (a classic link or a link Statement, as signed) names as its
    run in its environment (`custody.run-id`), as it is written there; None if it names
    none (a link signed elsewhere, or without a run)."""
    if payload.get("_type") == STATEMENT_TYPE:
        predicate = payload.get("predicate")
        environment = predicate.get("environment") if isinstance(predicate, Mapping) else None
    else:
        environment = payload.get("environment")
    if not isinstance(environment, Mapping):
        return None
    return environment.get(SIGNED_RUN_ID)


def _given_keys(given: Mapping[str, PublicKey], *, known: Mapping[str, PublicKey]
                ) -> dict[str, PublicKey]:
    """The keys a caller gave, each under its own keyid: a service key's keyid only for
    that very key (its versions named by alias), any other keyid only if it is computed
    from the key itself (KeyFormatError otherwise). A key that claims another's keyid
    would file a link under that key's name, where a layout looks for the real one."""
    checked: dict[str, PublicKey] = {}
    for key in given.values():
        service = known.get(key.keyid)
        if service is not None:
            if service.material != key.material:
                raise KeyFormatError(f"keys: keyid {key.keyid[:64]!r} is a service key's; the "
                                     "key given with it is another key")
        elif key.keyid not in _own_keyids(key):
            raise KeyFormatError(f"keys: keyid {key.keyid[:64]!r} is not computed from the key "
                                 "given with it: give the key's own keyid, or none")
        checked[key.keyid] = key
    return checked


def _own_keyids(key: PublicKey) -> frozenset[str]:
    """The keyids securesystemslib gives this key: the modern formula, and the legacy one
    (with the key's keyid_hash_algorithms, else the usual two), for ECDSA also with the
    legacy keytype spelling (the scheme's name)."""
    keytypes = {key.keytype, key.scheme} if key.keytype == "ecdsa" else {key.keytype}
    algorithms = key.keyid_hash_algorithms or LEGACY_KEYID_HASH_ALGORITHMS
    return frozenset(
        keyid for keytype in keytypes for keyid in (
            compute_keyid(keytype=keytype, scheme=key.scheme, public=key.public),
            compute_legacy_keyid(keytype=keytype, scheme=key.scheme, public=key.public,
                                 hash_algorithms=algorithms)))


class StoreWatch:
    """Probes the store while it fails (so that health turns SERVING when it is back, not
    at the next call), and sweeps by retention every `sweep_interval` seconds."""

    def __init__(self, store: AttestationStore, *, retention: Any | None,
                 sweep_interval: float, probe_interval: float = PROBE_INTERVAL_SECONDS
                 ) -> None:
        self._store = store
        self._retention = retention
        self._sweep_interval = sweep_interval
        self._probe_interval = probe_interval
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="custody-store-watch",
                                        daemon=True)

    def start(self) -> StoreWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._store._failed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import time

        next_sweep = time.monotonic() + min(60.0, self._sweep_interval)
        while not self._closed.is_set():
            wait = (self._probe_interval if not self._store.healthy
                    else max(0.0, next_sweep - time.monotonic()))
            self._store.wait_for_failure(wait)
            if self._closed.is_set():
                return
            if not self._store.healthy:
                self._store.probe()
                continue
            if self._retention is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self._sweep_interval
                try:
                    deleted = self._store.sweep(retention=self._retention)
                except CustodyError as error:
                    log.warning("store.sweep_failed", error=str(error)[:200])
                    continue
                if deleted:
                    log.info("store.swept", deleted=deleted)
