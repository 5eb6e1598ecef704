#!/usr/bin/env bash
# The test command: set up everything a fresh machine needs, then lint, type-check and test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_images.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
# Browser tests drive Debian's Chromium through its chromedriver (no browser download).
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_packages+=(chromium-driver)
if [ ${#need_packages[@]} -gt 0 ]; then
    echo "test: installing ${need_packages[*]} from Debian packages" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

scripts/bootstrap.sh

# Tests never reach the network: models come from fixtures, not the hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
.venv/bin/python -m pytest "$@"
