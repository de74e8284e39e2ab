"""Access policy files for test servers, written by one builder.

`policy(...)` writes the file the server parses (docs/SECURITY.md, "The policy file"):
version 1, then the rate limits, then the grants. Tests of the parser itself write their
TOML by hand (tests/security/test_policy_file.py); everything else builds it here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

# A rate no test reaches: per second, and the burst.
UNLIMITED = (1000000.0, 1000000)


def _strings(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def grant(identities: Sequence[str], rpcs: Sequence[str], *, link_keys: Sequence[str] = (),
          steps: Sequence[str] = (), layout_keys: Sequence[str] = (),
          admin_keys: Sequence[str] = (), note: str = "") -> str:
    """One [[grant]] table; a key or step list left empty is left out of it."""
    lines = ["[[grant]]" + (f"  # {note}" if note else ""),
             f"identities = {_strings(identities)}", f"rpcs = {_strings(rpcs)}"]
    for name, values in (("link_keys", link_keys), ("steps", steps),
                         ("layout_keys", layout_keys), ("admin_keys", admin_keys)):
        if values:
            lines.append(f"{name} = {_strings(values)}")
    return "\n".join(lines) + "\n"


def grant_all(*identities: str) -> str:
    """A grant of every RPC, with every key and every step."""
    return grant(identities, ["*"], link_keys=["*"], steps=["*"], layout_keys=["*"],
                 admin_keys=["*"])


def policy(*grants: str, rate: tuple[float, int] | None = None,
           rates: Mapping[str, tuple[float, int]] | None = None) -> str:
    """A policy file with these grants. `rate` (per second, burst) is every identity's
    `[rate_limit]`, `rates` an identity's own; without them the server's defaults hold."""
    tables = ["version = 1\n"]
    if rate is not None:
        tables.append(f"[rate_limit]\nper_second = {rate[0]!r}\nburst = {rate[1]}\n")
    for identity, (per_second, burst) in (rates or {}).items():
        tables.append(f'[rate_limit.identities."{identity}"]\n'
                      f"per_second = {per_second!r}\nburst = {burst}\n")
    return "\n".join([*tables, *grants])


def open_policy(*identities: str) -> str:
    """A policy file letting `identities` call every RPC with every key, at any rate."""
    return policy(grant_all(*identities), rate=UNLIMITED)
