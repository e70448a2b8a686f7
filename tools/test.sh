#!/usr/bin/env bash
# Run the test suite (builds .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check metakd tests tools  # lint (pyproject.toml) before the tests
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
