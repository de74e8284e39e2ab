"""A stored run as a link directory: the newest file of each name a step looks for, and
never a stranger's file whose keyid merely shares the name's 8 digits."""

from __future__ import annotations

from datetime import UTC, datetime

from custody_core.models import Layout
from custody_server.attestations import _as_link_directory
from custody_server.store import StoredRecord

KEYID = "ab12cd34" + "0" * 56
LOOKALIKE = "ab12cd34" + "f" * 56  # a key made until its id began the same way
LAYOUT = Layout.from_payload({
    "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
    "steps": [{"_type": "step", "name": "build", "pubkeys": [KEYID], "threshold": 1,
               "expected_materials": [], "expected_products": []}]})


def record(seq: int, keyid: str, content: bytes, *, step: str = "build") -> StoredRecord:
    return StoredRecord(seq=seq, id=f"{seq:064x}", kind="link", run_id="r", step=step,
                        keyid=keyid, file_name=f"{step}.{keyid[:8]}.link", origin="added",
                        caller="x", stored_at=datetime(2026, 5, 1, tzinfo=UTC),
                        content=content)


def test_a_newer_file_by_the_listed_key_replaces_an_older_one() -> None:
    links = _as_link_directory(LAYOUT, [record(1, KEYID, b"first"),
                                        record(2, KEYID, b"re-run")], "r").links
    assert links == {"build.ab12cd34.link": b"re-run"}


def test_a_lookalike_keyid_does_not_displace_the_listed_keys_link() -> None:
    links = _as_link_directory(LAYOUT, [record(1, KEYID, b"genuine"),
                                        record(2, LOOKALIKE, b"planted")], "r").links
    assert links == {"build.ab12cd34.link": b"genuine"}
    # Alone, it is what the directory would hold: the verification then refuses it.
    alone = _as_link_directory(LAYOUT, [record(2, LOOKALIKE, b"planted")], "r").links
    assert alone == {"build.ab12cd34.link": b"planted"}


def test_other_keys_of_a_listed_step_go_as_unlisted_links() -> None:
    other = "99" * 32
    found = _as_link_directory(LAYOUT, [record(1, other, b"rotated"),
                                        record(2, other, b"x", step="not-in-layout")], "r")
    assert found.links == {} and found.unlisted == {f"build.{other[:8]}.link": b"rotated"}
