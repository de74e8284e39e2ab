"""The attestation store's RPCs and Verify's stored links: what the servicer and the
verification service ask of the store (custody_server.store), in domain terms.

A gate that holds only the artifact and the layout finds the run by the artifact: the
newest run in which a link of one of the layout's final steps
(custody_core.final_product), signed by a keyid the layout lists for that step, has a
product with the artifact's digest (each artifact's, when there are several). That run's
links are then verified as a link directory would be: the newest file of each name the
layout's steps look for; files of its steps signed by keys the layout does not list go
as unlisted links (they only explain a rotation). A file whose signed environment names
another run (`custody.run-id`) is never taken for this one, whatever the database says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.final_product import GivenArtifact, check_artifacts, final_steps
from custody_core.keys import PublicKey
from custody_core.link import link_file_name
from custody_core.models import Layout
from custody_core.verdict import Failure, Stage, failure
from custody_server.errors import RequestError
from custody_server.lifecycle.keyring import KeyRing
from custody_server.store.records import (
    LinkPage,
    LinkQuery,
    StoredRecord,
    check_run_id,
    check_step_filter,
    chosen_digest,
)
from custody_server.store.service import AttestationStore, signed_run_id

MAX_UNLISTED = 32  # as the CLI sends (custody_client._cli.unlisted_links)


@dataclass(frozen=True)
class StoredLinks:
    """The links of one stored run, as Verify takes them; or why none were found."""

    run_id: str
    links: Mapping[str, bytes] = field(default_factory=dict)
    unlisted: Mapping[str, bytes] = field(default_factory=dict)
    not_found: Failure | None = None


class Attestations:
    def __init__(self, *, store: AttestationStore, keys: KeyRing) -> None:
        self.store = store
        self._keys = keys

    def add_link(self, content: bytes, *, run_id: str, trusted: Mapping[str, PublicKey],
                 caller: str) -> StoredRecord:
        """AddLink: a link signed by a version of a service key or by one of `trusted`."""
        known = {keyid: version.public_key
                 for keyid, version in self._keys.versions_by_keyid().items()}
        return self.store.add_link(content, run_id=run_id, trusted=trusted, known=known,
                                   caller=caller)

    def service_key_versions(self, alias: str) -> dict[str, PublicKey]:
        """Every version of a service key, by keyid (a trusted key named by alias)."""
        return {v.keyid: v.public_key for v in self._keys.get(alias).versions}

    def get(self, id_prefix: str) -> StoredRecord:
        return self.store.get(id_prefix)

    def list(self, query: LinkQuery) -> LinkPage:
        return self.store.page(query)

    def links_for(self, *, layout: bytes, artifacts: Sequence[GivenArtifact],
                  run_id: str) -> StoredLinks:
        """The stored links to verify `layout` with: those of `run_id`, or of the newest
        run whose final step made every artifact."""
        parsed = Layout.from_payload(parse_envelope(layout).payload)
        for step in parsed.steps:  # the names looked up: as the store takes them
            check_step_filter(step.name, what="the layout's step name")
        if run_id:
            check_run_id(run_id)
        else:
            if not artifacts:
                raise RequestError("stored_links: give run_id or the artifacts to find the "
                                   "run by")
            check_artifacts(artifacts)
            finals = final_steps(parsed)
            digests = list(dict.fromkeys(chosen_digest(a.digest) for a in artifacts))
            runs = self.store.find_runs(digests, final_signers(parsed))
            if not runs:
                return StoredLinks(run_id="", not_found=_no_run(artifacts, finals))
            run_id = runs[0]
        # the files of the names the layout's steps look for, and of MAX_UNLISTED others
        records = self.store.run_links(
            run_id, steps={step.name: step.pubkeys for step in parsed.steps},
            unlisted=MAX_UNLISTED)
        return _as_link_directory(parsed, records, run_id)

    def retained(self, layout: Layout, artifacts: Sequence[GivenArtifact]) -> int:
        """How many of `artifacts` the store keeps a link of, as the gate would find their
        run: a product of a final step's link by a keyid the layout lists for it."""
        signers = final_signers(layout)
        return sum(self.store.has_product(chosen_digest(a.digest), signers)
                   for a in artifacts)


def final_signers(layout: Layout) -> dict[str, tuple[str, ...]]:
    """The layout's final steps, each with the keyids it lists: whose links with the
    artifact can name the run (a stranger's link with the same digest cannot)."""
    finals = set(final_steps(layout))
    return {step.name: tuple(step.pubkeys) for step in layout.steps if step.name in finals}


def _as_link_directory(layout: Layout, records: Sequence[StoredRecord],
                       run_id: str) -> StoredLinks:
    """For each file name the layout's steps look for, the newest record of that name
    signed by the very keyid the step lists (a stranger's key whose id merely starts with
    the same 8 digits does not displace it), else the newest of that name. A record whose
    signed environment names another run than `run_id` is passed over: its run column
    (a database row, or an AddLink before runs were checked) does not make it this
    run's."""
    keyids: dict[str, set[str]] = {}
    for step in layout.steps:
        for keyid in step.pubkeys:
            keyids.setdefault(link_file_name(step.name, keyid), set()).add(keyid.lower())
    steps = {step.name for step in layout.steps}
    exact: dict[str, bytes] = {}
    by_name: dict[str, bytes] = {}
    unlisted: dict[str, bytes] = {}
    for record in reversed(records):  # newest first: the first of a name that counts wins
        content, name = record.content, record.file_name
        if content is None:
            continue
        if name in keyids:
            listed = record.keyid.lower() in keyids[name]
            if name in exact or (name in by_name and not listed):
                continue  # a newer one is taken (each file is read only as needed)
            if not _of_run(content, run_id):
                continue
            if listed:
                exact[name] = content
            by_name.setdefault(name, content)
        elif (record.step in steps and name not in unlisted and len(unlisted) < MAX_UNLISTED
              and _of_run(content, run_id)):
            unlisted[name] = content
    return StoredLinks(run_id=run_id, links={**by_name, **exact}, unlisted=unlisted)


def _of_run(content: bytes, run_id: str) -> bool:
    """Whether a stored link may count for `run_id`: it names that run in its signed
    environment, or none (signed elsewhere). A file that does not parse is left to the
    verification, which fails on it as on a malformed file in a link directory."""
    try:
        payload = parse_envelope(content, for_verification=True).payload
    except MetadataError:
        return True
    named = signed_run_id(payload)
    return named is None or named == run_id


def _no_run(artifacts: Sequence[GivenArtifact], finals: Sequence[str]) -> Failure:
    steps = ", ".join(f"'{name}'" for name in finals) or "(none: the layout has no steps)"
    names = ", ".join(a.path for a in artifacts[:5]) + (", ..." if len(artifacts) > 5 else "")
    return failure(Stage.ARTIFACT,
                   f"no run in the attestation store has {names} as a product of the final "
                   f"step{'s' if len(finals) > 1 else ''} {steps} (a link recorded without a "
                   "run id belongs to no run: verify it from its file, with a link directory)",
                   step=finals[0] if len(finals) == 1 else None,
                   paths=tuple(a.path for a in artifacts))
