"""`custody sign-layout` (also --append and --refresh) and `custody keys create|public`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from custody_client._cli.common import EXIT_OK, open_client, read_file, write_file
from custody_client.errors import InputError
from custody_client.models import EnvelopeKind, KeyAlgorithm, KeyInfo

log = logging.getLogger("custody.cli")


def _output(path: str, content: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    else:
        write_file(Path(path), content)


def cmd_sign_layout(args: argparse.Namespace) -> int:
    """Sign a layout; --append adds a signature to a signed one; --refresh re-resolves a
    signed one's service keys and signs it again, then has each other Custody owner that
    had signed it sign again (one --append call each, each authorized by the server)."""
    path = _layout_path(args)
    output = args.output or (path if args.append or args.refresh else None)
    if output is None:
        raise InputError("give -o FILE (or '-' for stdout)")
    layout = read_file(path, "layout")
    envelope = EnvelopeKind(args.envelope) if args.envelope else (
        None if args.append or args.refresh else EnvelopeKind.METABLOCK)
    with open_client(args) as client:
        signed = client.sign_layout(layout, key_alias=args.key or "", envelope=envelope,
                                    append=args.append, refresh=args.refresh)
        signers = [signed]
        for owner in signed.other_owners:  # refresh: the other owners sign again
            signers.append(client.sign_layout(signers[-1].content, key_alias=owner,
                                              envelope=None, append=True))
    for warning in (w for s in signers for w in s.warnings):
        if not (args.refresh and "sign again with --append" in warning):
            log.warning("%s", warning)
    _output(output, signers[-1].content)
    action = "appended a signature to" if args.append else (
        "refreshed" if args.refresh else "signed")
    for made in signers:
        log.info("%s %s with key %s v%d (keyid %s)", action, path, made.key_alias,
                 made.key_version, made.keyid[:8])
        action = "appended a signature to"
    return EXIT_OK


def _layout_path(args: argparse.Namespace) -> str:
    given = [p for p in (args.layout, args.layout_file) if p]
    if len(given) != 1:
        raise InputError("give the layout once: -l FILE or LAYOUT")
    return str(given[0])


def cmd_keys_create(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        key = client.create_key(args.alias, KeyAlgorithm(args.algorithm))
    print(f"created {key.alias}: {key.algorithm.value if key.algorithm else key.scheme}, "
          f"keyid {key.keyid}")
    return EXIT_OK


def public_key_pem(key: KeyInfo) -> str:
    """The active public key as PEM SubjectPublicKeyInfo (made from the hex for ed25519)."""
    if key.public_key_pem:
        return key.public_key_pem
    public = key.public_key_dict().get("keyval", {})
    hex_value = public.get("public") if isinstance(public, dict) else None
    if key.scheme != "ed25519" or not isinstance(hex_value, str):
        raise InputError(f"key {key.alias} has no PEM form: use --format json")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_value))
    except ValueError:
        raise InputError(f"key {key.alias}: the server sent a malformed ed25519 key") from None
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def cmd_keys_public(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        key = client.get_public_key(args.alias)
    if args.format == "json":
        text = json.dumps(key.public_key_dict(), indent=2, sort_keys=True) + "\n"
    else:
        text = public_key_pem(key)
    _output(args.output, text.encode())
    return EXIT_OK
