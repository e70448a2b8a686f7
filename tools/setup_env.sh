#!/usr/bin/env bash
# Build (or reuse) the project's Python environment in .venv/.
#
#   bash tools/setup_env.sh           # idempotent: a second run takes a few seconds
#   PYTHON=/path/to/python3.10 bash tools/setup_env.sh
#
# OneFlow 0.9.0, the only real OneFlow on PyPI, exists for CPython 3.7-3.10 only.
# The interpreter is taken from $PYTHON, else the first of python3.10/3.9/3.8 that really
# runs, else pyenv's versions folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQ="$ROOT/requirements.txt"
STAMP="$VENV/.requirements.sha256"

ok_python() {  # $1 = interpreter; true when it runs and is 3.8-3.10
  "$1" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 10) else 1)' >/dev/null 2>&1
}

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    if ok_python "$PYTHON"; then echo "$PYTHON"; return 0; fi
    echo "error: PYTHON=$PYTHON is not a working CPython 3.8-3.10 (OneFlow 0.9.0 needs one)." >&2
    return 1
  fi
  local c
  for c in python3.10 python3.9 python3.8; do
    if command -v "$c" >/dev/null 2>&1 && ok_python "$c"; then command -v "$c"; return 0; fi
  done
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
  for c in "$root"/versions/3.10*/bin/python "$root"/versions/3.9*/bin/python "$root"/versions/3.8*/bin/python; do
    if [ -x "$c" ] && ok_python "$c"; then echo "$c"; return 0; fi
  done
  cat >&2 <<'MSG'
error: no CPython 3.8-3.10 found (OneFlow 0.9.0 supports nothing newer).
  Install one, e.g. `pyenv install 3.10.13` or `apt install python3.10 python3.10-venv`,
  then rerun, or point to it: PYTHON=/path/to/python3.10 bash tools/setup_env.sh
MSG
  return 1
}

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && ok_python "$VENV/bin/python"; then
  exit 0  # up to date
fi

if [ ! -x "$VENV/bin/python" ] || ! ok_python "$VENV/bin/python"; then
  PY="$(find_python)"
  echo "setup_env: creating $VENV with $PY ($("$PY" -V 2>&1))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
echo "setup_env: installing requirements.txt (the first time downloads ~1.8 GB)" >&2
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet -r "$REQ"
"$VENV/bin/python" - <<'PY'
import os, sys
os.environ.setdefault("GLOG_minloglevel", "2")
import numpy, oneflow  # noqa: F401  the import fails when the CUDA libraries are missing
print(f"setup_env: ok (python {sys.version.split()[0]}, oneflow {oneflow.__version__}, numpy {numpy.__version__})", file=sys.stderr)
PY
echo "$want" > "$STAMP"
