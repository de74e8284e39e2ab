"""Artifact rules as values: parse, validate and print in-toto artifact rules.

The grammar is the reference one (in_toto.rulelib.unpack_rule), keywords case-insensitive:

    MATCH <pattern> [IN <source-prefix>] WITH (MATERIALS|PRODUCTS) [IN <dest-prefix>] FROM <step>
    CREATE <pattern> | DELETE <pattern> | MODIFY <pattern>
    ALLOW <pattern> | DISALLOW <pattern> | REQUIRE <path>
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from custody_core.errors import MetadataError
from custody_core.substitution import substitute


class RuleKind(StrEnum):
    MATCH = "match"
    CREATE = "create"
    DELETE = "delete"
    MODIFY = "modify"
    ALLOW = "allow"
    DISALLOW = "disallow"
    REQUIRE = "require"


class ArtifactType(StrEnum):
    MATERIALS = "materials"
    PRODUCTS = "products"


_MATCH_FORMAT = (
    "MATCH <pattern> [IN <source-prefix>] WITH (MATERIALS|PRODUCTS) [IN <dest-prefix>] FROM <step>"
)


@dataclass(frozen=True)
class ArtifactRule:
    """One parsed artifact rule; `tokens` keeps the rule exactly as the layout states it."""

    tokens: tuple[str, ...]
    kind: RuleKind
    pattern: str
    source_prefix: str = ""
    dest_type: ArtifactType | None = None
    dest_prefix: str = ""
    dest_name: str = ""

    def __post_init__(self) -> None:
        if self.kind is RuleKind.MATCH and (self.dest_type is None or not self.dest_name):
            raise MetadataError(f"MATCH rule needs a destination: {list(self.tokens)}")

    @property
    def text(self) -> str:
        """The rule as one line, e.g. `MATCH foo.py WITH PRODUCTS FROM write-code`."""
        return " ".join(self.tokens)

    @classmethod
    def parse(cls, tokens: object) -> ArtifactRule:
        """Parse a rule given as a list of strings (as in a layout); MetadataError if malformed."""
        if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
            raise MetadataError(f"an artifact rule must be a list of strings, got {tokens!r:.200}")
        rule = tuple(tokens)
        lower = [token.lower() for token in rule]
        if len(rule) < 2 or lower[0] not in RuleKind.__members__.values():
            raise MetadataError(
                "an artifact rule must start with one of MATCH, CREATE, DELETE, MODIFY, ALLOW, "
                f"DISALLOW, REQUIRE followed by a pattern, got {list(rule)!r:.200}"
            )
        kind = RuleKind(lower[0])
        if kind is not RuleKind.MATCH:
            if len(rule) != 2:
                raise MetadataError(
                    f"a {kind.name} rule has exactly two elements ({kind.name} <pattern>), "
                    f"got {list(rule)!r:.200}"
                )
            return cls(tokens=rule, kind=kind, pattern=rule[1])
        return cls._parse_match(rule, lower)

    @classmethod
    def _parse_match(cls, rule: tuple[str, ...], lower: Sequence[str]) -> ArtifactRule:
        # The four shapes the reference accepts, by length and keyword positions.
        shape = (len(rule), *lower[2::2])
        if shape[:5] == (10, "in", "with", "in", "from"):
            source_prefix, dest_type, dest_prefix, dest_name = rule[3], lower[5], rule[7], rule[9]
        elif shape[:4] == (8, "in", "with", "from"):
            source_prefix, dest_type, dest_prefix, dest_name = rule[3], lower[5], "", rule[7]
        elif shape[:4] == (8, "with", "in", "from"):
            source_prefix, dest_type, dest_prefix, dest_name = "", lower[3], rule[5], rule[7]
        elif shape[:3] == (6, "with", "from"):
            source_prefix, dest_type, dest_prefix, dest_name = "", lower[3], "", rule[5]
        else:
            raise MetadataError(
                f"a MATCH rule has the form {_MATCH_FORMAT}, got {list(rule)!r:.200}"
            )
        if dest_type not in ArtifactType.__members__.values():
            raise MetadataError(
                f"a MATCH rule matches WITH MATERIALS or PRODUCTS, got {list(rule)!r:.200}"
            )
        if not dest_name:
            raise MetadataError(f"a MATCH rule names the step FROM which it matches: {list(rule)}")
        return cls(
            tokens=rule,
            kind=RuleKind.MATCH,
            pattern=rule[1],
            source_prefix=source_prefix,
            dest_type=ArtifactType(dest_type),
            dest_prefix=dest_prefix,
            dest_name=dest_name,
        )

    def substituted(self, parameters: Mapping[str, str]) -> ArtifactRule:
        """This rule with `{NAME}` placeholders replaced (MetadataError if one is missing).

        Keywords cannot carry placeholders (the rule would not have parsed), so the
        substituted rule always has the same shape.
        """
        return ArtifactRule.parse([substitute(token, parameters) for token in self.tokens])

    def is_final_disallow_all(self) -> bool:
        """True for `DISALLOW *` (or `**`): nothing unconsumed gets through."""
        return self.kind is RuleKind.DISALLOW and self.pattern != "" and not self.pattern.strip("*")


def parse_rules(rules: object, *, where: str) -> tuple[ArtifactRule, ...]:
    """Parse a layout's rule list; `where` names it in the error (e.g. `step 'build' products`)."""
    if not isinstance(rules, list):
        raise MetadataError(f"{where}: artifact rules must be a list, got {type(rules).__name__}")
    parsed = []
    for index, rule in enumerate(rules):
        try:
            parsed.append(ArtifactRule.parse(rule))
        except MetadataError as exc:
            raise MetadataError(f"{where}[{index}]: {exc}") from None
    return tuple(parsed)
