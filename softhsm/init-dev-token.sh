#!/usr/bin/env bash
# Create (or reuse) an hsmstore development SoftHSM2 token under a data directory,
# the same layout hsmstore/hsm/devtoken.py:ensure_dev_token() makes:
#
#   <data_dir>/softhsm/softhsm2.conf   from softhsm2.conf.template beside this script
#   <data_dir>/softhsm/tokens/         token directory
#   <data_dir>/softhsm/user.pin        user PIN  (mode 0600)
#
# The SO PIN is random and never written down: no hsmstore command needs it after
# the token exists (it only re-initialises a token or resets a lost user PIN, and a
# lost dev token is simply deleted), so keeping it would only widen what a leaked
# data directory gives away.
#
# Usage: softhsm/init-dev-token.sh DATA_DIR [TOKEN_LABEL]   (label default: hsmstore-dev)
# Then:  export SOFTHSM2_CONF=DATA_DIR/softhsm/softhsm2.conf   (before starting hsmstore)
#
# Idempotent: a second run finds the token with `softhsm2-util --show-slots`.
# The PINs are passed to softhsm2-util on its command line (it reads them only
# from a terminal otherwise): dev machines only.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 DATA_DIR [TOKEN_LABEL]" >&2
    exit 2
fi

umask 077
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="${script_dir}/softhsm2.conf.template"
mkdir -p "$1"
data_dir="$(cd "$1" && pwd)"
label="${2:-hsmstore-dev}"
softhsm_dir="${data_dir}/softhsm"
tokendir="${softhsm_dir}/tokens"
conf="${softhsm_dir}/softhsm2.conf"

command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: apt-get install softhsm2" >&2; exit 1; }
[[ -f "$template" ]] || { echo "missing $template" >&2; exit 1; }

mkdir -p "$tokendir"
chmod 700 "$softhsm_dir" "$tokendir"
if [[ ! -f "$conf" ]]; then
    # '|' as the sed delimiter: the path holds '/'.
    sed "s|@TOKENDIR@|${tokendir}|" "$template" >"$conf"
fi

new_pin() {  # 16 random bytes as 32 hex characters, like secrets.token_hex(16)
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

has_token() {
    SOFTHSM2_CONF="$conf" softhsm2-util --show-slots \
        | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//' \
        | grep -Fxq -- "$label"
}

if has_token; then
    [[ -f "${softhsm_dir}/user.pin" ]] || { echo "token '$label' exists but ${softhsm_dir}/user.pin is missing" >&2; exit 1; }
    echo "token '$label' already exists in $tokendir"
else
    [[ -f "${softhsm_dir}/user.pin" ]] || { new_pin >"${softhsm_dir}/user.pin"; echo >>"${softhsm_dir}/user.pin"; }
    chmod 600 "${softhsm_dir}/user.pin"
    SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" \
        --so-pin "$(new_pin)" --pin "$(tr -d '\n' <"${softhsm_dir}/user.pin")" >/dev/null
    echo "token '$label' created in $tokendir"
fi
echo "SOFTHSM2_CONF=$conf"
