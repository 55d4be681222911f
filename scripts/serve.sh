#!/usr/bin/env bash
# Starts the registry on its embedded defaults: 127.0.0.1:5000, blobs and SQLite under ./data.
# Any arguments go to `registry serve` (see `registry serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/registry serve "$@"
