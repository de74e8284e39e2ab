"""The authorization matrix: identities x RPCs x key aliases x step names, every cell.

Each cell is one real call through mTLS. The expected outcome comes from the plain
rules below (an oracle written independently of the policy engine); every denial must
be audited exactly once, naming the caller, the RPC, the key alias and the step.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from policy_support import grant, policy
from security_support import AccessServer, ClientCert, Pki, StartServer, unique_alias

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_server.keystore import KeyAlgorithm

ALLOWED, DENIED, UNAUTHENTICATED = "allowed", "denied", "unauthenticated"
STEPS = ("build", "test-unit", "deploy", "release")
UNSIGNED_LAYOUT = {"_type": "layout", "expires": "2030-01-01T00:00:00Z", "readme": "matrix",
                   "keys": {}, "steps": [], "inspect": []}


@dataclass(frozen=True)
class Caller:
    name: str
    identity: str  # "" when the certificate has no usable identity
    cert: ClientCert


@dataclass(frozen=True)
class Cell:
    caller: Caller
    rpc: str
    alias: str | None  # as sent; "" means the server's default
    step: str | None


@dataclass(frozen=True)
class Matrix:
    server: AccessServer
    callers: tuple[Caller, ...]
    link_key: str  # L
    layout_key: str  # O
    admin_key: str  # K
    signed_layout: bytes


def _policy(*, link: str, layout: str, admin: str) -> str:
    builder = ["spiffe://example.test/ci/builder"]
    return policy(
        grant(builder, ["SignLink"], link_keys=[link], steps=["build", "test-*"]),
        grant(builder, ["SignLink"], link_keys=[layout], steps=["deploy"],
              note="a second grant: its key never combines with the first one's steps"),
        grant(["dns:release.example.test"], ["SignLayout", "Verify", "GetPublicKey"],
              layout_keys=[layout], admin_keys=[layout, link]),
        grant(["cn:key-admin"],
              ["CreateKey", "ListKeys", "GetPublicKey", "RotateKey", "RetireKey"],
              admin_keys=[f"{admin}*"]),
        grant(["spiffe://example.test/gate"], ["Verify"]),
    )


@pytest.fixture
def matrix(start_server: StartServer, pki: Pki) -> Iterator[Matrix]:
    link, layout, admin = (unique_alias(p) for p in ("mx-l", "mx-o", "mx-k"))
    server = start_server(_policy(link=link, layout=layout, admin=admin))
    for alias in (link, layout, admin):
        server.keys.create(alias, KeyAlgorithm.ECDSA_P256)
    _, signer = server.keys.signer(layout)
    signed_layout = sign_metablock(UNSIGNED_LAYOUT, [signer])
    callers = (
        Caller("builder", "spiffe://example.test/ci/builder",
               pki.client(uri=("spiffe://example.test/ci/builder",), cn="builder")),
        Caller("releaser", "dns:release.example.test",
               pki.client(dns=("release.example.test", "other.example.test"), cn="release")),
        Caller("admin", "cn:key-admin", pki.client(cn="key-admin")),
        Caller("gate", "spiffe://example.test/gate",
               pki.client(uri=("spiffe://example.test/gate",), dns=("gate.example.test",))),
        Caller("stranger", "spiffe://example.test/stranger",
               pki.client(uri=("spiffe://example.test/stranger",))),
        Caller("ambiguous", "", pki.client(uri=("spiffe://example.test/a",
                                                "spiffe://example.test/b"))),
    )
    yield Matrix(server=server, callers=callers, link_key=link, layout_key=layout,
                 admin_key=admin, signed_layout=signed_layout)


def _cells(m: Matrix) -> list[Cell]:
    L, O, K = m.link_key, m.layout_key, m.admin_key  # noqa: E741
    per_rpc: dict[str, list[tuple[str | None, str | None]]] = {
        "SignLink": list(itertools.product(("", L, O), STEPS)),
        "SignLayout": [(L, None), (O, None), ("", None)],
        "Verify": [(None, None)],
        "CreateKey": [(f"{K}-new", None), (f"{L}-new", None)],
        "ListKeys": [(None, None)],
        "GetPublicKey": [(K, None), (L, None), (O, None)],
        "RotateKey": [(K, None), (L, None)],
        "RetireKey": [(K, None), (L, None)],
    }
    return [Cell(caller, rpc, alias, step) for caller in m.callers
            for rpc, cells in per_rpc.items() for alias, step in cells]


def _expected(m: Matrix, cell: Cell) -> str:
    """The oracle: what the policy above means, written out by hand."""
    name, rpc = cell.caller.name, cell.rpc
    alias = cell.alias or ("build" if rpc == "SignLink" else "owner")
    if name in ("stranger", "ambiguous"):
        return UNAUTHENTICATED
    allowed = {
        "builder": rpc == "SignLink" and (
            (alias == m.link_key and cell.step in ("build", "test-unit"))
            or (alias == m.layout_key and cell.step == "deploy")),
        "releaser": (rpc == "SignLayout" and alias == m.layout_key) or rpc == "Verify"
        or (rpc == "GetPublicKey" and alias in (m.layout_key, m.link_key)),
        "admin": rpc == "ListKeys" or (
            rpc in ("CreateKey", "GetPublicKey", "RotateKey", "RetireKey")
            and alias.startswith(m.admin_key)),
        "gate": rpc == "Verify",
    }[name]
    return ALLOWED if allowed else DENIED


def _call(m: Matrix, cell: Cell, index: int) -> grpc.StatusCode:
    server, cert = m.server, cell.caller.cert
    alias = cell.alias or ""
    try:
        if cell.rpc == "SignLink":
            server.custody(cert).SignLink(pb.SignLinkRequest(
                step_name=cell.step, key_alias=alias,
                products=[pb.Artifact(path="out", digest={"sha256": "ab" * 32})]), timeout=20)
        elif cell.rpc == "SignLayout":
            server.custody(cert).SignLayout(pb.SignLayoutRequest(
                layout=json.dumps(UNSIGNED_LAYOUT).encode(), key_alias=alias), timeout=20)
        elif cell.rpc == "Verify":
            server.custody(cert).Verify(pb.VerifyRequest(
                layout=m.signed_layout, layout_keys=[pb.TrustedKey(alias=m.layout_key)]),
                timeout=20)
        elif cell.rpc == "CreateKey":
            server.key_admin(cert).CreateKey(pb.CreateKeyRequest(alias=f"{alias}{index}"),
                                             timeout=20)
        elif cell.rpc == "ListKeys":
            server.key_admin(cert).ListKeys(pb.ListKeysRequest(), timeout=20)
        elif cell.rpc == "GetPublicKey":
            server.key_admin(cert).GetPublicKey(pb.GetPublicKeyRequest(alias=alias), timeout=20)
        elif cell.rpc == "RotateKey":
            server.key_admin(cert).RotateKey(pb.RotateKeyRequest(alias=alias), timeout=20)
        elif cell.rpc == "RetireKey":
            server.key_admin(cert).RetireKey(pb.RetireKeyRequest(alias=alias, version=1),
                                             timeout=20)
        else:
            raise AssertionError(cell.rpc)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def test_every_cell_of_the_matrix(matrix: Matrix) -> None:
    cells = _cells(matrix)
    assert {c.rpc for c in cells} == {
        "SignLink", "SignLayout", "Verify", "CreateKey", "ListKeys", "GetPublicKey",
        "RotateKey", "RetireKey"}  # every RPC of the API is in the matrix
    outcomes: dict[Cell, tuple[str, grpc.StatusCode]] = {}
    for index, cell in enumerate(cells):
        outcomes[cell] = (_expected(matrix, cell), _call(matrix, cell, index))

    wrong = []
    for cell, (expected, code) in outcomes.items():
        if expected == UNAUTHENTICATED:
            good = code == grpc.StatusCode.UNAUTHENTICATED
        elif expected == DENIED:
            good = code == grpc.StatusCode.PERMISSION_DENIED
        elif cell.rpc == "RetireKey":  # allowed; whether version 1 may retire is not authz
            good = code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION)
        else:
            good = code == grpc.StatusCode.OK
        if not good:
            wrong.append((cell.caller.name, cell.rpc, cell.alias, cell.step, expected,
                          code.name))
    assert wrong == []
    counts = Counter(expected for expected, _ in outcomes.values())
    # 6 callers x 26 cells: 13 allowed, 52 unauthenticated (2 callers), 91 denied.
    assert counts == {ALLOWED: 13, UNAUTHENTICATED: 52, DENIED: 91}

    # Every refusal is audited exactly once, with who, what, which key and which step;
    # a caller that is not known is refused before its request is read (no key, no step).
    unread = ("ambiguous", "stranger")
    expected_denials = Counter(
        (cell.caller.identity, cell.rpc,
         None if cell.caller.name in unread else _effective_alias(cell, index),
         None if cell.caller.name in unread else cell.step)
        for index, cell in enumerate(cells) if outcomes[cell][0] != ALLOWED)
    audited = Counter(
        (str(e.details.get("caller")), str(e.details.get("rpc")),
         e.details.get("key_alias"), e.details.get("step"))
        for e in matrix.server.denials())
    assert audited == expected_denials
    for event in matrix.server.denials():
        assert event.outcome == "failure"
        assert (event.action, event.category) in (("authenticate", "authentication"),
                                                   ("authorize", "iam"))
        assert event.reason.startswith(("unauthenticated:", "permission denied:"))


def _effective_alias(cell: Cell, index: int) -> str | None:
    if cell.alias is None:
        return None
    if cell.rpc == "CreateKey":
        return f"{cell.alias}{index}"
    return cell.alias or ("build" if cell.rpc == "SignLink" else "owner")


def test_denial_messages_say_what_was_refused(matrix: Matrix) -> None:
    builder = matrix.callers[0]
    with pytest.raises(grpc.RpcError) as caught:
        matrix.server.custody(builder.cert).SignLink(pb.SignLinkRequest(
            step_name="deploy", key_alias=matrix.link_key), timeout=20)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not sign step 'deploy'" in str(caught.value.details())
    stranger = matrix.callers[4]
    with pytest.raises(grpc.RpcError) as caught:
        matrix.server.key_admin(stranger.cert).ListKeys(pb.ListKeysRequest(), timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "spiffe://example.test/stranger" in str(caught.value.details())


def test_signed_link_records_the_identity_that_asked(matrix: Matrix) -> None:
    builder = matrix.callers[0]
    response = matrix.server.custody(builder.cert).SignLink(pb.SignLinkRequest(
        step_name="build", key_alias=matrix.link_key, environment={"workdir": "/src"}),
        timeout=20)
    link: dict[str, Any] = json.loads(response.signed)["signed"]
    assert link["environment"] == {"workdir": "/src",
                                   "custody.requested-by": builder.identity}
    success = [e for e in matrix.server.audit.events
               if e.action == "sign-link" and e.outcome == "success"]
    assert success[-1].details["caller"] == builder.identity
    # A client cannot claim another identity through the environment.
    with pytest.raises(grpc.RpcError) as caught:
        matrix.server.custody(builder.cert).SignLink(pb.SignLinkRequest(
            step_name="build", key_alias=matrix.link_key,
            environment={"custody.requested-by": "spiffe://example.test/someone-else"}),
            timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "custody.requested-by" in str(caught.value.details())
