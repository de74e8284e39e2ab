"""The step-name grammar (custody_core.step_names): names that stay a relative path."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from custody_core.errors import MetadataError
from custody_core.link import link_file_name
from custody_core.step_names import MAX_STEP_NAME_BYTES, check_step_name, step_name_for_audit

KEYID = "6031dbe7" + "0" * 56


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "must not be empty"),
        ("build/../../deploy", "a '..' path segment"),
        ("..", "a '..' path segment"),
        ("./x", "a '.' path segment"),
        ("a/./b", "a '.' path segment"),
        ("/abs", "an absolute path"),
        ("//host/share", "an absolute path"),
        ("a//b", "an empty path segment"),
        ("a/", "an empty path segment"),
        ("build\x00.evil", "character U+0000"),
        ("build\nFAKE LOG LINE", "character U+000A"),
        ("build\r", "character U+000D"),
        ("del\x7f", "character U+007F"),
        ("c1\x85", "character U+0085"),
        ("rtl\u202etxt.exe", "character U+202E"),  # bidirectional override
        ("zero\u200bwidth", "character U+200B"),
        ("line\u2028sep", "character U+2028"),
        ("a\\..\\b", "backslash"),
        ("C:/Windows", "a drive"),
        ("c:x", "a drive"),  # relative to drive C's current directory
        ("x:y/z", "a drive"),
        ("x" * 100_000, "100000 bytes long, over the limit of 240"),
        ("é" * 121, "242 bytes long"),  # bytes, not characters
    ],
)
def test_names_that_leave_the_directory_or_hide_something_are_refused(
        name: str, reason: str) -> None:
    with pytest.raises(MetadataError, match=re.escape(reason)) as caught:
        check_step_name(name, what="step_name")
    message = str(caught.value)
    assert message.startswith("step_name ")
    assert len(message) < 300 and "\x00" not in message and "\n" not in message


@pytest.mark.parametrize(
    "name",
    ["build", "ci/build", "team-a/ci/build.linux_amd64", "...", "a..b", "v1.2", "é/ü/日本",
     "build step", "ab:c", "a/b:c", "x" * MAX_STEP_NAME_BYTES],
)
def test_ordinary_names_are_allowed(name: str) -> None:
    assert check_step_name(name) == name


@pytest.mark.parametrize("name", ["ci/build", "x" * MAX_STEP_NAME_BYTES, "日本" * 40])
def test_an_allowed_name_makes_a_link_file_below_the_directory(name: str,
                                                               tmp_path: Path) -> None:
    check_step_name(name)
    path = tmp_path / link_file_name(name, KEYID)
    assert os.path.commonpath([tmp_path, path.resolve()]) == str(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}")  # a legal file name: no segment over 255 bytes
    assert path.read_bytes() == b"{}"


def test_the_audit_records_a_whole_name_or_its_digest_never_a_prefix() -> None:
    assert step_name_for_audit("ci/build") == {"step": "ci/build"}
    long = "a" * 99_000 + "/../../deploy"
    recorded = step_name_for_audit(long)
    assert "step" not in recorded
    assert recorded["step_sha256"] == hashlib.sha256(long.encode()).hexdigest()
    assert recorded["step_bytes"] == len(long)
    assert recorded["step_excerpt"].endswith(f"(first 48 of {len(long)} characters)")
    assert step_name_for_audit("a\x00b")["step_excerpt"] == "'a\\x00b'"
