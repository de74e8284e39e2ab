"""The access policy of test servers that are not about access control: all allowed."""

from __future__ import annotations


def open_policy(*identities: str) -> str:
    """A policy file letting `identities` call every RPC with every key, at any rate."""
    names = ", ".join(f'"{identity}"' for identity in identities)
    return f"""\
version = 1

[rate_limit]
per_second = 1000000.0
burst = 1000000

[[grant]]
identities = [{names}]
rpcs = ["*"]
link_keys = ["*"]
steps = ["*"]
layout_keys = ["*"]
admin_keys = ["*"]
"""
