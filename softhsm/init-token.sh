#!/usr/bin/env bash
# Create (or reuse) a SoftHSM2 token whose files live in DIR, without the Python package.
#
#   softhsm/init-token.sh DIR [--label LABEL] [--pin-file FILE]   (default label: custody)
#
# Writes DIR/softhsm2.conf (tokens in DIR/tokens, file object store, log level ERROR),
# initializes a token with a random SO PIN and a random user PIN, and keeps the user PIN in
# FILE (default DIR/user.pin; mode 0600). Keep FILE apart from DIR where backups or volumes
# of the token could carry it along (docker-compose.yml: a volume of its own).
# Idempotent: a token that already carries LABEL is reused.
# Set SOFTHSM_USER_PIN / SOFTHSM_SO_PIN to choose the PINs instead.
#
# Unlike `python -m custody_server.softhsm`, this passes the PINs to softhsm2-util as
# arguments, so they are visible in the process list for the moment it runs: use it where no
# other user shares the machine (an init container), the Python tool elsewhere.
set -euo pipefail
umask 077

usage() { echo "usage: $0 DIR [--label LABEL] [--pin-file FILE]" >&2; exit 2; }

[[ $# -ge 1 ]] || usage
dir=$1; shift
label=custody
pin_file=
while [[ $# -gt 0 ]]; do
    case $1 in
        --label) [[ $# -ge 2 ]] || usage; label=$2; shift 2 ;;
        --pin-file) [[ $# -ge 2 ]] || usage; pin_file=$2; shift 2 ;;
        *) usage ;;
    esac
done

command -v softhsm2-util >/dev/null || { echo "error: softhsm2-util not found" >&2; exit 1; }
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf=$dir/softhsm2.conf
pin_file=${pin_file:-$dir/user.pin}
mkdir -p "$(dirname "$pin_file")"

cat >"$conf" <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF=$conf

# Labels of the initialized tokens, one per line.
initialized_labels() {
    softhsm2-util --show-slots | awk '
        /Initialized:/ { initialized = ($2 == "yes") }
        /Label:/ && initialized { sub(/^[ \t]*Label:[ \t]*/, ""); sub(/[ \t]+$/, ""); print }'
}

random_pin() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }

labels=$(initialized_labels)
if grep -Fxq -- "$label" <<<"$labels"; then
    if [[ -n ${SOFTHSM_USER_PIN:-} ]]; then
        printf '%s\n' "$SOFTHSM_USER_PIN" >"$pin_file"
    elif [[ ! -f $pin_file ]]; then
        echo "error: token '$label' exists but $pin_file is missing: set SOFTHSM_USER_PIN" >&2
        exit 1
    fi
    echo "token '$label' already initialized in $dir" >&2
else
    if [[ -n $labels ]]; then
        echo "error: $dir already holds another token; use another directory" >&2
        exit 1
    fi
    user_pin=${SOFTHSM_USER_PIN:-$(random_pin)}
    so_pin=${SOFTHSM_SO_PIN:-$(random_pin)}
    softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
    printf '%s\n' "$user_pin" >"$pin_file"
    echo "token '$label' initialized in $dir" >&2
fi
chmod 600 "$pin_file"

echo "export SOFTHSM2_CONF=$conf"
echo "# user PIN in $pin_file (mode 0600)"
