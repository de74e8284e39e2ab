"""Text from metadata shown to people: what could start a line, rewrite a terminal or
reorder what is read comes out escaped; printable text, any script, is unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custody_core.display import escape_unprintable


@pytest.mark.parametrize(("text", "shown"), [
    ("dist/app-1.0.tar.gz", "dist/app-1.0.tar.gz"),
    ("Zürich/Ωmega/日本 file.txt", "Zürich/Ωmega/日本 file.txt"),
    ("a\nPASS", r"a\x0aPASS"),
    ("\x1b[2K\r", r"\x1b[2K\x0d"),
    ("\x00\x7f\x85", r"\x00\x7f\x85"),
    ("exe\u202egpj.sh", r"exe\u202egpj.sh"),  # right-to-left override
    ("a\u2028b\u00a0c\u200bd", r"a\u2028b\xa0c\u200bd"),  # separators, odd spaces
    ("\U000e0041", r"\U000e0041"),  # a tag character: invisible
])
def test_unprintable_characters_are_escaped(text: str, shown: str) -> None:
    assert escape_unprintable(text) == shown


@given(st.text())
def test_what_comes_out_is_one_printable_line(text: str) -> None:
    shown = escape_unprintable(text)
    assert shown.isprintable()
    assert text == shown or not text.isprintable()
