"""Several server addresses: calls spread round robin, a retry moves to another replica,
and a replica that answered UNAVAILABLE is passed over for a while."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_client.client import CustodyClient
from custody_client.errors import InputError
from custody_client.replicas import DOWN_SECONDS, ReplicaSet
from custody_client.settings import ConnectionSettings, RetryPolicy

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_backoff=0.0, max_backoff=0.01)


@dataclass
class Replica:
    name: str
    unavailable: bool = False
    calls: int = 0
    server: grpc.Server | None = None
    address: str = ""
    log: list[str] = field(default_factory=list)


class NamedKeyAdmin(pb_grpc.KeyAdminServicer):
    """ListKeys answers with the replica's name as the one key's alias."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def ListKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.replica.calls += 1
        if self.replica.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "audit log unavailable")
        return pb.ListKeysResponse(keys=[pb.KeyInfo(alias=self.replica.name)])


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started = []
    for name in ("one", "two"):
        replica = Replica(name)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_KeyAdminServicer_to_server(NamedKeyAdmin(replica), server)  # type: ignore[no-untyped-call]
        replica.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        replica.server = server
        started.append(replica)
    yield started
    for replica in started:
        assert replica.server is not None
        replica.server.stop(0)


def client(replicas: list[Replica]) -> CustodyClient:
    address = ",".join(replica.address for replica in replicas)
    return CustodyClient(ConnectionSettings(address=address, retry=FAST_RETRIES, timeout=10))


def test_calls_alternate_between_replicas(replicas: list[Replica]) -> None:
    with client(replicas) as custody:
        answered = [custody.list_keys()[0].alias for _ in range(10)]
    assert Counter(answered) == {"one": 5, "two": 5}
    assert all(a != b for a, b in itertools.pairwise(answered))


def test_a_retry_moves_to_another_replica(replicas: list[Replica]) -> None:
    replicas[0].unavailable = True
    with client(replicas) as custody:
        answered = [custody.list_keys()[0].alias for _ in range(10)]
    assert answered == ["two"] * 10  # no failed call
    # Asked once (or twice, if the first call started there): then passed over.
    assert 1 <= replicas[0].calls <= 2


def test_a_stopped_replica_fails_no_call(replicas: list[Replica]) -> None:
    with client(replicas) as custody:
        assert {custody.list_keys()[0].alias for _ in range(4)} == {"one", "two"}
        assert replicas[0].server is not None
        replicas[0].server.stop(0).wait()
        answered = [custody.list_keys()[0].alias for _ in range(10)]
    assert answered == ["two"] * 10


def test_replica_set_passes_over_a_replica_while_it_is_down() -> None:
    now = [100.0]
    replicas = ReplicaSet(3, clock=lambda: now[0], rng=random.Random(0))
    first = replicas.pick()
    assert [replicas.pick() for _ in range(5)] == [(first + n) % 3 for n in range(1, 6)]
    down = (first + 1) % 3
    replicas.mark_down(down)
    assert down not in {replicas.pick() for _ in range(6)}
    now[0] += DOWN_SECONDS
    assert down in {replicas.pick() for _ in range(3)}
    for index in range(3):  # all down: the one down first is tried first
        replicas.mark_down(index)
        now[0] += 0.1
    assert replicas.pick() == 0


@pytest.mark.parametrize("address", ["a:1,", ",a:1", "a:1, b:2", "a:1,,b:2"])
def test_bad_address_lists_are_refused(address: str) -> None:
    with pytest.raises(InputError, match="several separated by commas"):
        ConnectionSettings(address=address)


def test_an_address_list_names_each_replica() -> None:
    assert ConnectionSettings(address="a:1,b:2").addresses == ("a:1", "b:2")
    assert ConnectionSettings(address="custody:50051").addresses == ("custody:50051",)
