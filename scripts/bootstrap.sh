#!/usr/bin/env bash
# Creates .venv and installs the project into it (with the given extras), on a fresh Debian
# machine with Python 3.11 too: as root it first installs python3-venv when venv is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
  else
    echo "python3 has no venv module: install python3-venv" >&2; exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)${extras:+-$extras}
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
