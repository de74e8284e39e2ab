"""At shutdown, refuse new calls with UNAVAILABLE while the calls already admitted finish.

gRPC's own `server.stop(grace)` stops taking calls off the network at once: a call that
reaches the server then is dropped by gRPC core, and its client gets CANCELLED, which
clients do not retry. So RunningServer.stop closes this gate first: from then on every
Custody and KeyAdmin call is answered `UNAVAILABLE` "the server is shutting down" (which
clients retry, on another replica if there is one), while the calls admitted before
finish. gRPC's stop comes once none is left and no call has arrived for QUIET_SECONDS
(a client whose call just finished is likely to send the next one at once: it is refused
too, rather than dropped on its way), or when the grace period is over. Health checking
and reflection pass, so that probes keep hearing NOT_SERVING until the end.

Only a call on its way at the moment gRPC stops can still be dropped by gRPC core: one
sent after a quiet QUIET_SECONDS, or while the grace period runs out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

SHUTTING_DOWN = "the server is shutting down: retry, on another instance if there is one"
QUIET_SECONDS = 0.2  # no call arrived for this long: the callers went away


class ShutdownGate(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts the calls it admitted; once closed, refuses every new one."""

    def __init__(self, services: Iterable[str]) -> None:
        self._services = frozenset(services)
        self._idle = threading.Condition()
        self._open = True
        self._admitted = 0
        self._last_arrival = 0.0  # time.monotonic() of the last call, admitted or refused

    @property
    def closed(self) -> bool:
        return not self._open

    @property
    def admitted(self) -> int:
        """Calls admitted and not finished yet."""
        return self._admitted

    def close(self) -> None:
        """Refuse every call from now on."""
        with self._idle:
            self._open = False
            self._last_arrival = time.monotonic()

    def wait_drained(self, timeout: float, *, quiet: float = QUIET_SECONDS) -> bool:
        """Wait until no admitted call is left and no call arrived for `quiet` seconds
        (True), or for `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                wait = deadline - now  # notified when the last admitted call ends
                if self._admitted == 0:
                    quiet_left = self._last_arrival + quiet - now
                    if quiet_left <= 0:
                        return True
                    wait = min(wait, quiet_left)
                self._idle.wait(wait)

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        service = str(handler_call_details.method).lstrip("/").split("/", 1)[0]
        if handler is None or handler.unary_unary is None or service not in self._services:
            return handler  # health and reflection answer to the end
        inner = handler.unary_unary

        def gated(request: Any, context: grpc.ServicerContext) -> Any:
            with self._idle:
                admitted = self._open
                self._last_arrival = time.monotonic()
                if admitted:
                    self._admitted += 1
            if not admitted:
                context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            try:
                return inner(request, context)
            finally:
                with self._idle:
                    self._admitted -= 1
                    if self._admitted == 0:
                        self._idle.notify_all()

        return grpc.unary_unary_rpc_method_handler(
            gated, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
