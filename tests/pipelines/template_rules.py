"""What the templates and the script must agree on, for the tests that check it."""

from __future__ import annotations

import re

from custody_client.run_ids import ENV_RUN_ID
from custody_client.settings import ENV_CA, ENV_CERT, ENV_KEY_FILE, ENV_SERVER

from .ci_runners import SCRIPTS

SCRIPT = SCRIPTS / "custody-ci.sh"
GITLAB_JOB_KEYWORDS = {
    "after_script", "allow_failure", "artifacts", "before_script", "cache", "coverage",
    "dast_configuration", "dependencies", "environment", "extends", "hooks", "id_tokens",
    "identity", "image", "inherit", "interruptible", "manual_confirmation", "needs", "pages",
    "parallel", "release", "resource_group", "retry", "rules", "run", "script", "secrets",
    "services", "stage", "tags", "timeout", "trigger", "variables", "when"}
GITLAB_GLOBAL_KEYWORDS = {"default", "include", "stages", "variables", "workflow"}
# The GitLab template's own: where custody-ci.sh comes from.
TEMPLATE_VARIABLES = {"CUSTODY_SCRIPTS", "CUSTODY_SCRIPTS_URL", "CUSTODY_SCRIPTS_SHA256"}
# The variables the CLI itself reads: the script passes them on as they are.
CLI_VARIABLES = {ENV_SERVER, ENV_CA, ENV_CERT, ENV_KEY_FILE, ENV_RUN_ID}


def script_variables() -> tuple[set[str], set[str]]:
    """(the variables custody-ci.sh's head documents, those its body uses)."""
    text = SCRIPT.read_text(encoding="utf-8")
    head, _, body = text.partition("\nset -euo pipefail\n")
    assert body, "custody-ci.sh: no `set -euo pipefail` after its head"
    named = re.compile(r"\bCUSTODY_[A-Z0-9_]+\b")
    return set(named.findall(head)), set(named.findall(body))
