#!/usr/bin/env bash
# Create or refresh .venv with Headwater and its development tools.
# Re-installs only when pyproject.toml changed (a stamp file records its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.headwater-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-${1:-dev}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ "${1:-dev}" = "dev" ]; then
    .venv/bin/python -m pip install --quiet -e ".[dev]"
  else
    .venv/bin/python -m pip install --quiet -e .
  fi
  echo "$want" > "$stamp"
fi
