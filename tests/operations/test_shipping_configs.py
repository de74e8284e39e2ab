"""deploy/shipping/: the Vector and Fluent Bit examples that ship the audit trail into a
SIEM. Neither tool is packaged for Debian 12 or PyPI, so the files are read here (TOML for
Vector, Fluent Bit's classic format by a small reader): they tail every file of the trail
(active and rotated) and nothing else in the audit directory, parse the JSON, keep the
line verbatim in event.original, ship it, and keep the checkpoint lines apart."""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath

from .prometheus_support import OPERATIONS, ROOT

SHIPPING = ROOT / "deploy" / "shipping"
STATE_DIR = "/var/lib/custody"  # deploy/custody.toml's state_dir
AUDIT_GLOB = f"{STATE_DIR}/audit/audit*.log"

# The names in the audit directory (docs/AUDIT.md "Where it is"): the trail's files ...
TRAIL_FILES = ["audit.log", "audit.000000000001-000000041234.log",
               "audit.000000041235-000000090000.log"]
# ... and what is not the trail (a file moved aside, a closed segment, the lock).
NOT_TRAIL = ["audit.log.displaced-20261122T035349Z", ".audit.lock",
             "segment-before-20261122T035349Z/audit.log"]


def matched(pattern: str) -> set[str]:
    """The names above a file tail would read: a glob's `*` stays within the directory."""
    return {name for name in TRAIL_FILES + NOT_TRAIL
            if PurePosixPath(f"{STATE_DIR}/audit/{name}").match(pattern)}


def test_the_glob_takes_the_trail_and_nothing_else() -> None:
    assert matched(AUDIT_GLOB) == set(TRAIL_FILES)


def test_vector_tails_parses_keeps_and_ships() -> None:
    config = tomllib.loads((SHIPPING / "vector.toml").read_text())
    source = config["sources"]["custody_audit"]
    assert source["type"] == "file"
    assert source["include"] == [AUDIT_GLOB]
    assert source["read_from"] == "beginning"
    parsed = config["transforms"]["custody_audit_parsed"]
    assert parsed["type"] == "remap" and parsed["inputs"] == ["custody_audit"]
    program = parsed["source"]
    assert "parse_json(line)" in program
    assert ".event.original = line" in program  # the verbatim line, for the chain
    assert '"event": {"original": line' in program  # an unparsed line is kept too
    checkpoints = config["transforms"]["custody_checkpoints"]
    assert '.event.action != "audit-checkpoint"' in checkpoints["source"]
    assert '"message": .event.original' in checkpoints["source"]
    retained = config["sinks"]["retained_checkpoints"]
    assert retained["encoding"]["codec"] == "text"
    assert "{{ trail_id }}" in retained["path"]
    siem = config["sinks"]["siem"]
    assert siem["inputs"] == ["custody_audit_parsed"]
    assert siem["acknowledgements"]["enabled"] is True
    assert siem["buffer"]["type"] == "disk"
    # the topology: every input names a component that exists
    components = {*config["sources"], *config["transforms"]}
    for kind in ("transforms", "sinks"):
        for name, component in config[kind].items():
            assert set(component["inputs"]) <= components, name


Section = tuple[str, dict[str, str]]


def fluent_bit_sections(text: str) -> list[Section]:
    """Fluent Bit's classic format: [SECTION] headers, then indented `Key value` lines."""
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if header := re.fullmatch(r"\[(\w+)\]", line):
            sections.append((header.group(1), {}))
            continue
        assert raw.startswith((" ", "\t")) and sections, f"not in a section: {raw!r}"
        key, _, value = line.partition(" ")
        assert key.lower() not in {k.lower() for k in sections[-1][1]}, f"twice: {key}"
        sections[-1][1][key] = value.strip()
    return sections


def named(sections: list[Section], kind: str, name: str) -> list[dict[str, str]]:
    return [body for section, body in sections if section == kind and body["Name"] == name]


def test_fluent_bit_tails_parses_keeps_and_ships() -> None:
    sections = fluent_bit_sections((SHIPPING / "fluent-bit.conf").read_text())
    [service] = [body for section, body in sections if section == "SERVICE"]
    parsers = fluent_bit_sections((SHIPPING / service["Parsers_File"]).read_text())
    [tail] = named(sections, "INPUT", "tail")
    assert tail["Path"] == AUDIT_GLOB
    assert tail["Tag"] == "custody.audit"
    assert tail["Read_from_Head"] == "true" and tail["DB"]
    [parser] = named(sections, "FILTER", "parser")
    assert parser["Match"] == tail["Tag"] and parser["Key_Name"] == tail["Key"]
    assert parser["Preserve_Key"] == "On" and parser["Reserve_Data"] == "On"
    [json_parser] = [body for section, body in parsers
                     if section == "PARSER" and body["Name"] == parser["Parser"]]
    assert json_parser["Format"] == "json" and json_parser["Time_Keep"] == "On"
    keep, checkpoint = named(sections, "FILTER", "lua")
    assert keep["Match"] == tail["Tag"]
    assert f'local line = record["{tail["Key"]}"]' in keep["code"]
    assert 'record["event"]["original"] = line' in keep["code"]
    [rewrite] = named(sections, "FILTER", "rewrite_tag")
    assert rewrite["Rule"] == r"$event['action'] ^audit-checkpoint$ custody.checkpoint true"
    assert checkpoint["Match"] == "custody.checkpoint"
    assert 'line = record["event"]["original"]' in checkpoint["code"]
    [siem] = named(sections, "OUTPUT", "es")
    assert siem["Match"] == tail["Tag"] and siem["Retry_Limit"] == "no_limits"
    [retained] = named(sections, "OUTPUT", "file")
    assert retained["Match"] == "custody.checkpoint"
    assert (retained["Format"], retained["Template"]) == ("template", "{line}")
    for code in (keep["code"], checkpoint["code"]):  # balanced Lua, one function each
        assert code.startswith("function ") and code.endswith(" end")
        assert len(re.findall(r"\b(?:function|if)\b", code)) == len(
            re.findall(r"\bend\b", code))


def test_the_docs_name_the_shipping_files_and_what_the_siem_checks() -> None:
    operations = OPERATIONS.read_text()
    for name in ("deploy/shipping/vector.toml", "deploy/shipping/fluent-bit.conf",
                 "--audit-stdout", "event.original", "custody.trail_id", "--checkpoints"):
        assert name in operations, name
