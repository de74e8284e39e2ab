"""The pipeline run a step belongs to: `--run-id`, else the CI's own run id.

The attestation store groups links by run, so that a release gate holding only the
artifact finds every link of the pipeline that made it. Without `--run-id` the id comes
from the environment, the first of: CUSTODY_RUN_ID (as it is), GITHUB_RUN_ID (GitHub
Actions: "github:<id>", unique across GitHub; a re-run attempt keeps it) and
CI_PIPELINE_ID (GitLab CI: "gitlab:<id>"). None of them: no run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from custody_client.errors import InputError

ENV_RUN_ID = "CUSTODY_RUN_ID"
CI_RUN_IDS = (("GITHUB_RUN_ID", "github:"), ("CI_PIPELINE_ID", "gitlab:"))
_RUN_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")  # the server's grammar


def run_id(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The run id to send ("" for none); InputError if it is not one the server takes."""
    env = os.environ if environ is None else environ
    value = given if given is not None else env.get(ENV_RUN_ID, "")
    source = "--run-id" if given is not None else ENV_RUN_ID
    if given is None and not value:
        for name, prefix in CI_RUN_IDS:
            if env.get(name):
                value, source = prefix + env[name], name
                break
    if value and not _RUN_ID.fullmatch(value):
        raise InputError(f"{source}: {value[:80]!r} is not a run id (1-200 of A-Z a-z 0-9 "
                         ". _ : / @ + = -)")
    return value
