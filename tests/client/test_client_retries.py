"""CustodyClient against a small in-process gRPC server that misbehaves on purpose.

This server is a stand-in for the network (no HSM involved): it answers UNAVAILABLE,
NOT_FOUND or slowly, so that retries, deadlines and error lines can be checked.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_client.client import CustodyClient
from custody_client.errors import ClientError
from custody_client.models import KeyAlgorithm
from custody_client.settings import ConnectionSettings, RetryPolicy

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@dataclass
class Script:
    unavailable_first: int = 0  # answer UNAVAILABLE to this many calls first
    code: grpc.StatusCode | None = None  # then answer this error, if any
    delay: float = 0.0
    calls: list[str] = field(default_factory=list)


class FlakyKeyAdmin(pb_grpc.KeyAdminServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _answer(self, name: str, context: grpc.ServicerContext) -> None:
        self.script.calls.append(name)
        time.sleep(self.script.delay)
        if len(self.script.calls) <= self.script.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "keystore busy\nsecond line")
        if self.script.code is not None:
            context.abort(self.script.code, "no key with alias 'nope'")

    def ListKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer("ListKeys", context)
        return pb.ListKeysResponse(keys=[pb.KeyInfo(alias="build", keyid="ab" * 32)])

    def CreateKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer("CreateKey", context)
        return pb.CreateKeyResponse(key=pb.KeyInfo(alias=request.alias))


@pytest.fixture
def flaky() -> Iterator[tuple[Script, str]]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_KeyAdminServicer_to_server(FlakyKeyAdmin(script), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield script, f"127.0.0.1:{port}"
    server.stop(0)


def client(address: str, **kwargs: Any) -> CustodyClient:
    return CustodyClient(ConnectionSettings(address=address, retry=FAST_RETRIES, **kwargs))


def test_unavailable_is_retried_until_it_works(flaky: tuple[Script, str]) -> None:
    script, address = flaky
    script.unavailable_first = 2
    with client(address) as custody:
        keys = custody.list_keys()
    assert [k.alias for k in keys] == ["build"]
    assert script.calls == ["ListKeys"] * 3


def test_retries_are_bounded_and_the_error_is_one_line(flaky: tuple[Script, str]) -> None:
    script, address = flaky
    script.unavailable_first = 100
    with client(address) as custody, pytest.raises(ClientError) as error:
        custody.list_keys()
    assert len(script.calls) == 4
    assert error.value.code == "UNAVAILABLE"
    assert "after 4 attempts" in str(error.value)
    assert "\n" not in str(error.value)


def test_other_errors_are_not_retried(flaky: tuple[Script, str]) -> None:
    script, address = flaky
    script.code = grpc.StatusCode.NOT_FOUND
    with client(address) as custody, pytest.raises(ClientError) as error:
        custody.list_keys()
    assert script.calls == ["ListKeys"]
    assert str(error.value) == "ListKeys: no key with alias 'nope' (NOT_FOUND)"


def test_create_key_is_not_retried(flaky: tuple[Script, str]) -> None:
    script, address = flaky
    script.unavailable_first = 1
    with client(address) as custody, pytest.raises(ClientError):
        custody.create_key("new", KeyAlgorithm.ED25519)
    assert script.calls == ["CreateKey"]


def test_one_deadline_covers_the_call(flaky: tuple[Script, str]) -> None:
    script, address = flaky
    script.delay = 2.0
    started = time.monotonic()
    with client(address, timeout=0.3) as custody, pytest.raises(ClientError) as error:
        custody.list_keys()
    assert time.monotonic() - started < 1.5
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert "within 0.3 s" in str(error.value)


def test_preflight_accepts_a_server_without_health_and_refuses_none(
        flaky: tuple[Script, str]) -> None:
    _, address = flaky
    with client(address) as custody:
        custody.check_server()  # UNIMPLEMENTED: it answered, so it is there
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    with client(closed) as custody, pytest.raises(ClientError) as error:
        custody.check_server()
    assert error.value.code == "UNAVAILABLE"
    assert "is custody-server running there?" in str(error.value)
