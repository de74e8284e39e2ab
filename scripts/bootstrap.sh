#!/usr/bin/env bash
# Install what Custody needs on a Debian-like machine: SoftHSM2 (apt) and the
# project in a virtual environment at .venv (pip). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's packages: SoftHSM2 for the service; with --test also what the tests start
# (Prometheus with promtool for the rules and dashboard, PostgreSQL for the shared store).
missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
if [ "${1:-}" = "--test" ]; then
    { command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    # Node.js and npm for the Node client's tests (clients/node, tests/node)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]} from Debian's packages" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$python" -m venv .venv
fi
stamp=.venv/.custody-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Custody and its test tools into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    # The distribution was named `custody` before `custody-intoto` (PyPI's `custody` is
    # another project): an old editable install would claim the same packages and the
    # `custody` script, and its egg-info in the checkout would still be found as installed.
    if .venv/bin/python -m pip show -q custody >/dev/null 2>&1; then
        .venv/bin/python -m pip uninstall -q -y custody
    fi
    rm -rf custody.egg-info
    .venv/bin/python -m pip install -q -e '.[server,test]'
    touch "$stamp"
fi

# With --test: the Node client's packages, exactly as clients/node/package-lock.json pins
# them (buf, protoc-gen-es, TypeScript and the runtime); the tests build the client.
if [ "${1:-}" = "--test" ]; then
    node_stamp=clients/node/node_modules/.custody-installed
    if [ ! -f "$node_stamp" ] || [ clients/node/package-lock.json -nt "$node_stamp" ]; then
        echo "bootstrap: installing the Node client's packages (npm ci)" >&2
        (cd clients/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        touch "$node_stamp"
    fi
fi
