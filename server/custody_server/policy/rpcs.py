"""The RPCs the policy can name, read from the API's descriptors.

A new RPC in the proto is known here at once and denied until a policy grants it.
Which key alias an RPC uses decides which list of a grant limits it:
SignLink -> `link_keys` (and `steps`), SignLayout -> `layout_keys`, a KeyAdmin
RPC whose request has an `alias` field -> `admin_keys`. SignLinks is granted as an RPC
of its own, and each of its links is decided against the grant's `link_keys` and
`steps` (`per_link`: custody_server.transport.authz.AccessControl.check_link).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf.descriptor import FileDescriptor

from custody_api.v1 import custody_pb2


class KeyScope(enum.Enum):
    LINK = "link_keys"
    LAYOUT = "layout_keys"
    ADMIN = "admin_keys"


@dataclass(frozen=True)
class RpcInfo:
    name: str  # e.g. "SignLink": the name a policy uses
    method: str  # e.g. "/custody.v1.Custody/SignLink": what gRPC calls it
    key_scope: KeyScope | None  # which grant list limits its key alias, if any
    key_field: str  # the request field naming the alias ("" when key_scope is None)
    step_field: str  # the request field naming a step ("" when none)
    per_link: bool = False  # each link of the request is decided alone (SignLinks)


def build_catalog(descriptor: FileDescriptor) -> Mapping[str, RpcInfo]:
    """Every RPC of the file's services, by gRPC method path; names must be unique."""
    catalog: dict[str, RpcInfo] = {}
    for service in descriptor.services_by_name.values():
        for method in service.methods:
            fields = method.input_type.fields_by_name
            scope: KeyScope | None = None
            key_field = step_field = ""
            per_link = method.name == "SignLinks"
            if method.name == "SignLink":
                scope, key_field, step_field = KeyScope.LINK, "key_alias", "step_name"
            elif per_link:
                scope = KeyScope.LINK
            elif method.name == "SignLayout":
                scope, key_field = KeyScope.LAYOUT, "key_alias"
            elif service.name == "KeyAdmin" and "alias" in fields:
                scope, key_field = KeyScope.ADMIN, "alias"
            info = RpcInfo(name=method.name, method=f"/{service.full_name}/{method.name}",
                           key_scope=scope, key_field=key_field, step_field=step_field,
                           per_link=per_link)
            catalog[info.method] = info
    names = [info.name for info in catalog.values()]
    if len(names) != len(set(names)):
        raise ValueError(f"RPC names are not unique across services: {sorted(names)}")
    return MappingProxyType(catalog)


# Admitted, these only read public keys: they write no audit entry (a refusal of them is
# audited). Every other call does, reads of the attestation store included.
READS_WITHOUT_AUDIT = frozenset({"ListKeys", "GetPublicKey"})

# The grant that lets a caller read the attestation store. Verify with `stored_links`
# reads it as ListLinks does (the run found, its links in the verdict), so it is allowed
# only to an identity that is also granted ListLinks (docs/SECURITY.md).
STORE_READ_RPC = "ListLinks"


def reads_store(rpc: str, request: Any) -> bool:
    """Whether a call of `rpc` reads the attestation store although its RPC is not a
    store RPC: Verify with `stored_links` (plans included)."""
    return rpc == "Verify" and bool(getattr(request, "stored_links", False))

RPC_CATALOG: Mapping[str, RpcInfo] = build_catalog(custody_pb2.DESCRIPTOR)
RPCS_BY_NAME: Mapping[str, RpcInfo] = MappingProxyType(
    {info.name: info for info in RPC_CATALOG.values()}
)
