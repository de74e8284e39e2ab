"""Client-side load balancing over several Custody replicas.

`--server a:50051,b:50051` (or `ConnectionSettings(address="a:50051,b:50051")`) opens one
gRPC channel per address and spreads calls over them round robin, starting at a random
one (so that many short-lived `custody run` processes do not all start on the first).
A replica that answers UNAVAILABLE (stopping, restarting, its audit trail or token
unavailable) is passed over for DOWN_SECONDS, so the caller's retry, and the calls after
it, go to another one; when every replica is down the one that went down first is tried.
Each channel checks its own server's certificate against its own address.

One address that is a DNS name with several addresses behind it (`custody:50051` in the
compose network) is balanced by gRPC itself: every channel uses the `round_robin`
policy. Every channel also connects again to a server that was gone within a second of
its return (CHANNEL_OPTIONS), rather than after gRPC's backoff of up to two minutes.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

DOWN_SECONDS = 1.0
# round_robin: a DNS name with several addresses spreads calls over all of them
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# A replica that was down is connected to again within a second of its return (gRPC's
# default backoff grows to two minutes): the calls the others cannot take go there.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
if TYPE_CHECKING:
    _UnaryUnary = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStream = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnary = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStream = grpc.StreamStreamMultiCallable[Any, Any]


class ReplicaSet:
    """Which replica the next call goes to; which ones answered UNAVAILABLE lately."""

    def __init__(self, count: int, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if count < 1:
            raise ValueError("at least one replica")
        self._count = count
        self._clock = clock
        self._next = (rng or random).randrange(count)  # jitter, not a secret
        self._down_until = [0.0] * count
        self._lock = threading.Lock()

    def pick(self) -> int:
        """The next replica round robin, passing over those that are down; with all of
        them down, the one whose pause ends first."""
        with self._lock:
            now = self._clock()
            for step in range(self._count):
                index = (self._next + step) % self._count
                if self._down_until[index] <= now:
                    self._next = (index + 1) % self._count
                    return index
            index = min(range(self._count), key=self._down_until.__getitem__)
            self._next = (index + 1) % self._count
            return index

    def mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = self._clock() + DOWN_SECONDS


class ReplicaChannel(grpc.Channel):
    """One channel per replica behind the grpc.Channel interface, so that generated stubs
    and raw multicallables work over it unchanged; unary calls are balanced."""

    def __init__(self, channels: Sequence[grpc.Channel], *,
                 replicas: ReplicaSet | None = None) -> None:
        self._channels = tuple(channels)
        self.replicas = replicas or ReplicaSet(len(self._channels))

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> _UnaryUnary:
        return _Balanced([channel.unary_unary(method, request_serializer=request_serializer,
                                              response_deserializer=response_deserializer)
                          for channel in self._channels], self.replicas)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _UnaryStream:
        return self._pick().unary_stream(method, request_serializer=request_serializer,
                                         response_deserializer=response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _StreamUnary:
        return self._pick().stream_unary(method, request_serializer=request_serializer,
                                         response_deserializer=response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False
                      ) -> _StreamStream:
        return self._pick().stream_stream(method, request_serializer=request_serializer,
                                          response_deserializer=response_deserializer)

    def _pick(self) -> grpc.Channel:
        return self._channels[self.replicas.pick()]

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        for channel in self._channels:
            channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        for channel in self._channels:
            channel.unsubscribe(callback)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> ReplicaChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Balanced(grpc.UnaryUnaryMultiCallable):  # type: ignore[type-arg]
    """A unary method on every replica's channel; each call goes to the replica picked."""

    def __init__(self, methods: list[_UnaryUnary],
                 replicas: ReplicaSet) -> None:
        self._methods = methods
        self._replicas = replicas

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return self._on_replica(lambda method: method(
            request, timeout=timeout, metadata=metadata, credentials=credentials,
            wait_for_ready=wait_for_ready, compression=compression))

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None,
                  compression: Any = None) -> Any:
        return self._on_replica(lambda method: method.with_call(
            request, timeout=timeout, metadata=metadata, credentials=credentials,
            wait_for_ready=wait_for_ready, compression=compression))

    def _on_replica(self, call: Callable[[_UnaryUnary], Any]) -> Any:
        """`call` on the picked replica's method; a replica that answers UNAVAILABLE is
        marked down, so that the next call picks another."""
        index = self._replicas.pick()
        try:
            return call(self._methods[index])
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE:
                self._replicas.mark_down(index)
            raise

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        return self._methods[self._replicas.pick()].future(
            request, timeout=timeout, metadata=metadata, credentials=credentials,
            wait_for_ready=wait_for_ready, compression=compression)
