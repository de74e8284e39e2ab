"""Open the key store a config names; for the embedded default, make it first.

The embedded default keeps everything under the state directory: a SoftHSM
token (hsm/) and its PIN file (mode 0600), created on first start.

Whatever the token, the keys a deployment needs exist before the server reports SERVING:
the default link and layout keys (`build` and `owner` unless the config names others)
are made at start when the token lacks them, as the audit key is (open_audit_trail).
A token whose keys were made beforehand (a key ceremony) is left as it is. Replicas that
start at once make each key once (KeyRing.ensure under the lifecycle lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from custody_server.config import ServerConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.guard import default_guard
from custody_server.lifecycle.keyring import KeyRing
from custody_server.policy.defaults import write_default_policy
from custody_server.softhsm import find_softhsm_module, init_token
from custody_server.tls_bootstrap import ensure_local_tls


@dataclass
class Opened:
    store: Pkcs11KeyStore
    keys: KeyRing
    notes: list[str] = field(default_factory=list)  # what was created and where, for the operator


def open_keystore(config: ServerConfig) -> Opened:
    hsm = config.hsm
    notes: list[str] = []
    if hsm.embedded:
        token_dir = config.state_dir / "hsm"
        fresh = not (token_dir / "softhsm2.conf").exists()
        token = init_token(token_dir, label=hsm.token_label)
        # SoftHSM reads its config once, when the module is first loaded.
        os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
        module = token.module_path
        pin = Path(token.pin_file).read_text(encoding="utf-8").strip()
        notes.append(("created" if fresh else "using")
                     + f" SoftHSM token {hsm.token_label!r} in {token_dir}")
    else:
        module = hsm.module or find_softhsm_module()
        pin = hsm.read_pin()
        notes.append(f"using PKCS#11 module {module}, token {hsm.token_label!r}")
    store = Pkcs11KeyStore.open(module_path=module, token_label=hsm.token_label, pin=pin)
    keys = KeyRing(store, cache_ttl=config.lifecycle.cache_ttl_seconds,
                   guard=default_guard(config.lifecycle.lock_file))
    notes.append(f"key lifecycle lock: {keys.guard.description}")
    # Every token, not only the embedded one: a server that says SERVING but has no key
    # for SignLink's default fails the first build (NOT_FOUND).
    notes += ensure_default_keys(keys, (config.default_link_key, config.default_layout_key))
    return Opened(store=store, keys=keys, notes=notes)


def ensure_default_keys(keys: KeyRing, aliases: Iterable[str]) -> list[str]:
    """Make each alias that does not exist yet (ECDSA P-256); returns what was made.

    Replicas sharing a token may start at the same moment: one of them makes a key and
    the others take it (KeyRing.ensure), rather than failing to start.
    """
    notes: list[str] = []
    for alias in aliases:
        key, created = keys.ensure(alias, KeyAlgorithm.ECDSA_P256)
        if created:
            notes.append(f"created key {alias!r} (ecdsa-sha2-nistp256, "
                         f"keyid {key.active.public_key.keyid})")
    return notes


def prepare_access(config: ServerConfig) -> list[str]:
    """First start (and renewal): the local CA and certificates in state_dir/tls when no
    TLS files are configured, and the default policy when no policy file is configured.
    Returns what was created, for the operator."""
    notes: list[str] = []
    if config.tls.local:
        _, created = ensure_local_tls(config.state_dir,
                                      listen_host=config.listen.rsplit(":", 1)[0],
                                      server_names=config.tls.server_names)
        notes += created
    if config.policy.file is None and write_default_policy(config.policy_file):
        notes.append(f"wrote the default access policy {config.policy_file} "
                     "(the local client certificate may do everything)")
    return notes
