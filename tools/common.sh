# Sourced by the numbered scripts: builds/reuses .venv and defines `run_metakd MODULE ARGS...`.
# Not meant to be run on its own.
set -euo pipefail
# `bash N_script.sh --help`: the script's header, its variables with their defaults and, for the scripts
# that run under OneFlow's launcher, the launcher's variables; nothing is run.
case "${1:-}" in
  -h|--help)
    sed -n '2,/^cd /p' "$0" | grep '^#' | sed -E 's/^# ?//'
    echo
    example="$(grep -Eo '^(GENRE|TASK)=' "$0" | head -1 | tr -d = || true)"
    case "$example" in GENRE) example="GENRE=dvd" ;; TASK) example="TASK=mnli" ;;
      *) example="$(grep -Eo '^[A-Z_0-9]+=' "$0" | head -1)..." ;; esac
    echo "Variables (each can be set in the environment, e.g. $example bash $(basename "$0")):"
    grep -E '^[A-Z_0-9]+="\$\{[A-Z_0-9]+:-' "$0" \
      | sed -E 's/^([A-Z_0-9]+)="\$\{[A-Z_0-9]+:-(.*)\}"[[:space:]]*(#[[:space:]]*)?(.*)$/  \1=\2  \4/'
    if grep -q '^DISTRIBUTED=1 run_metakd\|[[:space:]]DISTRIBUTED=1 run_metakd' "$0"; then
      echo
      echo "Several processes or machines (NPROC > 1 or NNODES > 1 start OneFlow's launcher; the global batch is"
      echo "BATCH_SIZE x NPROC x NNODES; run the same command on every machine, each with its NODE_RANK):"
      echo "  NNODES=1  machines taking part"
      echo "  NODE_RANK=0  this machine's rank, 0 .. NNODES-1"
      echo "  MASTER_ADDR=127.0.0.1  the address of the machine with NODE_RANK=0"
      echo "  MASTER_PORT=29500  a free TCP port on that machine"
    fi
    echo
    echo "Environment:"
    echo "  METAKD_PYTHON=  the Python to run (empty: .venv/bin/python, built or reused by tools/setup_env.sh)"
    echo "  GLOG_minloglevel=2  OneFlow's log level (0 also shows its info lines)"
    echo "  METAKD_TF32=0  1: let CUDA multiply float32 matrices in TF32 (faster on Ampere and newer, less exact)"
    echo "  METAKD_DEBUG=0  1: a Python traceback after an error line"
    exit 0 ;;
  ?*) echo "error: $(basename "$0") takes no arguments; set its variables in the environment (see --help)" >&2; exit 2 ;;
esac
METAKD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${METAKD_PYTHON:-}" ]; then
  bash "$METAKD_ROOT/tools/setup_env.sh"
  METAKD_PYTHON="$METAKD_ROOT/.venv/bin/python"
fi
export PYTHONPATH="$METAKD_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export METAKD_SCRIPT="$(basename "$0")"  # names the script and its variables in option errors
export GLOG_minloglevel="${GLOG_minloglevel:-2}"

# run_metakd MODULE ARGS...: one process, or NPROC processes with OneFlow's launcher (training
# stages pass DISTRIBUTED=1). Multi-machine: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.
run_metakd() {
  local module="$1"; shift
  local v
  for v in NPROC NNODES; do  # checked before any work: bash would read "abc" or "1.5" as 0 or fail later
    if [ -n "${!v:-}" ] && ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
      echo "error: $(basename "$0"): $v=${!v}; it must be a whole number >= 1" >&2; exit 2
    fi
  done
  if [ "${DISTRIBUTED:-0}" = 1 ] && { [ "${NPROC:-1}" -gt 1 ] || [ "${NNODES:-1}" -gt 1 ]; }; then
    "$METAKD_PYTHON" -m metakd.launch --nproc_per_node "${NPROC:-1}" \
      --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
      --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
      -m "metakd.$module" "$@"
  else
    "$METAKD_PYTHON" -m "metakd.$module" "$@"
  fi
}

# use_recipe: RECIPE's variables (metakd/recipes.py) become the defaults of those the environment
# leaves unset; called by 4_student_first.sh and 5_student_second.sh before their variables.
use_recipe() {
  local defaults
  defaults="$("$METAKD_PYTHON" -m metakd.recipes --shell "${RECIPE:-paper}")" || exit 2
  eval "$defaults"
}

# pick_student: with STUDENT_FROM_TEACHER=k (> 0), STUDENT_MODEL becomes the k-layer student made of
# TEACHER_MODEL's own layers, OUT_DIR/students/<teacher folder>_<k>L (make_student_from_teacher makes it
# once); called before STUDENT_MODEL's default, so that a STUDENT_MODEL of the user's is not overridden.
pick_student() {
  local k="${STUDENT_FROM_TEACHER:-0}"
  if ! [[ "$k" =~ ^[0-9]+$ ]]; then
    echo "error: $(basename "$0"): STUDENT_FROM_TEACHER=$k; it must be 0 (use STUDENT_MODEL) or a number of student layers" >&2; exit 2
  fi
  [ "$((10#$k))" = 0 ] && return 0
  if [ -n "${STUDENT_MODEL:-}" ]; then
    echo "error: $(basename "$0"): STUDENT_MODEL=$STUDENT_MODEL and STUDENT_FROM_TEACHER=$k both choose the student; set STUDENT_FROM_TEACHER=0 to use STUDENT_MODEL, or unset STUDENT_MODEL" >&2; exit 2
  fi
  STUDENT_MODEL="$OUT_DIR/students/$(basename "$TEACHER_MODEL")_$((10#$k))L"
}

# make_student_from_teacher: makes (or reuses, if made from the same teacher and layers) the student
# pick_student chose; nothing without STUDENT_FROM_TEACHER.
make_student_from_teacher() {
  local k="${STUDENT_FROM_TEACHER:-0}"
  [ "$((10#$k))" = 0 ] && return 0
  "$METAKD_PYTHON" -m metakd.make_student --teacher "$TEACHER_MODEL" --num-layers "$((10#$k))" \
    --out "$STUDENT_MODEL" --reuse || exit 2
}
