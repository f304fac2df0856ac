#!/usr/bin/env bash
# The whole test suite: set up .venv and the services the tests need, then run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k merge, or --soak for long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh dev
scripts/services.sh
exec .venv/bin/python -m pytest "$@"
