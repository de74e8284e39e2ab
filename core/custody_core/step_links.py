"""Pipeline stages over a step's links: load by authorized key id, verify, count, agree.

Kept apart from supply_chain.py so that each stays small. Every function returns values and
findings; none raises for a verification failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from custody_core.artifacts import FrozenArtifacts
from custody_core.envelope import PAYLOAD_TYPE_INTOTO, Envelope, parse_envelope
from custody_core.errors import MetadataError
from custody_core.key_policy import KeyPolicy
from custody_core.link import (
    STATEMENT_TYPE,
    link_file_name,
    link_payload_from_envelope,
    statement_link_payload,
)
from custody_core.models import Layout, Link, Step
from custody_core.verdict import Cause, Failure, Stage, VerdictWarning, failure, warning


def sublayout_dir(step_name: str, keyid: str) -> str:
    """The directory (with trailing slash) that holds a sublayout's links."""
    return f"{step_name}.{keyid[:8]}/"


@dataclass(frozen=True)
class LoadedLink:
    """A step's link file as received: a link or, for a delegated step, a sublayout."""

    file_name: str
    keyid: str
    envelope: Envelope
    link: Link | None = None
    sublayout: Layout | None = None


def link_from_envelope(envelope: Envelope) -> Link:
    """The link in an envelope: a classic link as it is, a Statement with the link
    predicate reshaped; the model validates either, once."""
    payload = envelope.payload
    if payload.get("_type") == STATEMENT_TYPE and envelope.kind == "dsse":
        return Link.from_payload(statement_link_payload(payload))
    if payload.get("_type") == "link":
        return Link.from_payload(payload)
    return Link.from_payload(link_payload_from_envelope(envelope))  # names what is wrong


def parse_link_file(file_name: str, keyid: str, data: bytes, *,
                    earlier_digests: Sequence[str] = ()) -> LoadedLink:
    """Parse one link file (Metablock or DSSE; a link, a Statement or a sublayout).

    MetadataError names the file. The signature is checked later, over these same bytes.
    `earlier_digests`: the previous link's products, whose equal digests are kept once.
    """
    try:
        envelope = parse_envelope(data, for_verification=True, earlier_digests=earlier_digests)
        if envelope.kind == "dsse" and envelope.payload_type != PAYLOAD_TYPE_INTOTO:
            raise MetadataError(f"DSSE payloadType must be {PAYLOAD_TYPE_INTOTO}")
        if envelope.payload.get("_type") == "layout":
            sublayout = Layout.from_payload(envelope.payload)
            return LoadedLink(file_name, keyid, envelope, sublayout=sublayout)
        link = link_from_envelope(envelope)
    except MetadataError as exc:
        raise MetadataError(f"{file_name}: {exc}") from None
    return LoadedLink(file_name, keyid, envelope, link=link)


def products_digests(link: Link | None) -> list[str]:
    """The digests of `link`'s products, in its order, when they are of one algorithm:
    usually the next step's materials (parse_link_file's `earlier_digests`)."""
    products = None if link is None else link.products
    if not isinstance(products, FrozenArtifacts) or products.algorithm is None:
        return []
    return list(products.digests())


def load_step_links(
    layout: Layout, links: Mapping[str, bytes], *, prefix: str
) -> tuple[dict[str, list[LoadedLink]], list[Failure]]:
    """For each step, the link files of its authorized key ids that are present.

    Like the reference, a file that is present but malformed fails the verification,
    whoever signed it: the verdict must not depend on which files an attacker can drop.
    """
    loaded: dict[str, list[LoadedLink]] = {}
    failures: list[Failure] = []
    earlier: list[str] = []  # the products of the link read last
    for step in layout.steps:
        step_links: list[LoadedLink] = []
        for keyid in dict.fromkeys(step.pubkeys):
            file_name = prefix + link_file_name(step.name, keyid)
            data = links.get(file_name)
            if data is None:
                continue
            try:
                step_links.append(parse_link_file(file_name, keyid, data,
                                                  earlier_digests=earlier))
                earlier = products_digests(step_links[-1].link)
            except MetadataError as exc:
                failures.append(failure(Stage.LINKS, f"malformed link: {exc}", step=step.name))
        loaded[step.name] = step_links
    return loaded, failures


@dataclass(frozen=True)
class StepLinks:
    """The links of one step that count: validly signed by authorized, unrefused keys."""

    step: Step
    accepted: tuple[LoadedLink, ...]
    functionaries: frozenset[str]  # for each functionary counted, the first file it signed


def _refusal(
    step: Step, loaded: LoadedLink, layout: Layout, policy: KeyPolicy, now: datetime
) -> tuple[Cause, str] | None:
    """Why this link does not count for the step (its cause and a line), or None if it
    does."""
    key = layout.keys.get(loaded.keyid)
    if key is None and loaded.keyid in layout.unusable_keys:
        return Cause.LINK_SIGNATURE, (f"key {loaded.keyid[:8]} cannot verify: "
                                      f"{layout.unusable_keys[loaded.keyid]}")
    if key is None:
        return Cause.UNAUTHORIZED_SIGNER, (f"key {loaded.keyid[:8]} is authorized but not "
                                           "in the layout's keys")
    refused = policy.refusal(loaded.keyid, now)
    if refused is not None:
        return Cause.KEY_REFUSED, f"key {loaded.keyid[:8]} is refused: {refused}"
    if loaded.keyid not in loaded.envelope.verified_keyids({loaded.keyid: key}):
        # a signature that claims the key but does not verify was altered or forged; a
        # link without one is signed by someone the step does not authorize
        claimed = any(s.keyid == loaded.keyid for s in loaded.envelope.signatures)
        return (Cause.LINK_SIGNATURE if claimed else Cause.UNAUTHORIZED_SIGNER,
                f"no valid signature by key {loaded.keyid[:8]}")
    if loaded.link is not None and loaded.link.name != step.name:
        return Cause.MISSING_LINK, f"the link names step '{loaded.link.name}', not '{step.name}'"
    return None


# When a step's links fail for several causes, the verdict names the gravest.
_CAUSE_ORDER = (Cause.LINK_SIGNATURE, Cause.UNAUTHORIZED_SIGNER, Cause.KEY_REFUSED,
                Cause.MISSING_LINK)


class _Functionaries:
    """Accepted links grouped by who signed them. Two links are one functionary when
    their keys are one key (the same public key material under two keyids: a legacy and
    a modern keyid, or two schemes) or when the key policy says so (two versions of one
    rotated service key). The reference counts keyids, so it counts such links twice."""

    def __init__(self, layout: Layout, policy: KeyPolicy) -> None:
        self._layout = layout
        self._policy = policy
        self._group_of_label: dict[str, int] = {}
        self.first_file: dict[int, str] = {}  # group -> the first link file counted for it

    def add(self, candidate: LoadedLink) -> str | None:
        """Count `candidate`; the file already counted for its functionary, if any."""
        key = self._layout.keys[candidate.keyid]
        labels = (f"key:{key.material}", f"policy:{self._policy.functionary_of(key.keyid)}")
        groups = sorted({self._group_of_label[label] for label in labels
                         if label in self._group_of_label})
        if not groups:
            group = len(self.first_file)
            self.first_file[group] = candidate.file_name
            for label in labels:
                self._group_of_label[label] = group
            return None
        group, *merged = groups
        for label, owner in list(self._group_of_label.items()):
            if owner in merged:
                self._group_of_label[label] = group
        for other in merged:
            self.first_file.pop(other)
        for label in labels:
            self._group_of_label[label] = group
        return self.first_file[group]

    def __len__(self) -> int:
        return len(self.first_file)


def verify_thresholds(
    *,
    layout: Layout,
    loaded: Mapping[str, list[LoadedLink]],
    policy: KeyPolicy,
    now: datetime,
) -> tuple[list[StepLinks], list[Failure], list[VerdictWarning]]:
    """Keep the acceptable links of each step and count distinct functionaries (keys)."""
    result: list[StepLinks] = []
    failures: list[Failure] = []
    warnings: list[VerdictWarning] = []
    for step in layout.steps:
        accepted: list[LoadedLink] = []
        functionaries = _Functionaries(layout, policy)
        ignored: list[str] = []
        causes: set[Cause] = set()
        merged: list[str] = []
        for candidate in loaded.get(step.name, []):
            refusal = _refusal(step, candidate, layout, policy, now)
            if refusal is not None:
                causes.add(refusal[0])
                ignored.append(f"{candidate.file_name}: {refusal[1]}")
                warnings.append(warning(Stage.THRESHOLD, f"ignored {ignored[-1]}", step=step.name))
                continue
            counted = functionaries.add(candidate)
            if counted is not None:
                merged.append(f"{candidate.file_name} and {counted}")
                warnings.append(
                    warning(
                        Stage.THRESHOLD,
                        f"{candidate.file_name} and {counted} are signed by one functionary "
                        "(one key, or versions of one service key): counted once",
                        step=step.name,
                    )
                )
            accepted.append(candidate)
        if len(functionaries) < step.threshold:
            found = f"found {len(functionaries)}"
            if merged:
                found += (
                    " (" + "; ".join(merged) + " are signed by one functionary under different "
                    "keyids; in-toto-verify counts keyids and would count them twice)"
                )
            if ignored:
                found += " (ignored " + "; ".join(ignored) + ")"
            elif not loaded.get(step.name):
                found += " (no link file for any authorized key)"
            if not loaded.get(step.name):
                causes.add(Cause.MISSING_LINK)
            failures.append(
                failure(
                    Stage.THRESHOLD,
                    f"step '{step.name}' needs {step.threshold} link(s) signed by distinct "
                    f"authorized functionaries, {found}",
                    step=step.name,
                    cause=next((c for c in _CAUSE_ORDER if c in causes), Cause.FUNCTIONARIES),
                )
            )
        result.append(
            StepLinks(step, tuple(accepted), frozenset(functionaries.first_file.values()))
        )
    return result, failures, warnings


def artifact_differences(first: Link, other: Link) -> tuple[str, ...]:
    """The material and product paths on which two links disagree (sorted)."""
    paths: set[str] = set()
    for mine, theirs in ((first.materials, other.materials), (first.products, other.products)):
        if mine != theirs:
            paths.update(p for p in mine.keys() | theirs.keys() if mine.get(p) != theirs.get(p))
    return tuple(sorted(paths))


def verify_threshold_agreement(
    steps: list[tuple[Step, list[tuple[str, Link]]]],
) -> list[Failure]:
    """For steps with threshold > 1, all accepted links report the same artifacts.

    Like the reference, a threshold-1 step is not checked; its first link is used.
    """
    failures = []
    for step, named_links in steps:
        if step.threshold <= 1 or not named_links:
            continue
        first_name, first = named_links[0]
        for other_name, other in named_links[1:]:
            differences = artifact_differences(first, other)
            if differences:
                failures.append(
                    failure(
                        Stage.THRESHOLD_ARTIFACTS,
                        f"{first_name} and {other_name} report different artifacts "
                        f"({len(differences)} path(s))",
                        step=step.name,
                        paths=differences,
                    )
                )
    return failures
