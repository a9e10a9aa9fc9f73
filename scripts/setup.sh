#!/usr/bin/env bash
# Installs what the tests need that a fresh machine lacks: a local OCI
# registry (CNCF Distribution), FUSE, htpasswd, openssl, fio, and a Python
# venv with the ORAS SDK (used as an independent client in interop tests).
# Idempotent and quiet when everything is already there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
ORAS_PY_SPEC='oras>=0.2,<0.3'

SUDO=()
if [[ $EUID -ne 0 ]]; then
    SUDO=(sudo)
fi

# --- Debian packages --------------------------------------------------------
# Commands the tests and benchmarks use, and the packages that bring them.
cmds=(docker-registry fusermount3 htpasswd openssl fio skopeo curl /usr/bin/time gztool)
missing=()
for cmd in "${cmds[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
# Debian's own python3 needs python3-venv for `python3 -m venv`; pyenv's has it.
need_venv_pkg=0
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_venv_pkg=1
fi

if ((${#missing[@]} > 0 || need_venv_pkg)); then
    pkgs=(docker-registry fuse3 apache2-utils openssl fio skopeo curl time gztool)
    if ((need_venv_pkg)); then pkgs+=(python3-venv); fi
    echo "setup: missing ${missing[*]:-python3-venv}; installing ${pkgs[*]}" >&2
    # apt/dpkg chatter goes to a log, shown only if the install fails.
    apt_log=$(mktemp)
    if ! { "${SUDO[@]}" apt-get update -qq &&
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        echo "setup: apt-get install failed" >&2
        exit 1
    fi
    rm -f "$apt_log"
    for cmd in "${cmds[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || {
            echo "setup: $cmd still missing after apt-get install" >&2
            exit 1
        }
    done
fi

# --- Python venv with the ORAS SDK ------------------------------------------
if ! "$VENV/bin/python" -c 'import oras' >/dev/null 2>&1; then
    # A venv whose interpreter no longer runs (python moved) can't be repaired.
    if [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        echo "setup: removing broken venv $VENV" >&2
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        echo "setup: creating venv $VENV" >&2
        python3 -m venv "$VENV"
    fi
    echo "setup: pip install $ORAS_PY_SPEC into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$ORAS_PY_SPEC" >&2
    "$VENV/bin/python" -c 'import oras' || {
        echo "setup: 'import oras' still fails in $VENV" >&2
        exit 1
    }
fi
