"""The artifact stage: is the file a release gate holds a product of the layout's final
step(s)?

in-toto binds the final product only through an inspection that the layout author writes
by hand; `custody verify --artifact PATH` (Verify with `artifacts`) asks the question
directly. An artifact passes when its digest is among the products of a *final step* in
the links being verified (the verified links: this stage runs after the step rules).

A final step is a step of the (top-level) layout that no other step names in a
`MATCH ... FROM <step>` rule, in its expected materials or products: nothing later in the
chain consumes what it made. Inspections do not count (the demo's `untar` inspection
matches FROM `package`, which stays final). In the in-toto demo layout (clone ->
update-version -> package) that is `package`; a layout whose steps all name each other
(a cycle, which no real chain has) has its last listed step as the final one. A step
that is a sublayout stands for its summary link, whose products are its own last
step's (as in-toto's summary link).

The comparison is by digest only, never by path: the gate's file may be called
`dist/app.tar.gz` where the step recorded `app.tar.gz`. Digests match when they share at
least one algorithm and every shared algorithm gives the same hex (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from custody_core.digests import check_digest
from custody_core.errors import MetadataError
from custody_core.models import HashDict, Layout, Link
from custody_core.rule_syntax import RuleKind
from custody_core.verdict import Failure, Stage, failure

__all__ = [
    "MAX_ARTIFACTS",
    "GivenArtifact",
    "artifact_failures",
    "check_artifacts",
    "digests_match",
    "final_steps",
]

MAX_ARTIFACTS = 1000  # artifacts in one verification: a release, not a file system
_MAX_PATH = 4096


@dataclass(frozen=True)
class GivenArtifact:
    """A file the gate holds: the name it knows it by (for the verdict) and its digests."""

    path: str
    digest: HashDict


def check_artifacts(artifacts: Sequence[GivenArtifact]) -> None:
    """MetadataError unless every artifact has a path and hex digests (a request error)."""
    if len(artifacts) > MAX_ARTIFACTS:
        raise MetadataError(f"{len(artifacts)} artifacts is over the limit of "
                            f"{MAX_ARTIFACTS} per verification")
    for index, artifact in enumerate(artifacts):
        where = f"artifacts[{index}]"
        if not artifact.path or len(artifact.path) > _MAX_PATH:
            raise MetadataError(f"{where}: the path must have 1 to {_MAX_PATH} characters")
        if not artifact.digest:
            raise MetadataError(f"{where} ({artifact.path[:200]!r}): no digest given")
        for algorithm, value in artifact.digest.items():
            check_digest(algorithm, value, where=f"{where} ({artifact.path[:200]!r})")


def final_steps(layout: Layout) -> tuple[str, ...]:
    """The layout's final steps, in layout order (see the module's docstring)."""
    named: set[str] = set()
    for step in layout.steps:
        for rule in (*step.expected_materials, *step.expected_products):
            if rule.kind is RuleKind.MATCH and rule.dest_name != step.name:
                named.add(rule.dest_name)
    final = tuple(step.name for step in layout.steps if step.name not in named)
    if not final and layout.steps:
        return (layout.steps[-1].name,)
    return final


def digests_match(given: HashDict, recorded: HashDict) -> bool:
    """At least one algorithm in common, and every common one agrees."""
    recorded_lower = {name: value.lower() for name, value in recorded.items()}
    common = [name for name in given if name in recorded_lower]
    return bool(common) and all(given[name].lower() == recorded_lower[name] for name in common)


def artifact_failures(layout: Layout, links: Mapping[str, Link],
                      artifacts: Sequence[GivenArtifact]) -> list[Failure]:
    """A failure for each artifact whose digest no final step's product has. `links`:
    each step's verified link (the first accepted one; thresholds agreed already)."""
    if not artifacts:
        return []
    finals = final_steps(layout)
    if not finals:
        return [failure(Stage.ARTIFACT, "the layout has no steps, so no artifact can be a "
                                        "product of its final step",
                        paths=tuple(a.path for a in artifacts))]
    products = [(name, path, digest) for name in finals if name in links
                for path, digest in links[name].products.items()]
    failures = []
    for artifact in artifacts:
        if any(digests_match(artifact.digest, digest) for _step, _path, digest in products):
            continue
        failures.append(failure(
            Stage.ARTIFACT, _reason(artifact, finals, products),
            step=finals[0] if len(finals) == 1 else None, paths=(artifact.path,)))
    return failures


def _reason(artifact: GivenArtifact, finals: tuple[str, ...],
            products: list[tuple[str, str, HashDict]]) -> str:
    algorithm, value = _shown_digest(artifact.digest)
    steps = ", ".join(f"'{name}'" for name in finals)
    plural = "s" if len(finals) > 1 else ""
    reason = (f"artifact {artifact.path} ({algorithm} {value[:16]}...) is not a product of "
              f"the final step{plural} {steps}")
    base = artifact.path.replace("\\", "/").rsplit("/", 1)[-1]
    same_name = [(step, path) for step, path, _digest in products
                 if path == artifact.path or path.rsplit("/", 1)[-1] == base]
    if same_name:
        step, path = same_name[0]
        reason += f": it differs from {path} that '{step}' recorded (changed since)"
    return reason


def _shown_digest(digest: HashDict) -> tuple[str, str]:
    if "sha256" in digest:
        return "sha256", digest["sha256"]
    name = sorted(digest)[0]
    return name, digest[name]
