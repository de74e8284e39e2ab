"""The reference rule engine as an oracle for tests of custody_core.rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from in_toto import verifylib
from in_toto.exceptions import RuleVerificationError
from in_toto.models.link import Link as ReferenceLink


@dataclass(frozen=True)
class Arts:
    materials: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    products: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def reference_queues(
    name: str, source_type: str, rules: list[list[str]], links: Mapping[str, Arts]
) -> tuple[bool, list[set[str]]]:
    """Run the reference; return (passed, queue after each applied rule)."""
    ref_links = {
        n: ReferenceLink(name=n, materials=dict(a.materials), products=dict(a.products))
        for n, a in links.items()
    }
    passed = True
    try:
        verifylib.verify_item_rules(name, source_type, rules, ref_links)
    except RuleVerificationError:
        passed = False
    return passed, [set(entry["queue"]) for entry in verifylib.RULE_TRACE["trace"]]
