"""The run id a step is recorded under: given, or the CI's; and on the wire."""

from __future__ import annotations

import pytest

from custody_client.errors import InputError
from custody_client.link_draft import LinkDraft
from custody_client.models import EnvelopeKind
from custody_client.run_ids import run_id


@pytest.mark.parametrize(("given", "environ", "expected"), [
    ("release-42", {"GITHUB_RUN_ID": "7"}, "release-42"),
    (None, {"CUSTODY_RUN_ID": "mine", "GITHUB_RUN_ID": "7"}, "mine"),
    (None, {"GITHUB_RUN_ID": "7", "CI_PIPELINE_ID": "8"}, "github:7"),
    (None, {"CI_PIPELINE_ID": "8"}, "gitlab:8"),
    # GITHUB_RUN_ID is unique within a repository: two repositories' run 7 are two runs
    (None, {"GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "acme/app",
            "GITHUB_SERVER_URL": "https://github.com"}, "github:github.com/acme/app/7"),
    (None, {"GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "acme/lib",
            "GITHUB_SERVER_URL": "https://ghe.example:8443"}, "github:ghe.example:8443/acme/lib/7"),
    (None, {"GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "acme/app"},
     "github:github.com/acme/app/7"),
    (None, {"CI_PIPELINE_ID": "8", "CI_SERVER_HOST": "gitlab.example",
            "CI_PROJECT_PATH": "group/sub/app"}, "gitlab:gitlab.example/group/sub/app/8"),
    (None, {"CI_PIPELINE_ID": "8", "CI_SERVER_HOST": "gitlab.example"},
     "gitlab:gitlab.example/8"),
    (None, {}, ""),
    ("", {"GITHUB_RUN_ID": "7"}, ""),  # given empty: no run, whatever the CI says
])
def test_the_run_id_comes_from_the_flag_then_the_ci(given: str | None,
                                                   environ: dict[str, str],
                                                   expected: str) -> None:
    assert run_id(given, environ) == expected


@pytest.mark.parametrize(("given", "environ", "source"), [
    ("has space", {}, "--run-id"),
    (None, {"CUSTODY_RUN_ID": "x" * 201}, "CUSTODY_RUN_ID"),
    (None, {"GITHUB_RUN_ID": "7;rm"}, "GITHUB_RUN_ID"),
    (None, {"CI_PIPELINE_ID": "8", "CI_SERVER_HOST": "h",
            "CI_PROJECT_PATH": "g/" * 100 + "app"}, "CI_PIPELINE_ID"),  # over 200
])
def test_a_bad_run_id_is_an_input_error_naming_its_source(
        given: str | None, environ: dict[str, str], source: str) -> None:
    with pytest.raises(InputError, match=source):
        run_id(given, environ)


def test_the_run_id_goes_on_the_wire_only_when_given() -> None:
    draft = LinkDraft(step_name="build", command=["make"])
    assert draft.to_message().run_id == ""
    draft.set_run_id("github:7")
    message = draft.to_message(envelope=EnvelopeKind.DSSE)
    assert message.run_id == "github:7" and message.step_name == "build"
