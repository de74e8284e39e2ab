"""Fuzz a running server at the protobuf layer: bytes to every RPC, over mTLS.

Each input goes out as raw bytes (a `channel.unary_unary` with no serializer), so the
server's own intake decodes it. Inputs, for every Custody and KeyAdmin RPC in turn:

- random: uniformly random bytes;
- wire: a valid request changed at the wire level: a field's wire type, length or
  number changed, a varint made overlong, an unknown, repeated or deeply nested field
  added, a string field's bytes made invalid UTF-8, a nested message mutated the same way,
  or bytes flipped, cut, repeated or inserted;
- message: a valid request with one field given another value: the JSON inside a layout
  or a link mutated as tests/security/fuzz_targets.py mutates documents, names with
  control characters, `..` or 100,000 characters, unknown enum values, emptied or
  repeated lists.

The seeds are real: the server under test signs a layout and links at the start, and the
Verify seed is the request that verifies them. The fuzz identity may sign, verify and
read keys; the RPCs that change keys (CreateKey, RotateKey, RetireKey) are decoded and
then refused by the policy (FUZZ_POLICY), so that a run does not fill the token.

A finding: a status the server must never give (INTERNAL, UNKNOWN, DATA_LOSS,
UNIMPLEMENTED), no answer within the deadline (DEADLINE_EXCEEDED: a hang), or the server
no longer answering (UNAVAILABLE). The caller checks health and a valid call at the end.

Used by tests/security/test_fuzz_grpc.py (a short run) and benchmarks/fuzz_grpc.py
(>= 100,000 inputs).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from fuzz_targets import Mutator
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from security_support import ServerProcess

from custody_api.v1 import custody_pb2 as pb

FUZZ_IDENTITY = "spiffe://custody.local/client/local-admin"  # the local client certificate
FUZZ_POLICY = f"""\
version = 1

[rate_limit]
per_second = 1000000.0
burst = 1000000

[[grant]]
identities = ["{FUZZ_IDENTITY}"]
rpcs = ["SignLink", "SignLayout", "Verify", "ListKeys", "GetPublicKey"]
link_keys = ["*"]
steps = ["*"]
layout_keys = ["*"]
admin_keys = ["*"]
"""
# Answers the server may give to any input; anything else is a finding.
EXPECTED = frozenset({
    "OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
    "FAILED_PRECONDITION", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED",
})
SERVICES = {"Custody": "custody.v1.Custody", "KeyAdmin": "custody.v1.KeyAdmin"}
REQUEST_TYPES: Mapping[str, type[Message]] = {
    "SignLink": pb.SignLinkRequest, "SignLayout": pb.SignLayoutRequest,
    "Verify": pb.VerifyRequest, "CreateKey": pb.CreateKeyRequest,
    "ListKeys": pb.ListKeysRequest, "GetPublicKey": pb.GetPublicKeyRequest,
    "RotateKey": pb.RotateKeyRequest, "RetireKey": pb.RetireKeyRequest,
}
KINDS = ("random", "wire", "message")


def method_path(rpc: str) -> str:
    service = "Custody" if rpc in ("SignLink", "SignLayout", "Verify") else "KeyAdmin"
    return f"/{SERVICES[service]}/{rpc}"


def _identity(data: bytes) -> bytes:
    return data


def start_fuzz_server(state_dir: Path, *, args: tuple[str, ...] = ()) -> ServerProcess:
    """`custody-server` in its own process (the embedded default: its own SoftHSM token,
    local mTLS, a real audit trail) with FUZZ_POLICY."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / "policy.toml").write_text(FUZZ_POLICY, encoding="utf-8")
    return ServerProcess(state_dir, args=args)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def still_serving(channel: grpc.Channel, seeds: Mapping[str, list[bytes]], *,
                  timeout: float = 30.0) -> None:
    """After the run: health SERVING, and a valid SignLink is signed, each within
    `timeout`; AssertionError otherwise."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=_identity,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)
    status = check(b"", timeout=timeout).status
    assert status == health_pb2.HealthCheckResponse.SERVING, f"health says {status}"
    sign = channel.unary_unary(method_path("SignLink"), request_serializer=_identity,
                               response_deserializer=pb.SignLinkResponse.FromString)
    assert sign(seeds["SignLink"][0], timeout=timeout).sha256


# Seeds: valid requests, made with the server under test.


def make_seeds(channel: grpc.Channel) -> dict[str, list[bytes]]:
    """Valid requests for every RPC, the signed ones signed by the server itself."""
    call = {rpc: channel.unary_unary(method_path(rpc), request_serializer=_identity,
                                     response_deserializer=_identity) for rpc in REQUEST_TYPES}
    expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    layout = {
        "_type": "layout", "expires": expires, "readme": "fuzz", "keys": {},
        "steps": [{"_type": "step", "name": "build", "threshold": 1,
                   "pubkeys": ["alias:build"], "expected_command": ["make"],
                   "expected_materials": [["ALLOW", "src/*"], ["DISALLOW", "*"]],
                   "expected_products": [["CREATE", "bin/app"], ["DISALLOW", "*"]]}],
        "inspect": [],
    }
    sign_layout = [pb.SignLayoutRequest(layout=json.dumps(layout).encode(),
                                        key_alias="owner", envelope=envelope)
                   for envelope in (pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE)]
    signed_layout = pb.SignLayoutResponse.FromString(
        call["SignLayout"](sign_layout[0].SerializeToString(), timeout=60))
    sign_link = [pb.SignLinkRequest(
        step_name="build", command=["make", "all"],
        materials=[pb.Artifact(path="src/main.c", digest={"sha256": "ab" * 32})],
        products=[pb.Artifact(path="bin/app", digest={"sha256": "cd" * 32,
                                                     "sha512": "ef" * 64})],
        byproducts=pb.Byproducts(stdout="built\n", stderr="", return_value=0),
        environment={"CI": "true"}, key_alias="build", envelope=envelope)
        for envelope in (pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE, pb.ENVELOPE_STATEMENT)]
    link = pb.SignLinkResponse.FromString(
        call["SignLink"](sign_link[0].SerializeToString(), timeout=60))
    verify = pb.VerifyRequest(
        layout=signed_layout.signed, layout_keys=[pb.TrustedKey(alias="owner")],
        links=[pb.MetadataFile(path=link.file_name, content=link.signed)],
        parameters={"VERSION": "1.0"})
    answer = pb.VerifyResponse.FromString(call["Verify"](verify.SerializeToString(),
                                                         timeout=60))
    assert answer.passed, answer.failures  # a valid seed: the chain verifies
    key_admin: dict[str, list[Message]] = {
        "CreateKey": [pb.CreateKeyRequest(alias="fuzz-new", algorithm=pb.KEY_ALGORITHM_ED25519)],
        "ListKeys": [pb.ListKeysRequest()],
        "GetPublicKey": [pb.GetPublicKeyRequest(alias="build")],
        "RotateKey": [pb.RotateKeyRequest(alias="build", algorithm=pb.KEY_ALGORITHM_ECDSA_P256)],
        "RetireKey": [pb.RetireKeyRequest(alias="build", version=1)],
    }
    messages: dict[str, list[Message]] = {
        "SignLink": list(sign_link), "SignLayout": list(sign_layout),
        "Verify": [verify], **key_admin}
    return {rpc: [m.SerializeToString() for m in seeds] for rpc, seeds in messages.items()}


# Wire-level mutations


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


Record = tuple[int, int, bytes]  # field number, wire type, value (LEN: the payload)


def parse_records(data: bytes) -> list[Record] | None:
    """The top-level fields of a message as written (no groups), or None."""
    records: list[Record] = []
    position = 0
    try:
        while position < len(data):
            key, position = _read_varint(data, position)
            number, wire = key >> 3, key & 7
            if wire == 0:
                start = position
                _, position = _read_varint(data, position)
                records.append((number, wire, data[start:position]))
            elif wire == 1 or wire == 5:
                size = 8 if wire == 1 else 4
                if position + size > len(data):
                    return None
                records.append((number, wire, data[position:position + size]))
                position += size
            elif wire == 2:
                size, position = _read_varint(data, position)
                if position + size > len(data):
                    return None
                records.append((number, wire, data[position:position + size]))
                position += size
            else:
                return None
    except ValueError:
        return None
    return records


def write_records(records: list[Record]) -> bytes:
    out = bytearray()
    for number, wire, value in records:
        out += _varint((number << 3) | wire)
        out += _varint(len(value)) + value if wire == 2 else value
    return bytes(out)


_BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"a\xe2\x82"]


@dataclass
class WireMutator:
    rng: random.Random
    bytes_mutator: Mutator

    def mutate(self, data: bytes, depth: int = 0) -> bytes:
        records = parse_records(data)
        if not records or self.rng.random() < 0.25:
            return self.bytes_mutator._bytes(data)  # flips, cuts, repeats, inserts
        index = self.rng.randrange(len(records))
        number, wire, value = records[index]
        choice = self.rng.randrange(9)
        if choice == 0:  # another wire type, the same bytes
            records[index] = (number, self.rng.choice([w for w in (0, 1, 2, 5) if w != wire]),
                              value)
            return write_records(records)
        if choice == 1 and wire == 2:  # a length that does not match
            length = self.rng.choice([len(value) + 1, len(value) + 1000, 2**31, 2**64 - 1,
                                      max(0, len(value) - 1)])
            head = write_records(records[:index])
            tail = write_records(records[index + 1:])
            return head + _varint((number << 3) | 2) + _varint(length) + value + tail
        if choice == 2:  # an overlong varint key or value
            padded = _varint((number << 3) | wire)
            padded = padded[:-1] + bytes([padded[-1] | 0x80]) + b"\x80" * self.rng.randint(
                1, 12) + b"\x00"
            head = write_records(records[:index])
            body = _varint(len(value)) + value if wire == 2 else value
            return head + padded + body + write_records(records[index + 1:])
        if choice == 3:  # an unknown field, possibly a group or an invalid wire type
            unknown = self.rng.choice([0, 19, 99, 1000, 2**29 - 1])
            wire_type = self.rng.randrange(8)
            extra = _varint((unknown << 3) | wire_type) + self.rng.randbytes(
                self.rng.randint(0, 16))
            records_bytes = write_records(records)
            cut = len(write_records(records[:index]))
            return records_bytes[:cut] + extra + records_bytes[cut:]
        if choice == 4:  # the field twice (or many times)
            records[index:index] = [records[index]] * self.rng.choice([1, 2, 50])
            return write_records(records)
        if choice == 5 and wire == 2:  # invalid UTF-8 in what may be a string
            cut = self.rng.randint(0, len(value))
            records[index] = (number, wire, value[:cut] + self.rng.choice(_BAD_UTF8)
                              + value[cut:])
            return write_records(records)
        if choice == 6 and wire == 2 and depth < 4:  # inside a nested message
            records[index] = (number, wire, self.mutate(value, depth + 1))
            return write_records(records)
        if choice == 7:  # deep nesting: groups, or messages inside messages
            levels = self.rng.choice([64, 101, 200, 5000])
            if self.rng.random() < 0.5:
                nested = (_varint((number << 3) | 3) * levels
                          + _varint((number << 3) | 4) * levels)
            else:
                nested = b""
                for _ in range(min(levels, 300)):
                    nested = _varint((number << 3) | 2) + _varint(len(nested)) + nested
            return write_records(records) + nested
        if choice == 8:  # the field dropped, or the message cut inside it
            if self.rng.random() < 0.5:
                del records[index]
                return write_records(records)
            encoded = write_records(records)
            return encoded[:self.rng.randint(0, len(encoded))]
        return self.bytes_mutator._bytes(data)


# Message-level mutations

_STRINGS = ["", "x", "build", "../../deploy", "/abs", "a//b", ".", "..", "a\x00b", "a\nb",
            "\x1b[31m", "\u202egnp.exe", "é", "\ud7ff", "*", "alias:build", "alias:",
            "owner", "audit", "{}", "x" * 100_000, "ab" * 32, "%s%n", "' OR 1=1 --"]
_INTS = [0, 1, 2, 3, 4, 99, -1, 2**31 - 1, -(2**31)]


@dataclass
class MessageMutator:
    rng: random.Random
    json_mutator: Mutator

    def mutate(self, data: bytes, message_type: type[Message]) -> bytes:
        message = message_type.FromString(data)
        for _ in range(self.rng.randint(1, 2)):
            self._change(message, depth=0)
        return message.SerializeToString()

    def _change(self, message: Message, depth: int) -> None:
        fields: list[Any] = list(message.DESCRIPTOR.fields)  # FieldDescriptors
        if not fields:
            return
        descriptor = self.rng.choice(fields)
        name = descriptor.name
        if descriptor.message_type is not None and descriptor.message_type.GetOptions(
                ).map_entry:
            target = getattr(message, name)
            if self.rng.random() < 0.3:
                target.clear()
                return
            value_field = descriptor.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                return  # no such map in the API
            target[self.rng.choice(_STRINGS)] = self.rng.choice(_STRINGS)
            return
        if descriptor.is_repeated:
            items = getattr(message, name)
            choice = self.rng.random()
            if choice < 0.2:
                del items[:]
            elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                if len(items) and (choice < 0.6 or depth > 2):
                    items.add().CopyFrom(items[self.rng.randrange(len(items))])
                elif len(items):
                    self._change(items[self.rng.randrange(len(items))], depth + 1)
                else:
                    self._change(items.add(), depth + 1)
            else:
                items.append(self._scalar(descriptor, None))
            return
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 3:
                self._change(getattr(message, name), depth + 1)
            return
        setattr(message, name, self._scalar(descriptor, getattr(message, name)))

    def _scalar(self, descriptor: FieldDescriptor, current: Any) -> Any:
        kind = descriptor.type
        if kind == FieldDescriptor.TYPE_BYTES:
            if current and self.rng.random() < 0.8:  # the JSON inside, as fuzz_targets does
                return self.json_mutator.mutate(bytes(current))
            return self.rng.randbytes(self.rng.randint(0, 64))
        if kind == FieldDescriptor.TYPE_STRING:
            if current and self.rng.random() < 0.3:
                cut = self.rng.randint(0, len(current))
                return current[:cut] + self.rng.choice(_STRINGS) + current[cut:]
            return self.rng.choice(_STRINGS)
        if kind == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
            return self.rng.choice([0, 1, 2, 99, 2**32 - 1])
        return self.rng.choice(_INTS)  # int32 and enums (open: unknown numbers too)


# The run


@dataclass(frozen=True)
class GrpcFinding:
    rpc: str
    kind: str  # how the input was made
    code: str
    detail: str
    data: bytes  # the first bytes of the input


@dataclass
class FuzzTally:
    inputs: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    by_rpc: dict[str, Counter[str]] = field(default_factory=dict)
    by_kind: Counter[str] = field(default_factory=Counter)
    findings: list[GrpcFinding] = field(default_factory=list)
    findings_by_code: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    seconds: float = 0.0


class GrpcFuzzer:
    """Sends `inputs` generated inputs, `concurrency` at a time, each with `deadline`."""

    def __init__(self, channel: grpc.Channel, seeds: Mapping[str, list[bytes]], *,
                 seed: int = 1, deadline: float = 30.0, concurrency: int = 8,
                 keep_findings: int = 50) -> None:
        self._rng = random.Random(seed)
        json_mutator = Mutator(random.Random(seed + 1))
        self._wire = WireMutator(self._rng, json_mutator)
        self._message = MessageMutator(self._rng, json_mutator)
        self._seeds = seeds
        self._deadline = deadline
        self._concurrency = concurrency
        self._slots = threading.Semaphore(concurrency)
        self._keep = keep_findings
        self._lock = threading.Lock()
        self._methods: dict[str, Any] = {
            rpc: channel.unary_unary(method_path(rpc), request_serializer=_identity,
                                     response_deserializer=_identity)
            for rpc in REQUEST_TYPES}

    def make_input(self, rpc: str, kind: str) -> bytes:
        seed = self._rng.choice(self._seeds[rpc])
        if kind == "random":
            return self._rng.randbytes(self._rng.randint(0, 512))
        if kind == "wire":
            return self._wire.mutate(seed)
        return self._message.mutate(seed, REQUEST_TYPES[rpc])

    def run(self, inputs: int, *, progress: Callable[[FuzzTally], None] | None = None
            ) -> FuzzTally:
        tally = FuzzTally()
        rpcs = sorted(REQUEST_TYPES)
        started = time.perf_counter()
        for number in range(inputs):
            rpc = rpcs[number % len(rpcs)]
            kind = KINDS[(number // len(rpcs)) % len(KINDS)]
            data = self.make_input(rpc, kind)
            self._slots.acquire()
            self._send(tally, rpc, kind, data)
            if progress is not None and number and number % 10_000 == 0:
                progress(tally)
        self._drain()
        tally.seconds = time.perf_counter() - started
        return tally

    def _drain(self) -> None:
        """Wait for every call still in flight: each has a deadline, so gRPC answers it
        within that (DEADLINE_EXCEEDED at worst); a call it never answers is a finding."""
        for taken in range(self._concurrency):
            if not self._slots.acquire(timeout=self._deadline + 30):
                for _ in range(taken):
                    self._slots.release()
                raise AssertionError("a call got no answer, not even DEADLINE_EXCEEDED")
        for _ in range(self._concurrency):
            self._slots.release()

    def _send(self, tally: FuzzTally, rpc: str, kind: str, data: bytes) -> None:
        sent = time.perf_counter()
        future = self._methods[rpc].future(data, timeout=self._deadline)

        def done(call: Any) -> None:
            elapsed = time.perf_counter() - sent
            error = call.exception()
            code = "OK" if error is None else error.code().name
            detail = "" if error is None else (error.details() or "")
            with self._lock:
                tally.inputs += 1
                tally.codes[code] += 1
                tally.by_rpc.setdefault(rpc, Counter())[code] += 1
                tally.by_kind[kind] += 1
                tally.slowest = max(tally.slowest, elapsed)
                if code not in EXPECTED:
                    tally.findings_by_code[code] += 1
                    if len(tally.findings) < self._keep:
                        tally.findings.append(GrpcFinding(rpc, kind, code, detail[:300],
                                                          data[:200]))
            self._slots.release()

        future.add_done_callback(done)
