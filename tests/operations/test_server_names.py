"""`[tls] server_names`: the local server certificate names the service as callers reach
it; replicas sharing the TLS directory make one CA between them."""

from __future__ import annotations

import socket
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509

from custody_server.config import config_from_dict
from custody_server.errors import ConfigError
from custody_server.tls_bootstrap import ensure_local_tls


def server_names(state: Path) -> tuple[set[str], set[str]]:
    certificate = x509.load_pem_x509_certificate((state / "tls" / "server.pem").read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(sans.get_values_for_type(x509.DNSName)),
            {str(a) for a in sans.get_values_for_type(x509.IPAddress)})


def test_configured_names_replace_the_host_name(tmp_path: Path) -> None:
    config = config_from_dict(tomllib.loads(
        '[tls]\nserver_names = ["custody", "custody.internal", "10.0.0.5"]'), base=tmp_path)
    assert config.tls.server_names == ("custody", "custody.internal", "10.0.0.5")
    ensure_local_tls(tmp_path, server_names=config.tls.server_names)
    dns, ips = server_names(tmp_path)
    assert dns == {"localhost", "custody", "custody.internal"}
    assert ips == {"127.0.0.1", "::1", "10.0.0.5"}
    # Another replica's start with another host name issues nothing new.
    _, notes = ensure_local_tls(tmp_path, server_names=config.tls.server_names)
    assert notes == []


def test_without_names_the_host_name_is_in_the_certificate(tmp_path: Path) -> None:
    ensure_local_tls(tmp_path)
    assert socket.gethostname() in server_names(tmp_path)[0]


@pytest.mark.parametrize(("toml", "message"), [
    ('[tls]\nserver_names = "custody"', "tls.server_names must be a list"),
    ('[tls]\nserver_names = ["custody service"]', "is neither a DNS name nor an IP"),
    ('[tls]\nserver_names = ["-custody"]', "is neither a DNS name nor an IP"),
    ("[tls]\nserver_names = [7]", "is neither a DNS name nor an IP"),
    ('[tls]\ninsecure = true\nserver_names = ["custody"]', "cannot be combined"),
    ('[tls]\ncert = "s.pem"\nkey = "k.pem"\nclient_ca = "ca.pem"\nserver_names = ["custody"]',
     "cannot be combined"),
])
def test_bad_server_names_are_refused(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tomllib.loads(toml), base=tmp_path)


def test_replicas_starting_at_once_make_one_ca(tmp_path: Path) -> None:
    """Four starts at the same moment on one TLS directory: one CA, and the server and
    client certificates are all its own."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_local_tls(tmp_path, server_names=("custody",)),
                                range(4)))
    created = [note for _, notes in results for note in notes if "created a local CA" in note]
    assert len(created) == 1
    tls = tmp_path / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    for name in ("server.pem", "client.pem"):
        leaf = x509.load_pem_x509_certificate((tls / name).read_bytes())
        leaf.verify_directly_issued_by(ca)
