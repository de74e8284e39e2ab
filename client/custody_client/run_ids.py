"""The pipeline run a step belongs to: `--run-id`, else the CI's own run id.

The attestation store groups links by run, so that a release gate holding only the
artifact finds every link of the pipeline that made it. Without `--run-id` the id comes
from the environment, the first of:

- CUSTODY_RUN_ID, as it is;
- GitHub Actions: "github:<host>/<owner>/<repository>/<GITHUB_RUN_ID>" (the host from
  GITHUB_SERVER_URL). GITHUB_RUN_ID is unique only within a repository, so the
  repository and the server are part of the id: two repositories' run 42 are two runs.
  A re-run attempt keeps the id (its newer links replace the older ones at the gate);
- GitLab CI: "gitlab:<CI_SERVER_HOST>/<CI_PROJECT_PATH>/<CI_PIPELINE_ID>" (a pipeline id
  is unique within one GitLab instance; the project path is there for people).

Where the CI gives the run number without its repository (a partial environment), the
id is "github:<number>" or "gitlab:<number>". None of them: no run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from custody_client.errors import InputError

ENV_RUN_ID = "CUSTODY_RUN_ID"
_RUN_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")  # the server's grammar


def _github(env: Mapping[str, str]) -> str:
    number, repository = env["GITHUB_RUN_ID"], env.get("GITHUB_REPOSITORY", "")
    if not repository:
        return f"github:{number}"
    host = urlsplit(env.get("GITHUB_SERVER_URL", "")).netloc or "github.com"
    return f"github:{host}/{repository}/{number}"


def _gitlab(env: Mapping[str, str]) -> str:
    number, host = env["CI_PIPELINE_ID"], env.get("CI_SERVER_HOST", "")
    if not host:
        return f"gitlab:{number}"
    project = env.get("CI_PROJECT_PATH", "")
    return f"gitlab:{host}/{project}/{number}" if project else f"gitlab:{host}/{number}"


CI_RUN_IDS = (("GITHUB_RUN_ID", _github), ("CI_PIPELINE_ID", _gitlab))


def run_id(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The run id to send ("" for none); InputError if it is not one the server takes."""
    env = os.environ if environ is None else environ
    value = given if given is not None else env.get(ENV_RUN_ID, "")
    source = "--run-id" if given is not None else ENV_RUN_ID
    if given is None and not value:
        for name, from_ci in CI_RUN_IDS:
            if env.get(name):
                value, source = from_ci(env), name
                break
    if value and not _RUN_ID.fullmatch(value):
        raise InputError(f"{source}: {value[:80]!r} is not a run id (1-200 of A-Z a-z 0-9 "
                         ". _ : / @ + = -); give one with --run-id or CUSTODY_RUN_ID")
    return value
