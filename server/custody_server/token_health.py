"""Health follows the token: NOT_SERVING while the key store cannot reach it.

The key store reports every change (Pkcs11KeyStore.add_availability_listener): a call
that fails with a session, token or device error makes the token unavailable; a session
opened again makes it available. A call is what notices, so TokenWatch also probes the
token in a thread (C_GetTokenInfo, one call under the module lock): every `interval`
seconds while it is there, so that health turns NOT_SERVING without waiting for a client
to fail, and every `retry_interval` seconds while it is gone, so that it comes back
without waiting for a client to succeed. A probe of a gone token is an attempt to reopen
the session, no sooner than the key store's backoff allows (at most every 5 s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from custody_server.keystore import KeystoreUnavailableError, Pkcs11KeyStore

log = structlog.get_logger("custody.token")

PROBE_INTERVAL_SECONDS = 5.0  # while the token is there
RETRY_INTERVAL_SECONDS = 0.5  # while it is gone (the backoff decides when to really try)


class TokenWatch:
    """Tells `on_change(available)` whenever the token goes or comes back."""

    def __init__(self, store: Pkcs11KeyStore, on_change: Callable[[bool], None], *,
                 interval: float = PROBE_INTERVAL_SECONDS,
                 retry_interval: float = RETRY_INTERVAL_SECONDS) -> None:
        if interval <= 0 or retry_interval <= 0:
            raise ValueError("probe intervals must be positive")
        self._store = store
        self._on_change = on_change
        self._interval = interval
        self._retry_interval = retry_interval
        self._closed = threading.Event()
        self._changed = threading.Event()  # wakes the prober when the token goes
        self._remove = store.add_availability_listener(self._heard)
        self._thread = threading.Thread(target=self._probe_until_closed,
                                        name="custody-token-watch", daemon=True)

    def start(self) -> TokenWatch:
        if not self._store.available:  # it went before the watch started listening
            self._heard(False)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._changed.set()
        self._remove()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _heard(self, available: bool) -> None:
        """From the key store, under its module lock: quick, and never raises."""
        try:
            if available:
                log.info("token.available", token=self._store.token_label)
            else:
                log.error("token.unavailable", token=self._store.token_label)
            self._on_change(available)
        except Exception:  # health must not break a signature or a reconnect
            log.exception("token.health_listener_failed")
        if not available:
            self._changed.set()

    def _probe_until_closed(self) -> None:
        interval = self._interval
        while not self._closed.is_set():
            self._changed.wait(timeout=interval)
            self._changed.clear()
            if self._closed.is_set():
                return
            try:
                self._store.probe()
                interval = self._interval
            except KeystoreUnavailableError:  # the store told _heard
                interval = self._retry_interval  # the next probe is the next attempt
            except Exception:
                log.exception("token.probe_failed")
                interval = self._retry_interval
