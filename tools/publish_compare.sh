#!/usr/bin/env bash
# Publish a comparison run: every finished cell's evaluation (small, self-contained; a later run takes them
# with CELLS_FROM) into DEST/cells, the wall times and commits merged with what DEST holds, and the report
# (results.csv, results.md, paired.json, accuracy.png, curves.png, paired.png) written from DEST's cells.
# Models and logs stay in the run dir; paths are published relative to the checkout.
#   bash tools/publish_compare.sh [RUN_DIR [DEST]]    (default out/compare_real docs/compare)
#   bash tools/publish_compare.sh out/compare_10x10 docs/compare_10x10
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed -E 's/^# ?//'; exit 0 ;; esac
cd "$(dirname "$0")/.."
RUN_DIR="${1:-out/compare_real}"
DEST="${2:-docs/compare}"
[ -f "$RUN_DIR/config.json" ] || { echo "error: $RUN_DIR: no config.json; run the comparison first (tools/compare_real.sh)" >&2; exit 2; }
PY="${METAKD_PYTHON:-.venv/bin/python}"
"$PY" -m metakd.compare --run-dir "$RUN_DIR" --publish "$DEST"
ls -la "$DEST"
