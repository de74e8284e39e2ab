"""The policy file: what it means (default deny, one grant decides, exact identities,
shell patterns) and the precise error for each kind of mistake."""

from __future__ import annotations

import pytest

from custody_server.policy import AccessRequest, PolicyError, parse_policy
from custody_server.policy.defaults import LOCAL_POLICY
from custody_server.policy.rpcs import RPCS_BY_NAME, KeyScope
from custody_server.tls_bootstrap import LOCAL_CLIENT_IDENTITY

BUILDER = "spiffe://example.test/ci/builder"
POLICY = f"""
version = 1
[[grant]]
identities = ["{BUILDER}"]
rpcs = ["SignLink"]
link_keys = ["build-*"]
steps = ["build", "test-*", "Release"]

[[grant]]
identities = ["{BUILDER}", "dns:gate.example.test"]
rpcs = ["Verify"]
""".encode()


def _link(identity: str, alias: str, step: str) -> AccessRequest:
    return AccessRequest(identity=identity, rpc="SignLink", key_scope=KeyScope.LINK,
                         key_alias=alias, step=step)


@pytest.mark.parametrize(("request_", "allowed"), [
    (_link(BUILDER, "build-x", "build"), True),
    (_link(BUILDER, "build-x", "test-unit/with/slashes"), True),  # `*` also matches `/`
    (_link(BUILDER, "build-x", "Release"), True),
    (_link(BUILDER, "build-x", "release"), False),  # patterns are case-sensitive
    (_link(BUILDER, "build", "build"), False),  # "build-*" needs the dash
    (_link(BUILDER, "owner", "build"), False),
    (_link("spiffe://example.test/ci", "build-x", "build"), False),  # identities are exact
    (_link("dns:gate.example.test", "build-x", "build"), False),
    (AccessRequest(identity="dns:gate.example.test", rpc="Verify"), True),
    (AccessRequest(identity=BUILDER, rpc="Verify"), True),  # grants add up per identity
    (AccessRequest(identity=BUILDER, rpc="ListKeys"), False),
])
def test_decisions(request_: AccessRequest, allowed: bool) -> None:
    decision = parse_policy(POLICY).decide(request_)
    assert decision.allowed is allowed
    assert (decision.reason == "") is allowed  # a denial always says why


def test_unknown_identity_is_not_known_and_an_empty_policy_denies_all() -> None:
    assert not parse_policy(POLICY).decide(_link("cn:x", "build-x", "build")).known
    empty = parse_policy(b"version = 1\n")
    assert empty.grants == () and not empty.knows(BUILDER)


def test_the_default_local_policy() -> None:
    policy = parse_policy(LOCAL_POLICY.encode())
    for rpc in RPCS_BY_NAME:  # every RPC, also ones added later ("*")
        assert policy.decide(AccessRequest(identity=LOCAL_CLIENT_IDENTITY, rpc=rpc)).allowed
    assert policy.identities == {LOCAL_CLIENT_IDENTITY, "anonymous"}
    assert policy.rate_for(LOCAL_CLIENT_IDENTITY).per_second == 10000.0
    assert policy.rate_for("dns:other").per_second == 50.0


def _grant(body: str) -> bytes:
    return f'version = 1\n[[grant]]\nidentities = ["{BUILDER}"]\n{body}\n'.encode()


@pytest.mark.parametrize(("text", "message"), [
    (b"", "top level: 'version = 1' is required"),
    (b"version = 2", "version: must be 1, got 2"),
    (b'version = "1"', "version: must be 1, got '1'"),
    (b"version = 1\ngrants = []", "top level: unknown key(s) 'grants'"),
    (b"version = 1\ngrant = 3", "grant: must be an array of tables"),
    (b"version = 1\n[[grant]]\n", "grant 1: 'identities' is required"),
    (_grant('rpcs = []'), "grant 1: rpcs: must not be empty"),
    (_grant('rpcs = ["Verify", "Verify"]'), "grant 1: rpcs: lists 'Verify' twice"),
    (_grant('rpcs = ["SignLink"]\nsteps = ["*"]'), "grants SignLink but 'link_keys' is empty"),
    (_grant('rpcs = ["SignLayout"]\nlink_keys = ["x"]\nlayout_keys = ["o"]'),
     "'link_keys' is set but no granted RPC uses it"),
    (_grant('rpcs = ["CreateKey"]'), "grants CreateKey but 'admin_keys' is empty"),
    (_grant('rpcs = ["*"]\nlink_keys = ["*"]\nsteps = ["*"]\nlayout_keys = ["*"]'),
     "'admin_keys' is empty or missing"),
    (_grant('rpcs = ["Verify"]\nowner = true'), "grant 1: unknown key(s) 'owner'"),
    (_grant('rpcs = "Verify"'), "grant 1: rpcs: must be a list of strings"),
    (_grant('rpcs = ["GetPublicKey"]\nadmin_keys = [""]'), "admin_keys: bad pattern ''"),
    (b'version = 1\n[[grant]]\nidentities = ["dns:"]\nrpcs = ["Verify"]',
     "identity 'dns:' has an empty name"),
    (b"version = 1\n[rate_limit]\nburst = 0", "burst must be an integer from 1"),
    (b"version = 1\n[rate_limit]\nburst = 1.5", "rate_limit: burst: must be an integer"),
    (b"version = 1\n[rate_limit]\nper_second = nan", "per_second: must be a number"),
    (b"version = 1\n[rate_limit]\nper_second = true", "per_second: must be a number"),
    (b"version = 1\n[rate_limit]\nperiod = 1", "rate_limit: unknown key(s) 'period'"),
    (b'version = 1\n[rate_limit.identities."dns:x"]\nburst = 2',
     "rate_limit.identities.'dns:x': no grant names this identity"),
    (b"version = 1\nx = [" + b"[" * 3000 + b"]" * 3001, "nested too deeply"),
    (b"version = 1\n" + b"#" * (1024 * 1024), "larger than 1048576 bytes"),
])
def test_precise_errors(text: bytes, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="policy.toml")
    assert str(caught.value).startswith("policy.toml: ")
    assert message in str(caught.value)
