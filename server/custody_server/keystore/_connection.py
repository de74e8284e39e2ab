"""One logged-in session per token per process, behind one lock per PKCS#11 module.

Why shared, and why one lock:
- python-pkcs11 calls C_Initialize(NULL), which turns SoftHSM's own locking off, and it
  releases the GIL around every call: two threads inside the module at once corrupt it. So
  every call into a module, on any token, goes through that module's one lock.
- Login state belongs to the application, not to a session: a second C_Login fails with
  USER_ALREADY_LOGGED_IN and closing the session that logged in logs everybody out. So all
  the stores of a process share one session per token (reference counted); the last
  `release` closes it.

Why a lock rather than one owner thread (measured with benchmarks/bench_hsm.py: see
docs/PERFORMANCE.md#the-hsm-lock): a plain Lock is unfair (the releasing thread re-takes
it while the waiters wake up), which wrecks tail latency. A FIFO lock and an owner thread
are both fair and equally fast within the noise; the lock wins on simplicity: the call runs
on the caller's thread (its context and exceptions stay where they are), there is no thread
to start, stop or lose, and a single caller pays nothing for a hand-over. So: one FifoLock
per module.

Recovery: a call that fails with a session, token or device error (or a stale handle) drops
the session and every cached key handle, and raises KeystoreUnavailableError. The next call
restarts the module (C_Finalize, C_Initialize: SoftHSM only rescans its tokens then), opens a
new session and logs in again, but not before a backoff delay (doubling on each failed
attempt) so a dead token is not hammered. A restart ends the sessions of every connection on
that module; they notice by the module's epoch and reconnect without using stale handles.

Availability: a connection tells its listeners (`add_listener`) when the token becomes
unavailable (a call raised KeystoreUnavailableError for a session, token or device failure,
or a reopen failed) and when a reopen succeeds; the server's health follows it
(custody_server.token_health).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import pkcs11
from pkcs11 import exceptions as p11

from custody_server.keystore._fifo_lock import FifoLock
from custody_server.keystore._handles import CachedKey
from custody_server.keystore.errors import KeystoreUnavailableError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Library

T = TypeVar("T")
AvailabilityListener = Callable[[bool], None]

# Errors that mean the session, the login, the token or the library is gone, rather than
# that this one request was bad. Any of them drops the session.
CONNECTION_ERRORS: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.SessionCount,
    p11.UserNotLoggedIn,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.SlotIDInvalid,
    p11.GeneralError,
    p11.FunctionFailed,
    # A cached handle that went stale: a peer destroyed the key, or the token's files went
    # away (SoftHSM then forgets every object until the module is initialized again).
    # Reconnecting restarts the module, so the next call sees the token as it is now.
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
)


def is_connection_error(error: p11.PKCS11Error) -> bool:
    # A bare PKCS11Error is an unmapped (often vendor-defined) return code: reconnecting is
    # the safe reading of it.
    return isinstance(error, CONNECTION_ERRORS) or type(error) is p11.PKCS11Error


@dataclass(frozen=True)
class ReconnectBackoff:
    """Delays between attempts to reopen a failed token session: initial * factor**n, capped."""

    initial_seconds: float = 0.05
    factor: float = 2.0
    max_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.initial_seconds < 0 or self.max_seconds < self.initial_seconds:
            raise ValueError("need 0 <= initial_seconds <= max_seconds")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (0 after none)."""
        if failures <= 0:
            return 0.0
        return min(self.max_seconds, self.initial_seconds * self.factor ** (failures - 1))


class ModuleState:
    """What every connection into one loaded PKCS#11 module shares."""

    def __init__(self) -> None:
        # Typed loosely so a benchmark can compare it with a plain threading.Lock.
        self.lock: AbstractContextManager[object] = FifoLock()
        # Moves on at every C_Finalize/C_Initialize that a reconnect performs. Sessions
        # opened in an earlier epoch are gone, and their handle numbers may since have been
        # given to other sessions and objects: a connection must not use them.
        self.epoch = 0


_registry_lock = threading.Lock()  # taken before any module lock, never after
_modules: dict[str, ModuleState] = {}
_connections: dict[tuple[str, str], TokenConnection] = {}


def acquire_connection(
    *,
    module_path: str,
    token_label: str,
    pin: str,
    backoff: ReconnectBackoff,
    clock: Callable[[], float],
) -> TokenConnection:
    """The process's shared connection to the token, logged in; one more reference to it."""
    with _registry_lock:
        key = (module_path, token_label)
        connection = _connections.get(key)
        if connection is None:
            connection = TokenConnection(
                module_path=module_path,
                token_label=token_label,
                pin=pin,
                module=_modules.setdefault(module_path, ModuleState()),
                backoff=backoff,
                clock=clock,
            )
            connection.connect()  # fail fast: bad module, missing token, wrong PIN
            _connections[key] = connection
        elif not hmac.compare_digest(connection.pin.encode(), pin.encode()):
            raise KeystoreUnavailableError(
                f"token {token_label!r} is already open in this process with another PIN"
            )
        connection.references += 1
        return connection


def release_connection(connection: TokenConnection) -> None:
    """Drop one reference; the last one closes the session, which logs out."""
    with _registry_lock:
        connection.references -= 1
        if connection.references > 0:
            return
        _connections.pop((connection.module_path, connection.token_label), None)
        # Inside the registry lock, so a store opened meanwhile cannot log in before this
        # logout and then find itself logged out.
        connection.disconnect()


class TokenConnection:
    """A logged-in session on one token; `run` is the only way to use it."""

    def __init__(
        self,
        *,
        module_path: str,
        token_label: str,
        pin: str,
        module: ModuleState,
        backoff: ReconnectBackoff,
        clock: Callable[[], float],
    ) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.pin = pin
        self.module = module
        self.references = 0
        # Key handles by label (finding a key costs more than an ECDSA signature). Emptied
        # whenever the session is dropped: after C_Finalize or a new login handles are stale.
        # Only changed under the module lock; others may only peek (dict.get is atomic).
        self.key_cache: dict[str, CachedKey] = {}
        self._backoff = backoff
        self._clock = clock
        self._session: pkcs11.Session | None = None
        self._session_epoch = 0
        self._failures = 0
        self._next_attempt_at = 0.0
        self.available = True  # False from a failure until a session is open again
        self._listeners: list[AvailabilityListener] = []

    def add_listener(self, listener: AvailabilityListener) -> Callable[[], None]:
        """`listener(available)` on every change; returns what removes it. Called with
        the module lock held: it must be quick and must not use the token."""
        with self.module.lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self.module.lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def _set_available(self, available: bool) -> None:
        if available == self.available:
            return
        self.available = available
        for listener in tuple(self._listeners):
            listener(available)

    def run(self, operation: Callable[[pkcs11.Session], T]) -> T:
        """Run `operation` with the session, holding the module lock; reconnect if needed."""
        with self.module.lock:
            if self._session is not None and self._session_epoch != self.module.epoch:
                self._forget()  # another connection restarted the module under us
            session = self._session if self._session is not None else self._reconnect()
            try:
                return operation(session)
            except p11.PKCS11Error as error:
                if not is_connection_error(error):
                    raise
                self._drop()
                self._note_failure()
                self._set_available(False)
                raise KeystoreUnavailableError(
                    f"token {self.token_label!r} failed ({type(error).__name__}); "
                    "the session will be reopened"
                ) from error

    def connect(self) -> None:
        """Open and log in now (used once, to fail fast on a bad configuration)."""
        with self.module.lock:
            self._session = self._open_session(restart=False)
            self._session_epoch = self.module.epoch

    def disconnect(self) -> None:
        with self.module.lock:
            self._drop()

    def _reconnect(self) -> pkcs11.Session:
        now = self._clock()
        if now < self._next_attempt_at:
            raise KeystoreUnavailableError(
                f"token {self.token_label!r} is unavailable; next attempt in "
                f"{self._next_attempt_at - now:.2f}s"
            )
        try:
            # Restart the module: SoftHSM (and other modules) only rescan their tokens in
            # C_Initialize, so a token that went away and came back is invisible otherwise.
            session = self._open_session(restart=True)
        except KeystoreUnavailableError:
            self._note_failure()
            self._set_available(False)
            raise
        self._session = session
        self._session_epoch = self.module.epoch
        self._failures = 0
        self._next_attempt_at = 0.0
        self._set_available(True)
        return session

    def _note_failure(self) -> None:
        self._failures += 1
        self._next_attempt_at = self._clock() + self._backoff.delay(self._failures)

    def _open_session(self, *, restart: bool) -> pkcs11.Session:
        """Find the token by label (slot ids are random), open a R/W session, log in."""
        try:
            library = pkcs11.lib(self.module_path)
            if restart:
                _restart(library)
                self.module.epoch += 1
            token = library.get_token(token_label=self.token_label)
            try:
                return token.open(rw=True, user_pin=self.pin)
            except p11.UserAlreadyLoggedIn:
                # Some other code of this process logged in already: login is per
                # application, so a plain session is logged in too.
                return token.open(rw=True)
        except p11.NoSuchToken:
            raise KeystoreUnavailableError(
                f"no token labelled {self.token_label!r} in {self.module_path}"
            ) from None
        except p11.PinIncorrect:
            raise KeystoreUnavailableError(
                f"login to token {self.token_label!r} failed: PIN incorrect"
            ) from None
        except p11.PKCS11Error as error:
            raise KeystoreUnavailableError(
                f"cannot open a session on token {self.token_label!r} "
                f"({type(error).__name__})"
            ) from None

    def _drop(self) -> None:
        """Close the session (logging out) and forget it and every cached handle."""
        session = self._session
        self._forget()
        if session is None:
            return
        # A failure means it is already gone with the token or the library.
        with contextlib.suppress(p11.PKCS11Error):
            session.close()

    def _forget(self) -> None:
        self._session = None
        self.key_cache.clear()


def _restart(library: Pkcs11Library) -> None:
    """C_Finalize then C_Initialize, whatever state the module is in."""
    with contextlib.suppress(p11.PKCS11Error):
        library.finalize()  # resets python-pkcs11's flag even when C_Finalize fails
    library.initialize()
