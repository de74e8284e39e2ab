"""What SignLayout refuses or warns of before signing (custody_core.layout_review)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from securesystemslib.signer import SSlibKey

from custody_core.keys import compute_legacy_keyid
from custody_core.layout_review import review_layout
from custody_core.models import Layout


def _ed25519() -> tuple[str, dict[str, Any]]:
    key = SSlibKey.from_crypto(ed25519.Ed25519PrivateKey.generate().public_key())
    return key.keyid, {**key.to_dict(), "keyid": key.keyid}


def _layout(keys: dict[str, dict[str, Any]], pubkeys: list[str], threshold: int) -> Layout:
    step = {"_type": "step", "name": "build", "pubkeys": pubkeys, "threshold": threshold,
            "expected_materials": [], "expected_products": [], "expected_command": []}
    return Layout.from_payload({"_type": "layout", "expires": "2099-01-01T00:00:00Z",
                                "keys": keys, "steps": [step], "inspect": []})


def _same_key_under_legacy_keyid(keyid: str, key: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    legacy = compute_legacy_keyid(keytype="ed25519", scheme="ed25519",
                                  public=key["keyval"]["public"])
    return legacy, {**key, "keyid": legacy, "keyid_hash_algorithms": ["sha256", "sha512"]}


def test_one_key_under_two_keyids_cannot_meet_a_threshold_of_two() -> None:
    keyid, key = _ed25519()
    legacy, legacy_key = _same_key_under_legacy_keyid(keyid, key)
    review = review_layout(_layout({keyid: key, legacy: legacy_key}, [keyid, legacy], 2))
    (refusal,) = review.refusals
    assert "step 'build' has threshold 2" in refusal and "1 distinct key(s)" in refusal
    assert f"keyids {keyid[:8]}, {legacy[:8]} are one key" in refusal
    assert "in-toto-verify" in refusal


def test_one_key_under_two_schemes_is_one_key() -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    keys = {}
    for scheme in ("rsassa-pss-sha256", "rsa-pkcs1v15-sha256"):
        key = SSlibKey.from_crypto(public, scheme=scheme)
        keys[key.keyid] = {**key.to_dict(), "keyid": key.keyid}
    assert len(keys) == 2
    assert review_layout(_layout(keys, list(keys), 2)).refusals


def test_distinct_keys_meet_the_threshold() -> None:
    (a, key_a), (b, key_b) = _ed25519(), _ed25519()
    legacy, legacy_key = _same_key_under_legacy_keyid(a, key_a)
    keys = {a: key_a, b: key_b, legacy: legacy_key}
    assert review_layout(_layout(keys, [a, legacy, b], 2)) == review_layout(
        _layout(keys, [a, b], 2))
    assert not review_layout(_layout(keys, [a, legacy, b], 2)).refusals
    assert review_layout(_layout(keys, [a, legacy, b], 3)).refusals
    assert not review_layout(_layout(keys, [a, legacy], 1)).refusals  # threshold 1: fine


def test_a_keyid_without_a_key_is_no_functionary() -> None:
    a, key_a = _ed25519()
    (refusal,) = review_layout(_layout({a: key_a}, [a, "ab" * 32], 2)).refusals
    assert "abababab not in the layout's usable keys" in refusal


def test_keys_the_reference_cannot_load() -> None:
    a, key_a = _ed25519()
    unknown = {**key_a, "scheme": "ed25519-ph"}
    review = review_layout(_layout({a: unknown}, [a], 1))
    assert any("cannot verify" in r and "ed25519-ph" in r for r in review.refusals)

    sha224 = SSlibKey.from_crypto(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        scheme="rsassa-pss-sha224")
    review = review_layout(_layout({sha224.keyid: {**sha224.to_dict(), "keyid": sha224.keyid}},
                                   [sha224.keyid], 1))
    assert not review.refusals
    (warning,) = review.warnings
    assert "rsassa-pss-sha224" in warning and "in-toto 3.1 does not load" in warning
