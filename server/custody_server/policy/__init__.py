"""Access policy: who may call which RPC, with which keys, for which steps, how often.

The policy file (TOML) is parsed into a frozen `Policy`; `PolicyStore` holds the
current one and swaps it atomically on reload, keeping the old one when the new
file is bad. Everything here is pure except `PolicyStore` (which reads the file).
"""

from custody_server.policy.errors import PolicyError
from custody_server.policy.identity import ANONYMOUS, ClientIdentity, identity_from_auth_context
from custody_server.policy.model import AccessRequest, Decision, Grant, Policy, RateLimit
from custody_server.policy.parser import load_policy, parse_policy
from custody_server.policy.rate_limit import RateLimiter
from custody_server.policy.request_limits import RequestLimits
from custody_server.policy.rpcs import RPC_CATALOG, RpcInfo
from custody_server.policy.store import PolicyStore, ReloadOutcome

__all__ = [
    "ANONYMOUS",
    "RPC_CATALOG",
    "AccessRequest",
    "ClientIdentity",
    "Decision",
    "Grant",
    "Policy",
    "PolicyError",
    "PolicyStore",
    "RateLimit",
    "RateLimiter",
    "ReloadOutcome",
    "RequestLimits",
    "RpcInfo",
    "identity_from_auth_context",
    "load_policy",
    "parse_policy",
]
