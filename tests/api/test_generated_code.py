"""The generated custody_api package matches protos/ (one script makes it)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_services_are_versioned() -> None:
    from custody_api.v1 import custody_pb2

    services = custody_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"Custody", "KeyAdmin"}
    assert custody_pb2.DESCRIPTOR.package == "custody.v1"
