#!/usr/bin/env bash
# custody-ci.sh: what the Custody CI integrations run, in one place. The GitHub Actions
# (integrations/github/record, integrations/github/gate) and the GitLab CI template
# (integrations/gitlab/custody.gitlab-ci.yml) only map their inputs to the variables below
# and call:
#
#   custody-ci.sh install   install the Custody CLI, unless a `custody` command is there
#   custody-ci.sh record    run one step's command under `custody run`: the service signs
#                           its link and keeps it in its attestation store under the run
#   custody-ci.sh gate      `custody verify --artifact ...`: exit 0 only if the artifacts
#                           may ship; the verdict (and why not) in the log and, on GitHub,
#                           in the job summary
#
# Variables (an empty one counts as unset). Lists are split into words at spaces and
# newlines; '...', "..." and \ quote as in xargs; nothing is expanded or globbed.
#
#   install (and how record and gate find the CLI)
#   CUSTODY_INSTALL     auto (default): install unless a `custody` command is found (of
#                       CUSTODY_VERSION, when given); true: install anyway; false: never
#   CUSTODY_PACKAGE     the pip requirement (default custody-intoto; a path or URL works)
#   CUSTODY_VERSION     its version, e.g. 0.2.0 (custody-intoto==0.2.0); default: newest
#   CUSTODY_PYTHON      the Python that makes the virtual environment (default python3)
#   CUSTODY_VENV        where it is installed (default $RUNNER_TEMP/custody-venv, else
#                       ${TMPDIR:-/tmp}/custody-venv); on GitHub its bin is added to the PATH
#   CUSTODY_CLI         the custody command to run (default: CUSTODY_VENV's, else PATH's)
#
#   the service (read by the CLI itself; a flag-less `custody` in the job sees the same)
#   CUSTODY_SERVER      host:port (several replicas: separated by commas)
#   CUSTODY_CA, CUSTODY_CERT, CUSTODY_KEY_FILE
#                       the CA to trust, the client certificate and its key for mTLS:
#                       each a file, or the PEM text itself (a CI secret), which is put
#                       in a file only this user reads, removed when the script ends
#
#   record
#   CUSTODY_STEP        the step's name in the layout (required)
#   CUSTODY_COMMAND     the command and its arguments (required): run as these words, no
#                       shell; for pipes or `&&`: bash -c '...'
#   CUSTODY_MATERIALS   paths recorded before the command runs
#   CUSTODY_PRODUCTS    paths recorded after it
#   CUSTODY_RUN_ID      the run the link belongs to (default: the CLI's,
#                       github:<host>/<owner>/<repo>/$GITHUB_RUN_ID or
#                       gitlab:$CI_SERVER_HOST/$CI_PROJECT_PATH/$CI_PIPELINE_ID)
#   CUSTODY_EXCLUDE     patterns not recorded (--exclude; default: the CLI's)
#   CUSTODY_BASE_PATH   record paths relative to this directory (--base-path)
#   CUSTODY_LSTRIP_PATHS  prefixes removed from recorded paths (--lstrip-paths)
#   CUSTODY_METADATA_DIR  where the link file is written (-d; default: .)
#   CUSTODY_SIGNING_KEY   the service key that signs (--key; default: the server's link key)
#   CUSTODY_ENVELOPE    metablock (default), dsse or statement
#   CUSTODY_RECORD_STREAMS  true: record the command's stdout and stderr (-s)
#   CUSTODY_RUN_TIMEOUT kill the command after this many seconds (--run-timeout)
#   CUSTODY_SIGN_ON_FAILURE  true: a failing command still gets a link recording its
#                       return value (in-toto-run's way); default false: nothing is signed
#   CUSTODY_ARGS        more `custody run` options
#
#   gate
#   CUSTODY_ARTIFACTS   the files to release (required)
#   CUSTODY_LAYOUT      the signed root layout (required)
#   CUSTODY_LAYOUT_KEY_ALIAS  service keys that must have signed it (--layout-key-alias)
#   CUSTODY_LAYOUT_KEYS public key files that must have (--layout-keys); one of the two
#   CUSTODY_GATE_RUN_ID verify this run's links (default: the newest run whose final step
#                       made the artifacts)
#   CUSTODY_LINK_DIR    verify the link files here instead of the attestation store's
#   CUSTODY_PARAMS      layout parameters, KEY=VALUE (--param)
#   CUSTODY_INSPECTION_TIMEOUT  seconds (default: the CLI's, 10)
#   CUSTODY_ARGS        more `custody verify` options
#
# On GitHub Actions, outputs go to $GITHUB_OUTPUT (record: link; gate: passed, run-id) and
# the gate's verdict to $GITHUB_STEP_SUMMARY. Needs bash, xargs and, to install, python3.
set -euo pipefail

ME="custody-ci"
WORK=""

cleanup() {
    if [ -n "$WORK" ]; then rm -rf -- "$WORK"; fi
}
trap cleanup EXIT

say() { printf '%s: %s\n' "$ME" "$*" >&2; }

die() {
    say "$*"
    if [ "${GITHUB_ACTIONS:-}" = "true" ]; then
        printf '::error title=Custody::%s\n' "$(escape_annotation "$*")"
    fi
    exit "${DIE_STATUS:-2}"
}

# A GitHub workflow command's message: %, CR and LF encoded.
escape_annotation() {
    local text=$1
    text=${text//'%'/'%25'}
    text=${text//$'\r'/'%0D'}
    text=${text//$'\n'/'%0A'}
    printf '%s' "$text"
}

workdir() {
    if [ -z "$WORK" ]; then
        WORK=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/custody-ci.XXXXXX")
    fi
}

is_true() {
    case "${1:-}" in
        true | True | TRUE | yes | 1) return 0 ;;
        false | False | FALSE | no | 0 | "") return 1 ;;
        *) die "expected true or false, got '$1'" ;;
    esac
}

# WORDS: the value of the variable named $1 split into words (see the head), in the
# array WORDS; an unmatched quote is an input error.
split_words() {
    local name=$1 value=${!1:-} list
    WORDS=()
    if [ -z "${value//[[:space:]]/}" ]; then
        return 0
    fi
    workdir
    list="$WORK/words"
    if ! printf '%s' "$value" | xargs printf '%s\0' >"$list" 2>"$WORK/words.err"; then
        die "$name: $(tr '\n' ' ' <"$WORK/words.err")"
    fi
    while IFS= read -r -d '' word; do
        WORDS+=("$word")
    done <"$list"
}

venv_dir() {
    printf '%s' "${CUSTODY_VENV:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/custody-venv}"
}

# The custody command to run: CUSTODY_CLI, else the one install put in the venv, else PATH's.
find_cli() {
    if [ -n "${CUSTODY_CLI:-}" ]; then
        printf '%s' "$CUSTODY_CLI"
    elif [ -x "$(venv_dir)/bin/custody" ]; then
        printf '%s' "$(venv_dir)/bin/custody"
    else
        command -v custody
    fi
}

cli_version() {
    "$1" --version 2>/dev/null | sed -n 's/^custody //p'
}

cmd_install() {
    local mode=${CUSTODY_INSTALL:-auto} found="" version="" spec venv python
    case "$mode" in auto | true | false) ;; *) die "CUSTODY_INSTALL: auto, true or false, not '$mode'" ;; esac
    found=$(find_cli || true)
    if [ -n "$found" ]; then
        version=$(cli_version "$found" || true)
    fi
    if [ "$mode" = false ]; then
        [ -n "$found" ] || die "CUSTODY_INSTALL is false and there is no custody command"
        say "using $found (custody ${version:-of unknown version}); not installing"
        return 0
    fi
    if [ "$mode" = auto ] && [ -n "$found" ]; then
        if [ -z "$version" ]; then
            die "$found is not Custody's CLI (no 'custody VERSION' from --version): set CUSTODY_CLI, or CUSTODY_INSTALL=true"
        fi
        if [ -z "${CUSTODY_VERSION:-}" ] || [ "$version" = "$CUSTODY_VERSION" ]; then
            say "using $found (custody $version); not installing"
            return 0
        fi
        say "$found is custody $version, not ${CUSTODY_VERSION}: installing"
    fi
    spec=${CUSTODY_PACKAGE:-custody-intoto}
    if [ -n "${CUSTODY_VERSION:-}" ]; then
        case "$spec" in
            *[=\<\>~!@/:\ ]* | *.whl | *.tar.gz | *.zip)
                die "CUSTODY_PACKAGE '$spec' names a version or a file already: leave CUSTODY_VERSION empty" ;;
        esac
        spec="$spec==$CUSTODY_VERSION"
    fi
    venv=$(venv_dir)
    python=${CUSTODY_PYTHON:-python3}
    say "installing $spec into $venv"
    "$python" -m venv "$venv" ||
        die "$python -m venv $venv failed (on Debian and Ubuntu: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$spec" ||
        die "pip could not install $spec"
    [ -x "$venv/bin/custody" ] || die "$spec installed no custody command"
    say "installed $("$venv/bin/custody" --version)"
    if [ -n "${GITHUB_PATH:-}" ]; then
        printf '%s\n' "$venv/bin" >>"$GITHUB_PATH"
    fi
}

# CUSTODY_CA, CUSTODY_CERT and CUSTODY_KEY_FILE: PEM text becomes a private file.
tls_files() {
    local name value file
    for name in CUSTODY_CA CUSTODY_CERT CUSTODY_KEY_FILE; do
        value=${!name:-}
        case "$value" in
            *-----BEGIN*)
                workdir
                file="$WORK/$name.pem"
                (umask 077 && printf '%s\n' "$value" >"$file")
                export "$name=$file"
                ;;
            "") unset "$name" ;;
            *) [ -r "$value" ] || die "$name: cannot read $value" ;;
        esac
    done
}

github_output() {
    if [ -n "${GITHUB_OUTPUT:-}" ]; then
        printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
    fi
}

show_command() {
    local shown
    printf -v shown ' %q' "$@"
    say "running:${shown}"
}

require() {
    local name
    for name in "$@"; do
        [ -n "${!name:-}" ] || die "$name is required"
    done
}

cmd_record() {
    local cli rc link dir step candidate
    local -a args command
    require CUSTODY_STEP CUSTODY_COMMAND
    cli=$(find_cli) || die "no custody command: run '$0 install' first, or set CUSTODY_CLI"
    tls_files
    step=$CUSTODY_STEP
    split_words CUSTODY_COMMAND
    command=("${WORDS[@]}")
    [ ${#command[@]} -gt 0 ] || die "CUSTODY_COMMAND is required"
    args=(run -n "$step")
    split_words CUSTODY_MATERIALS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(-m "${WORDS[@]}"); fi
    split_words CUSTODY_PRODUCTS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(-p "${WORDS[@]}"); fi
    split_words CUSTODY_EXCLUDE
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(--exclude "${WORDS[@]}"); fi
    split_words CUSTODY_LSTRIP_PATHS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(--lstrip-paths "${WORDS[@]}"); fi
    if [ -n "${CUSTODY_RUN_ID:-}" ]; then args+=(--run-id "$CUSTODY_RUN_ID"); fi
    if [ -n "${CUSTODY_BASE_PATH:-}" ]; then args+=(--base-path "$CUSTODY_BASE_PATH"); fi
    dir=${CUSTODY_METADATA_DIR:-.}
    mkdir -p -- "$dir"
    args+=(-d "$dir")
    if [ -n "${CUSTODY_SIGNING_KEY:-}" ]; then args+=(--key "$CUSTODY_SIGNING_KEY"); fi
    if [ -n "${CUSTODY_ENVELOPE:-}" ]; then args+=(--envelope "$CUSTODY_ENVELOPE"); fi
    if is_true "${CUSTODY_RECORD_STREAMS:-}"; then args+=(-s); fi
    if [ -n "${CUSTODY_RUN_TIMEOUT:-}" ]; then args+=(--run-timeout "$CUSTODY_RUN_TIMEOUT"); fi
    if ! is_true "${CUSTODY_SIGN_ON_FAILURE:-}"; then args+=(--no-sign-on-failure); fi
    split_words CUSTODY_ARGS
    args+=("${WORDS[@]}" -- "${command[@]}")
    show_command custody "${args[@]}"
    rc=0
    "$cli" "${args[@]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
        DIE_STATUS=$rc die "step '$step' failed: custody run exited $rc (see above)"
    fi
    # The link custody wrote: <step>.<keyid8>.link (a / in the step names a subdirectory).
    link=""
    for candidate in "$dir/$step".*.link; do
        if [ -f "$candidate" ] && { [ -z "$link" ] || [ "$candidate" -nt "$link" ]; }; then
            link=$candidate
        fi
    done
    say "step '$step' recorded; its link is signed and stored${link:+: $link}"
    github_output link "$link"
}

summary() {
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        printf '%s\n' "$@" >>"$GITHUB_STEP_SUMMARY"
    fi
}

cmd_gate() {
    local cli rc verdict run_id artifacts status
    local -a args
    require CUSTODY_ARTIFACTS CUSTODY_LAYOUT
    if [ -z "${CUSTODY_LAYOUT_KEY_ALIAS:-}${CUSTODY_LAYOUT_KEYS:-}" ]; then
        die "CUSTODY_LAYOUT_KEY_ALIAS or CUSTODY_LAYOUT_KEYS is required"
    fi
    cli=$(find_cli) || die "no custody command: run '$0 install' first, or set CUSTODY_CLI"
    tls_files
    args=(verify -l "$CUSTODY_LAYOUT")
    split_words CUSTODY_LAYOUT_KEY_ALIAS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(--layout-key-alias "${WORDS[@]}"); fi
    split_words CUSTODY_LAYOUT_KEYS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(--layout-keys "${WORDS[@]}"); fi
    split_words CUSTODY_ARTIFACTS
    args+=(--artifact "${WORDS[@]}")
    artifacts="${WORDS[*]}"
    if [ -n "${CUSTODY_GATE_RUN_ID:-}" ]; then args+=(--run-id "$CUSTODY_GATE_RUN_ID"); fi
    if [ -n "${CUSTODY_LINK_DIR:-}" ]; then args+=(--link-dir "$CUSTODY_LINK_DIR"); fi
    split_words CUSTODY_PARAMS
    if [ ${#WORDS[@]} -gt 0 ]; then args+=(--param "${WORDS[@]}"); fi
    if [ -n "${CUSTODY_INSPECTION_TIMEOUT:-}" ]; then
        args+=(--inspection-timeout "$CUSTODY_INSPECTION_TIMEOUT")
    fi
    split_words CUSTODY_ARGS
    args+=("${WORDS[@]}")
    show_command custody "${args[@]}"
    workdir
    verdict="$WORK/verdict"
    rc=0
    "$cli" "${args[@]}" >"$verdict" 2>&1 || rc=$?
    cat "$verdict"
    run_id=$(sed -n 's/^links: run \(.*\), from the attestation store$/\1/p' "$verdict")
    github_output passed "$([ "$rc" -eq 0 ] && echo true || echo false)"
    github_output run-id "$run_id"
    case "$rc" in
        0) status="passed: $artifacts may ship" ;;
        1) status="FAILED: $artifacts may not ship" ;;
        2) status="no verdict: custody could not use its input (exit 2)" ;;
        3) status="no verdict: the Custody service could not be reached (exit 3; retrying may help)" ;;
        4) status="no verdict: the Custody service refused the call (exit 4)" ;;
        *) status="no verdict: custody exited $rc" ;;
    esac
    summary "### Custody release gate: $status" "" '~~~text' "$(cat "$verdict")" '~~~' ""
    if [ "$rc" -ne 0 ]; then
        if [ "${GITHUB_ACTIONS:-}" = "true" ]; then
            printf '::error title=Custody release gate::%s\n' \
                "$(escape_annotation "$status"$'\n'"$(cat "$verdict")")"
        fi
        say "release gate $status"
        exit "$rc"
    fi
    say "release gate $status"
}

case "${1:-}" in
    install) cmd_install ;;
    record) cmd_record ;;
    gate) cmd_gate ;;
    *) die "usage: $0 install|record|gate (the variables are listed at the head of $0)" ;;
esac
