"""Property tests of the rule engine: consumption invariants, and the reference as oracle."""

from __future__ import annotations

import fnmatch
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rule_oracle import Arts, reference_queues

from custody_core.errors import MetadataError
from custody_core.rules import (
    ArtifactRule,
    ArtifactType,
    RuleKind,
    apply_rules,
    filter_paths,
    parse_rules,
)

segment = st.sampled_from(["a", "b", "src", "x.py", "y.c"])
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
hash_dicts = st.sampled_from([{"sha256": "aa"}, {"sha256": "bb"}, {"sha256": "aa", "md5": "cc"}])
artifacts = st.dictionaries(paths, hash_dicts, max_size=8)
links = st.fixed_dictionaries(
    {
        "x": st.builds(Arts, materials=artifacts, products=artifacts),
        "y": st.builds(Arts, materials=artifacts, products=artifacts),
    }
)
patterns = st.one_of(
    st.sampled_from(
        ["*", "a/*", "*.py", "a", "src/x.py", "?/b", "[ab]*", "*/*/*", "b*", "*c", "src*", "**"]
    ),
    paths,
)
simple_rules = st.builds(
    lambda kind, pattern: [kind, pattern],
    st.sampled_from(["CREATE", "DELETE", "MODIFY", "ALLOW", "DISALLOW", "REQUIRE", "allow"]),
    patterns,
)
prefixes = st.sampled_from(["", "a", "a/", "src", "b"])


@st.composite
def match_rules(draw: st.DrawFn) -> list[str]:
    rule = ["MATCH", draw(patterns)]
    source_prefix = draw(prefixes)
    if source_prefix:
        rule += ["IN", source_prefix]
    rule += ["WITH", draw(st.sampled_from(["MATERIALS", "PRODUCTS"]))]
    dest_prefix = draw(prefixes)
    if dest_prefix:
        rule += ["IN", dest_prefix]
    return [*rule, "FROM", draw(st.sampled_from(["x", "y", "absent"]))]


rule_lists = st.lists(st.one_of(simple_rules, match_rules()), max_size=6)
source_types = st.sampled_from(["materials", "products"])


@settings(max_examples=200, deadline=None)
@given(links=links, rules=rule_lists, source_type=source_types)
def test_same_verdict_and_queues_as_reference(
    links: dict[str, Arts], rules: list[list[str]], source_type: str
) -> None:
    _assert_same_as_reference(links, rules, source_type)


def _assert_same_as_reference(
    links: dict[str, Arts], rules: list[list[str]], source_type: str
) -> None:
    ref_passed, ref_queues = reference_queues("x", source_type, rules, links)
    result = apply_rules(
        item_name="x",
        source_type=ArtifactType(source_type),
        rules=parse_rules(rules, where="test"),
        links=links,
    )
    assert result.passed == ref_passed
    queue = set(getattr(links["x"], source_type))
    ours = []
    for application in result.trace:
        queue -= application.consumed
        ours.append(set(queue))
    assert ours == ref_queues


@settings(max_examples=200, deadline=None)
@given(links=links, rules=rule_lists, source_type=source_types)
def test_consumption_invariants(
    links: dict[str, Arts], rules: list[list[str]], source_type: str
) -> None:
    source = set(getattr(links["x"], source_type))
    result = apply_rules(
        item_name="x",
        source_type=ArtifactType(source_type),
        rules=parse_rules(rules, where="test"),
        links=links,
    )
    seen: set[str] = set()
    for application in result.trace:
        # each path is consumed at most once, and only paths of the source are consumed
        assert application.consumed <= source
        assert not (application.consumed & seen)
        seen |= application.consumed
        if application.rule.kind in (RuleKind.DISALLOW, RuleKind.REQUIRE):
            assert not application.consumed
    assert result.remaining == frozenset(source - seen)
    # a rule list stops exactly at its first violation
    if result.violation is None:
        assert len(result.trace) == len(rules)
    else:
        assert result.violation.rule.tokens == tuple(rules[len(result.trace)])
        assert result.violation.paths


@settings(max_examples=200, deadline=None)
@given(links=links, source_type=source_types, extra=st.lists(simple_rules, max_size=4))
def test_final_disallow_all_passes_only_if_everything_was_consumed(
    links: dict[str, Arts], source_type: str, extra: list[list[str]]
) -> None:
    rules = parse_rules([r for r in extra if r[0] not in ("DISALLOW", "REQUIRE")], where="t")
    open_result = apply_rules(
        item_name="x", source_type=ArtifactType(source_type), rules=rules, links=links
    )
    closed = apply_rules(
        item_name="x",
        source_type=ArtifactType(source_type),
        rules=(*rules, ArtifactRule.parse(["DISALLOW", "*"])),
        links=links,
    )
    assert open_result.passed
    assert closed.passed == (not open_result.remaining)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(tokens=st.one_of(json_values, st.lists(st.text(max_size=8), max_size=11)))
def test_any_rule_input_parses_or_raises_metadata_error(tokens: Any) -> None:
    try:
        rule = ArtifactRule.parse(tokens)
    except MetadataError:
        return
    assert rule.tokens == tuple(tokens)
    assert ArtifactRule.parse(list(rule.tokens)) == rule


pattern_text = st.text(alphabet="ab/.*?[]!\n-", max_size=6)
path_text = st.text(alphabet="ab/.*?[]!\n-", max_size=6)


@settings(max_examples=500, deadline=None)
@given(paths=st.sets(path_text, max_size=8), pattern=pattern_text)
def test_filter_paths_is_fnmatch_filter(paths: set[str], pattern: str) -> None:
    assert filter_paths(paths, pattern) == set(fnmatch.filter(sorted(paths), pattern))


def _sorted_arts(arts: Arts) -> Arts:
    return Arts(
        materials=dict(sorted(arts.materials.items())), products=dict(sorted(arts.products.items()))
    )


@settings(max_examples=200, deadline=None)
@given(links=links, rules=rule_lists, source_type=source_types)
def test_sorted_links_same_verdict_and_queues_as_reference(
    links: dict[str, Arts], rules: list[list[str]], source_type: str
) -> None:
    # Links list their paths sorted: the engine then bisects for prefixes.
    _assert_same_as_reference(
        {name: _sorted_arts(arts) for name, arts in links.items()}, rules, source_type
    )


@settings(max_examples=500, deadline=None)
@given(paths=st.sets(path_text, max_size=12), prefix=path_text)
def test_prefix_patterns_on_sorted_paths_are_fnmatch(paths: set[str], prefix: str) -> None:
    pattern = prefix + "*"
    arts = {"x": Arts(materials={p: {"sha256": "aa"} for p in sorted(paths)})}
    result = apply_rules(
        item_name="x",
        source_type=ArtifactType.MATERIALS,
        rules=parse_rules([["ALLOW", pattern]], where="test"),
        links=arts,
    )
    assert result.trace[0].consumed == set(fnmatch.filter(sorted(paths), pattern))
