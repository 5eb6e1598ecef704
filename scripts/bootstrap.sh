#!/usr/bin/env bash
# Create .venv with Sightline and its pinned dependencies. Idempotent: re-installs only
# when pyproject.toml changed since the last run. Safe to call before every command.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

PY=$(find_python || true)
if [ -z "$PY" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Python 3.11 from Debian packages" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3.11 python3.11-venv >/dev/null
    PY=$(find_python || true)
fi
[ -n "$PY" ] || { echo "bootstrap: Python 3.11 with venv is required" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
want=$(sha256sum pyproject.toml | cut -c1-64)
if [ "$(cat .venv/.sightline-installed 2>/dev/null || true)" != "$want" ]; then
    echo "bootstrap: installing dependencies into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    # torch first and exactly pinned: a looser requirement would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > .venv/.sightline-installed
fi
