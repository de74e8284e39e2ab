"""Fuzz targets: every parser a network peer can reach, with the errors each may raise.

A target takes bytes. Anything but a return or one of its documented errors is a
finding; so is an input that takes longer than SLOW_SECONDS (a hang). Seeds are real,
validly signed documents (a small supply chain signed with software keys, the in-toto
reference fixtures, policy files); the mutator changes bytes, JSON structure, and
payloads inside DSSE envelopes, and re-signs a mutated document half of the time so
that the input gets past the signature check into the models and the rule engine.

Used by tests/security/test_fuzz_parsers.py (short run, plus hypothesis properties)
and benchmarks/fuzz_parsers.py (>= 100,000 inputs).
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, parse_envelope, sign_dsse, sign_metablock
from custody_core.errors import MetadataError
from custody_core.keys import ED25519, PublicKey
from custody_core.link import link_payload_from_envelope, link_to_statement, statement_to_link
from custody_core.models import Layout, Link
from custody_core.software_signer import SoftwareSigner
from custody_core.strict_json import parse_json
from custody_core.supply_chain import verify_supply_chain
from custody_core.verdict import Verdict
from custody_server.errors import LimitExceededError
from custody_server.policy import RequestLimits, parse_policy
from custody_server.policy.defaults import LOCAL_POLICY
from custody_server.policy.errors import IdentityError, PolicyError
from custody_server.policy.identity import peer_from_auth_context

SLOW_SECONDS = 1.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONFORMANCE = Path("/work/shared/conformance/in-toto-python")
OWNER = SoftwareSigner.generate(ED25519)
FUNCTIONARY = SoftwareSigner.generate(ED25519)
LAYOUT_KEYS: Mapping[str, PublicKey] = {OWNER.public_key.keyid: OWNER.public_key}
FUNCTIONARY_KEYS: Mapping[str, PublicKey] = {FUNCTIONARY.public_key.keyid: FUNCTIONARY.public_key}
_DIGEST = {"sha256": "ab" * 32}


def _chain() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    keyid = FUNCTIONARY.public_key.keyid
    layout = {
        "_type": "layout", "expires": "2030-01-01T00:00:00Z", "readme": "fuzz",
        "keys": {keyid: FUNCTIONARY.public_key.to_dict()},
        "steps": [
            {"_type": "step", "name": "build", "threshold": 1, "pubkeys": [keyid],
             "expected_command": ["make"], "expected_materials": [["ALLOW", "src/*"],
                                                                  ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "bin/app"], ["DISALLOW", "*"]]},
            {"_type": "step", "name": "package", "threshold": 1, "pubkeys": [keyid],
             "expected_command": [], "expected_materials": [
                 ["MATCH", "bin/app", "WITH", "PRODUCTS", "FROM", "build"], ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "app.tar"], ["DISALLOW", "*"]]},
        ],
        "inspect": [],
    }
    links = {
        "build": {"_type": "link", "name": "build", "command": ["make"],
                  "materials": {"src/main.c": _DIGEST}, "products": {"bin/app": _DIGEST},
                  "byproducts": {}, "environment": {}},
        "package": {"_type": "link", "name": "package", "command": ["tar"],
                    "materials": {"bin/app": _DIGEST}, "products": {"app.tar": _DIGEST},
                    "byproducts": {}, "environment": {}},
    }
    return layout, links


LAYOUT, LINKS = _chain()
SIGNED_LAYOUT = sign_metablock(LAYOUT, [OWNER])
SIGNED_LINKS = {f"{name}.{FUNCTIONARY.public_key.keyid[:8]}.link":
                sign_metablock(link, [FUNCTIONARY]) for name, link in LINKS.items()}


def _dsse(value: dict[str, Any], signer: SoftwareSigner) -> bytes:
    payload = json.dumps(value, sort_keys=True).encode()
    return sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer])


def _conformance(*names: str) -> list[bytes]:
    return [(CONFORMANCE / name).read_bytes() for name in names
            if (CONFORMANCE / name).is_file()]


ENVELOPE_SEEDS = [
    SIGNED_LAYOUT, *SIGNED_LINKS.values(), _dsse(LAYOUT, OWNER),
    _dsse(LINKS["build"], FUNCTIONARY), _dsse(link_to_statement(LINKS["build"]), FUNCTIONARY),
    *_conformance("demo_files/demo.layout.template", "demo_files/package.2f89b927.link",
                  "demo_files/write-code.776a00e2.link", "demo_dsse_files/package.2f89b927.link"),
]
POLICY_SEEDS = [LOCAL_POLICY.encode(), b"""version = 1
[rate_limit]
per_second = 5.0
burst = 10
[rate_limit.identities."dns:a.example"]
burst = 3
[[grant]]
identities = ["dns:a.example", "cn:b"]
rpcs = ["SignLink", "Verify", "GetPublicKey"]
link_keys = ["build", "b-*"]
steps = ["build", "test-[0-9]*"]
admin_keys = ["build"]
"""]
_CERTIFICATE_KEY = ec.generate_private_key(ec.SECP256R1())


def _general_names(*names: tuple[int, bytes]) -> bytes:
    """GeneralNames DER: (context tag number, raw bytes) each; short forms only."""
    body = b"".join(bytes([0x80 | tag, len(raw)]) + raw for tag, raw in names)
    return bytes([0x30, len(body)]) + body


IDENTITY_SEEDS = [
    _general_names((6, b"spiffe://custody.local/client/local-admin")) + b"\xfeagent",
    _general_names((6, b"spiffe://custody.local/client/local-admin\0.evil.example.com")),
    _general_names((2, b"a.example"), (2, b"b.example\0x")) + b"\xfecn",
    _general_names((6, b"spiffe://a/b"), (6, b"spiffe://a/c"), (2, b"d.example")),
    b"\xfebuilder",
]


def _envelope(data: bytes) -> None:
    envelope = parse_envelope(data)
    envelope.verified_keyids({**LAYOUT_KEYS, **FUNCTIONARY_KEYS})
    link_payload_from_envelope(envelope)


def _layout_model(data: bytes) -> None:
    Layout.from_payload(parse_envelope(data).payload)


def _link_model(data: bytes) -> None:
    Link.from_payload(link_payload_from_envelope(parse_envelope(data)))


def _statement(data: bytes) -> None:
    value = parse_json(data, what="statement").value
    if isinstance(value, dict):
        statement_to_link(value)
    else:
        raise MetadataError("not an object")


def _verify_layout(data: bytes) -> str:
    return _stage(verify_supply_chain(layout=data, layout_keys=LAYOUT_KEYS, links=SIGNED_LINKS,
                                      now=NOW))


def _verify_links(data: bytes) -> str:
    links = dict(SIGNED_LINKS)
    links[sorted(links)[len(data) % 2]] = data
    return _stage(verify_supply_chain(layout=SIGNED_LAYOUT, layout_keys=LAYOUT_KEYS,
                                      links=links, now=NOW))


def _stage(verdict: Verdict) -> str:
    """Which stage the verdict stopped at: shows how deep the fuzzer gets."""
    return "pass" if verdict.passed else f"fail:{verdict.failures[0].stage}"


def _json_reader(data: bytes) -> None:
    parse_json(data, what="request")


def _request_limits(data: bytes) -> None:
    RequestLimits(max_layout_bytes=1 << 20, max_json_depth=16).check_layout(data)


def _policy(data: bytes) -> None:
    parse_policy(data, source="fuzz")


def _identity(data: bytes) -> str:
    """Bytes become a client certificate: its subjectAltName extension's contents
    (GeneralNames DER) and, after a 0xfe byte, its CN; the identity is read from the
    certificate as the server reads it (gRPC's auth context, `x509_pem_cert`)."""
    san, _, common_name = data.partition(b"\xfe")
    # at most 64 bytes of UTF-8, as a CN may be
    name = common_name.decode("utf-8", "replace").encode()[:64].decode("utf-8", "ignore")
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]
                                       if name else []))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz CA")]))
               .public_key(_CERTIFICATE_KEY.public_key())
               .serial_number(1 + len(data))
               .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1)))
    if san:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san), critical=False)
    pem = builder.sign(_CERTIFICATE_KEY, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM)
    peer = peer_from_auth_context({"transport_security_type": [b"ssl"],
                                   "x509_pem_cert": [pem]})
    if peer.identity is None:
        raise IdentityError(peer.problem)
    return peer.identity.source.value


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], str | None]  # returns an outcome label for the statistics
    errors: tuple[type[BaseException], ...]
    seeds: list[bytes]
    resign_with: SoftwareSigner | None = None


TARGETS = (
    Target("envelope", _envelope, (MetadataError,), ENVELOPE_SEEDS, FUNCTIONARY),
    Target("layout-model", _layout_model, (MetadataError,), ENVELOPE_SEEDS[:1], OWNER),
    Target("link-model", _link_model, (MetadataError,), ENVELOPE_SEEDS, FUNCTIONARY),
    Target("statement", _statement, (MetadataError,),
           [json.dumps(link_to_statement(LINKS["build"])).encode()]),
    Target("verify-layout", _verify_layout, (MetadataError,), [SIGNED_LAYOUT], OWNER),
    Target("verify-links", _verify_links, (MetadataError,), list(SIGNED_LINKS.values()),
           FUNCTIONARY),
    Target("json-reader", _json_reader, (MetadataError,), ENVELOPE_SEEDS),
    Target("request-limits", _request_limits, (LimitExceededError,), ENVELOPE_SEEDS),
    Target("policy", _policy, (PolicyError,), POLICY_SEEDS),
    Target("identity", _identity, (IdentityError,), IDENTITY_SEEDS),
)
TARGETS_BY_NAME = {target.name: target for target in TARGETS}


_TOKENS = [b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"null", b"true", b"1e999",
           b"-0", b"1.5", b"\\ud800", b"\xff", b"\x00", b"9" * 400, b"[" * 70, b"{\"a\":" * 70,
           b'"\\' * 200, b"=", b"\n[[grant]]\n", b"'''", b'"""', b"*", b"\t", b"#"]
_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", "*", "../etc", "\u0000",
                      "ALLOW", "DISALLOW", "MATCH", "CREATE", [], {}, ["make"], {"sha256": "zz"},
                      "https://in-toto.io/Statement/v1", "link", "layout", "step"]


@dataclass
class Mutator:
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def mutate(self, seed: bytes, *, resign_with: SoftwareSigner | None = None) -> bytes:
        roll = self.rng.random()
        if roll < 0.45:
            data = self._structural(seed)
            if data is not None:
                if resign_with is not None and self.rng.random() < 0.5:
                    return _resign(data, resign_with)
                return data
        return self._bytes(seed)

    def _bytes(self, data: bytes) -> bytes:
        buffer = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            operation = self.rng.randrange(5)
            position = self.rng.randint(0, len(buffer))
            if operation == 0 and buffer:
                index = min(position, len(buffer) - 1)
                buffer[index] ^= 1 << self.rng.randrange(8)
            elif operation == 1:
                del buffer[position:position + self.rng.randint(1, 32)]
            elif operation == 2:
                buffer[position:position] = self.rng.choice(_TOKENS)
            elif operation == 3:
                end = min(len(buffer), position + self.rng.randint(1, 64))
                buffer[position:position] = buffer[position:end]
            else:
                buffer[position:position] = bytes(self.rng.randrange(256)
                                                  for _ in range(self.rng.randint(1, 8)))
        return bytes(buffer)

    def _structural(self, data: bytes) -> bytes | None:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            return None
        payload = document.get("payload") if isinstance(document, dict) else None
        if isinstance(payload, str):  # DSSE: mutate the payload inside
            try:
                inner = json.loads(base64.b64decode(payload))
            except (ValueError, RecursionError):
                return None
            document["payload"] = base64.b64encode(json.dumps(
                self._tweak(inner)).encode()).decode()
        else:
            document = self._tweak(document)
        return json.dumps(document, sort_keys=self.rng.random() < 0.5).encode()

    def _tweak(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, dict) and value and depth < 6 and self.rng.random() < 0.8:
            key = self.rng.choice(sorted(value))
            choice = self.rng.random()
            if choice < 0.15:
                del value[key]
            elif choice < 0.3:
                value[self.rng.choice(["_type", "x", key + "x", ""])] = self.rng.choice(_VALUES)
            else:
                value[key] = self._tweak(value[key], depth + 1)
            return value
        if isinstance(value, list) and value and depth < 6 and self.rng.random() < 0.8:
            index = self.rng.randrange(len(value))
            choice = self.rng.random()
            if choice < 0.15:
                del value[index]
            elif choice < 0.3:
                value.append(self.rng.choice(_VALUES))
            else:
                value[index] = self._tweak(value[index], depth + 1)
            return value
        if self.rng.random() < 0.6:
            return self._same_type(value)
        return self.rng.choice(_VALUES)

    def _same_type(self, value: Any) -> Any:
        """A plausible neighbour of `value`: such inputs get past the models, into the
        rule engine and the verification stages."""
        if isinstance(value, str):
            choice = self.rng.random()
            if choice < 0.3:
                return value + self.rng.choice(["x", "/", "*", " ", "2"])
            if choice < 0.5:
                return value[: self.rng.randint(0, len(value))]
            return self.rng.choice(["build", "package", "bin/app", "src/main.c", "app.tar",
                                    "ALLOW", "DISALLOW", "CREATE", "DELETE", "MODIFY",
                                    "REQUIRE", "MATCH", "WITH", "IN", "FROM", "PRODUCTS",
                                    "MATERIALS", "*", "ab" * 32, "cd" * 32, value.upper()])
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return self.rng.choice([0, 1, 2, 3, value + 1, value - 1])
        if isinstance(value, list):
            items = list(value)
            self.rng.shuffle(items)
            return items + items[:1] if self.rng.random() < 0.3 else items
        if isinstance(value, dict) and value:
            key = self.rng.choice(sorted(value))
            renamed = dict(value)
            renamed[self._same_type(key)] = renamed.pop(key)
            return renamed
        return value


def _resign(data: bytes, signer: SoftwareSigner) -> bytes:
    """Sign a mutated document again, so the fuzzed input passes the signature check."""
    try:
        document = json.loads(data)
        if isinstance(document, dict) and isinstance(document.get("signed"), dict):
            return sign_metablock(document["signed"], [signer])
        if isinstance(document, dict) and isinstance(document.get("payload"), str):
            return sign_dsse(base64.b64decode(document["payload"]),
                             payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer])
    except (ValueError, RecursionError, MetadataError, TypeError):
        pass  # not canonicalizable (floats...) or not base64: keep it unsigned
    return data


@dataclass
class Finding:
    target: str
    kind: str  # "crash" (undocumented exception) or "slow"
    detail: str
    data: bytes


@dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0  # a documented error
    slowest: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


def run_one(target: Target, data: bytes, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        label = target.run(data)
        tally.accepted += 1
        if label:
            tally.outcomes[label] += 1
    except target.errors:
        tally.refused += 1
    except Exception as error:  # the finding: an error the target does not document
        tally.findings.append(Finding(target.name, "crash",
                                      f"{type(error).__name__}: {str(error)[:200]}", data))
    elapsed = time.perf_counter() - started
    tally.inputs += 1
    tally.slowest = max(tally.slowest, elapsed)
    if elapsed > SLOW_SECONDS:
        tally.findings.append(Finding(target.name, "slow", f"{elapsed:.2f} s", data))


def fuzz(target: Target, *, inputs: int, seed: int = 7) -> Tally:
    """Run `inputs` mutated inputs (seeds included) through `target`."""
    mutator = Mutator(random.Random(seed))
    tally = Tally()
    corpus = list(target.seeds)
    for seed_input in target.seeds:
        run_one(target, seed_input, tally)
    while tally.inputs < inputs:
        parent = mutator.rng.choice(corpus)
        child = mutator.mutate(parent, resign_with=target.resign_with)
        run_one(target, child, tally)
        if len(corpus) < 256 and mutator.rng.random() < 0.02:
            corpus.append(child)  # keep some mutants as parents: deeper mutations
    return tally
