#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (as root on Debian: docker.io,
# skopeo, busybox-static, Distribution for the benchmark, gcc for a syscall prober, debootstrap
# and docker-compose for the deployment tests; from PyPI:
# the project and its tools).
# Arguments go to pytest, e.g. `bash scripts/test.sh tests/api -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(docker.io skopeo busybox-static docker-registry postgresql iproute2 gcc libc6-dev libseccomp2
          debootstrap docker-compose)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${packages[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi
bash scripts/bootstrap.sh test,postgres,s3
.venv/bin/ruff check registry tests migrations
.venv/bin/mypy registry
exec .venv/bin/python -m pytest "$@"
