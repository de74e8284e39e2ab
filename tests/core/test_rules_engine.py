"""The rule engine against the reference's own verify_item_rules, rule by rule."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from rule_oracle import Arts, reference_queues

from custody_core.errors import MetadataError
from custody_core.rules import (
    ArtifactRule,
    ArtifactType,
    RuleListResult,
    apply_rules,
    filter_paths,
    parse_rules,
)

H1 = {"sha256": "aa"}
H2 = {"sha256": "bb"}


def ours(
    name: str, source_type: str, rules: list[list[str]], links: Mapping[str, Arts]
) -> RuleListResult:
    return apply_rules(
        item_name=name,
        source_type=ArtifactType(source_type),
        rules=parse_rules(rules, where="test"),
        links=links,
    )


def assert_same_as_reference(
    name: str, source_type: str, rules: list[list[str]], links: Mapping[str, Arts]
) -> None:
    ref_passed, ref_queues = reference_queues(name, source_type, rules, links)
    result = ours(name, source_type, rules, links)
    assert result.passed == ref_passed
    source = getattr(links[name], source_type)
    queue = set(source)
    our_queues = []
    for application in result.trace:
        queue -= application.consumed
        our_queues.append(set(queue))
    assert our_queues == ref_queues
    if result.passed:
        assert result.remaining == frozenset(queue)


LINKS = {
    "build": Arts(
        materials={"src/a.py": H1, "src/b.py": H1, "README": H1, "old.txt": H1, "mod.c": H1},
        products={"src/a.py": H1, "src/b.py": H2, "README": H1, "dist/app.tgz": H2, "mod.c": H2},
    ),
    "write": Arts(products={"a.py": H1, "b.py": H1, "README": H2, "src/a.py": H1}),
    "nested": Arts(materials={"lib/x/y/z.so": H1, "lib/x.so": H2}),
}

CASES = [
    ("build", "materials", [["ALLOW", "*"], ["DISALLOW", "*"]]),
    ("build", "materials", [["DISALLOW", "*"]]),
    ("build", "materials", [["ALLOW", "src/*"], ["DISALLOW", "*"]]),
    ("build", "materials", [["ALLOW", "src/*"], ["ALLOW", "README"], ["DISALLOW", "*.py"]]),
    ("build", "products", [["CREATE", "*"], ["DISALLOW", "dist/*"]]),
    ("build", "products", [["CREATE", "dist/*"], ["DISALLOW", "dist/*"]]),
    ("build", "materials", [["DELETE", "*"], ["REQUIRE", "old.txt"]]),
    ("build", "materials", [["DELETE", "*"], ["DISALLOW", "old.txt"]]),
    ("build", "products", [["MODIFY", "*"], ["REQUIRE", "src/b.py"]]),
    ("build", "products", [["MODIFY", "*"], ["ALLOW", "*.py"], ["DISALLOW", "*"]]),
    ("build", "products", [["MODIFY", "*"], ["DISALLOW", "src/*"]]),
    ("build", "materials", [["MODIFY", "*"], ["DISALLOW", "mod.c"]]),
    ("build", "materials", [["REQUIRE", "README"], ["REQUIRE", "nope"]]),
    ("build", "materials", [["ALLOW", "README"], ["REQUIRE", "README"]]),
    (
        "build",
        "materials",
        [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "write"], ["DISALLOW", "*"]],
    ),
    ("build", "materials", [["MATCH", "src/*", "WITH", "PRODUCTS", "FROM", "write"]]),
    ("build", "materials", [["MATCH", "*", "IN", "src", "WITH", "PRODUCTS", "FROM", "write"]]),
    ("build", "materials", [["match", "*", "in", "src/", "with", "products", "from", "write"]]),
    ("build", "materials", [["MATCH", "a.py", "WITH", "PRODUCTS", "IN", "src", "FROM", "write"]]),
    (
        "build",
        "materials",
        [["MATCH", "*.py", "IN", "src", "WITH", "PRODUCTS", "IN", "src", "FROM", "write"]],
    ),
    (
        "build",
        "materials",
        [["MATCH", "*", "WITH", "MATERIALS", "FROM", "nowhere"], ["DISALLOW", "*"]],
    ),
    (
        "build",
        "products",
        [["MATCH", "*", "WITH", "MATERIALS", "FROM", "build"], ["DISALLOW", "*"]],
    ),
    ("nested", "materials", [["ALLOW", "lib/*.so"], ["DISALLOW", "*"]]),
    ("nested", "materials", [["ALLOW", "lib/?.so"], ["DISALLOW", "*"]]),
    ("nested", "materials", [["ALLOW", "lib/[xy]/*"], ["DISALLOW", "*"]]),
    ("nested", "materials", [["ALLOW", "lib/[!x].so"], ["DISALLOW", "*"]]),
    ("nested", "materials", [["ALLOW", "lib/x/"], ["DISALLOW", "lib"]]),
    ("nested", "materials", []),
]


@pytest.mark.parametrize(("name", "source_type", "rules"), CASES)
def test_same_queues_and_verdict_as_reference(
    name: str, source_type: str, rules: list[list[str]]
) -> None:
    assert_same_as_reference(name, source_type, rules, LINKS)


def _digests(
    paths: list[str], *, changed: frozenset[str] = frozenset()
) -> dict[str, dict[str, str]]:
    return {p: {"sha256": "bb" if p in changed else "aa"} for p in paths}


_SORTED = [f"out/f{i:02d}.o" for i in range(40)]
# Links with many paths, to reach the engine's fast paths: lists compared at once when
# two links list the same paths in the same order, the queue's own set handed to the
# trace, set differences instead of look-ups. Each against the reference.
BIG_LINKS = {
    "compile": Arts(materials=_digests(["src/x.c"]), products=_digests(_SORTED)),
    # Same paths, same order, one hash differs in the middle.
    "link": Arts(
        materials=_digests(_SORTED, changed=frozenset({"out/f17.o"})),
        products={"app.bin": H1, **_digests(_SORTED)},
    ),
    # The same paths as compile's products, listed in another order.
    "shuffled": Arts(
        materials=_digests(_SORTED[::-1]),
        products=_digests(_SORTED, changed=frozenset(_SORTED[::7])),
    ),
    # Half of the materials are gone from the products, a third of the products are new.
    "rework": Arts(
        materials=_digests(_SORTED[:30]),
        products=_digests([*_SORTED[15:], "new/a", "new/b"]),
    ),
}

BIG_CASES = [
    ("link", "materials", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "compile"]]),
    (
        "link",
        "materials",
        [["MATCH", "out/*", "WITH", "PRODUCTS", "FROM", "compile"], ["DISALLOW", "*"]],
    ),
    (
        "link",
        "products",
        [
            ["CREATE", "app.bin"],
            ["MATCH", "*", "WITH", "PRODUCTS", "FROM", "compile"],
            ["DISALLOW", "*"],
        ],
    ),
    ("link", "products", [["MATCH", "*", "WITH", "MATERIALS", "FROM", "link"]]),
    ("shuffled", "materials", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "compile"]]),
    ("shuffled", "materials", [["MODIFY", "*"], ["DISALLOW", "*"]]),
    ("shuffled", "products", [["MODIFY", "*"], ["ALLOW", "out/f0*"], ["DISALLOW", "*"]]),
    ("rework", "products", [["CREATE", "*"], ["DISALLOW", "new/*"]]),
    ("rework", "products", [["CREATE", "new/a"], ["MODIFY", "*"], ["ALLOW", "*"]]),
    ("rework", "materials", [["DELETE", "*"], ["REQUIRE", "out/f03.o"]]),
    ("rework", "materials", [["DELETE", "out/f0*"], ["ALLOW", "out/f1*"], ["DISALLOW", "*"]]),
    ("rework", "products", [["DELETE", "*"], ["CREATE", "out/f2*"], ["ALLOW", "*"]]),
    ("compile", "products", [["ALLOW", "out/f1*"], ["ALLOW", "*"], ["DISALLOW", "*"]]),
]


@pytest.mark.parametrize(("name", "source_type", "rules"), BIG_CASES)
def test_fast_paths_keep_the_reference_queues(
    name: str, source_type: str, rules: list[list[str]]
) -> None:
    assert_same_as_reference(name, source_type, rules, BIG_LINKS)


def test_match_over_same_ordered_links_still_compares_every_hash() -> None:
    rules = [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "compile"], ["DISALLOW", "*"]]
    result = ours("link", "materials", rules, BIG_LINKS)
    assert result.violation is not None
    assert result.violation.paths == ("out/f17.o",)
    assert result.trace[0].consumed == frozenset(_SORTED) - {"out/f17.o"}


def test_disallow_violation_names_the_artifacts_and_rule() -> None:
    result = ours("build", "materials", [["ALLOW", "src/*"], ["DISALLOW", "*"]], LINKS)
    assert result.violation is not None
    assert result.violation.rule.text == "DISALLOW *"
    assert result.violation.paths == ("README", "mod.c", "old.txt")
    assert "not consumed" in result.violation.reason


def test_require_violation_says_which_rule_consumed_the_path() -> None:
    result = ours("build", "materials", [["ALLOW", "READ*"], ["REQUIRE", "README"]], LINKS)
    assert result.violation is not None
    assert result.violation.paths == ("README",)
    assert "consumed by 'ALLOW READ*'" in result.violation.reason
    assert result.consumer_of("README") is not None
    assert result.consumer_of("src/a.py") is None


def test_trace_records_what_each_rule_consumed() -> None:
    result = ours("build", "products", [["CREATE", "*"], ["MODIFY", "*"], ["ALLOW", "*"]], LINKS)
    assert [set(a.consumed) for a in result.trace] == [
        {"dist/app.tgz"},
        {"src/b.py", "mod.c"},
        {"src/a.py", "README"},
    ]
    assert result.passed and result.remaining == frozenset()


def test_match_compares_the_whole_hash_dict() -> None:
    both = {"sha256": "aa", "sha512": "cc"}
    links = {"a": Arts(materials={"f": both}), "b": Arts(products={"f": {"sha256": "aa"}})}
    rules = [["MATCH", "f", "WITH", "PRODUCTS", "FROM", "b"], ["DISALLOW", "*"]]
    assert not ours("a", "materials", rules, links).passed
    assert_same_as_reference("a", "materials", rules, links)


def test_star_crosses_slashes() -> None:
    assert filter_paths({"a/b/c.py", "c.py", "a/c.txt"}, "*.py") == {"a/b/c.py", "c.py"}


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        ["ALLOW"],
        ["ALLOW", "a", "b"],
        ["PERMIT", "*"],
        ["MATCH", "*", "WITH", "ARTIFACTS", "FROM", "x"],
        ["MATCH", "*", "FROM", "x"],
        ["MATCH", "*", "IN", "p", "WITH", "PRODUCTS", "IN", "q", "FROM"],
        ["MATCH", "*", "WITH", "PRODUCTS", "FROM", ""],
        "ALLOW *",
        ["ALLOW", 3],
    ],
)
def test_malformed_rules_are_metadata_errors(tokens: object) -> None:
    with pytest.raises(MetadataError):
        ArtifactRule.parse(tokens)


def test_rules_are_case_insensitive_but_keep_their_text() -> None:
    rule = ArtifactRule.parse(["match", "Foo", "in", "Src", "with", "Materials", "from", "Step"])
    assert rule.source_prefix == "Src" and rule.dest_name == "Step"
    assert rule.dest_type is ArtifactType.MATERIALS
    assert rule.text == "match Foo in Src with Materials from Step"


def test_final_disallow_detection() -> None:
    assert ArtifactRule.parse(["DISALLOW", "*"]).is_final_disallow_all()
    assert not ArtifactRule.parse(["DISALLOW", "*.py"]).is_final_disallow_all()
    assert not ArtifactRule.parse(["ALLOW", "*"]).is_final_disallow_all()


def test_substitution_replaces_placeholders_and_refuses_format_tricks() -> None:
    rule = ArtifactRule.parse(["MATCH", "{NAME}.tar.gz", "WITH", "PRODUCTS", "FROM", "{STEP}"])
    done = rule.substituted({"NAME": "foo", "STEP": "package"})
    assert done.pattern == "foo.tar.gz" and done.dest_name == "package"
    with pytest.raises(MetadataError, match="no value"):
        rule.substituted({"NAME": "foo"})
    for trick in ["{NAME.__class__}", "{NAME[0]}", "{0}", "{}", "{NAME!r}", "{NAME:>9}", "{", "}"]:
        with pytest.raises(MetadataError):
            ArtifactRule.parse(["ALLOW", trick]).substituted({"NAME": "x"})
    assert ArtifactRule.parse(["ALLOW", "{{lit}}"]).substituted({}).pattern == "{lit}"


def test_100k_artifacts_are_fast() -> None:
    n = 100_000
    hashes = [{"sha256": f"{i:064x}"} for i in range(n)]
    source = {f"src/dir{i % 100}/file{i}.c": hashes[i] for i in range(n)}
    links = {
        "one": Arts(products=source),
        "two": Arts(materials=dict(source), products={**source, "out.bin": H1}),
    }
    rules = [
        ["REQUIRE", "src/dir1/file1.c"],
        ["ALLOW", "src/dir1/*.c"],
        ["MATCH", "*", "WITH", "PRODUCTS", "FROM", "one"],
        ["DISALLOW", "*"],
    ]
    start = time.perf_counter()
    result = ours("two", "materials", rules, links)
    product_rules = [["CREATE", "*.bin"], ["MODIFY", "*"], ["ALLOW", "src/*"], ["DISALLOW", "*"]]
    product_result = ours("two", "products", product_rules, links)
    elapsed = time.perf_counter() - start
    assert result.passed and product_result.passed
    assert len(result.trace[1].consumed) == n // 100
    assert elapsed < 1.0, elapsed
