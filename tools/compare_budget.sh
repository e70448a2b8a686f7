#!/usr/bin/env bash
# The comparison at the numbered scripts' own budget: epochs 1 / 10 / 10 (teacher / stage 1 / stage 2,
# EasyNLP's examples/knowledge_distillation/metakd), the student alone for 20. Everything else as the
# 1/3/3 comparison of tools/compare_real.sh: the real reviews and the ../shared/models pair on CPU,
# NPROC=2, global batch 16, sequence 128, dev every 100 updates, seeds 42-44, all four genres.
# Published in docs/compare_10x10/ (bash tools/publish_compare.sh out/compare_10x10 docs/compare_10x10).
# PARTS picks the method groups, each at every genre and seed before the next starts:
#   answer    Meta-KD and the student alone (does the recipe beat fine-tuning the student alone?), and the
#             meta-teacher itself (the same 1-epoch teacher as the 1/3/3 comparison: a reproduction check)
#   kd_mix    plain two-stage KD from the BERT-mix teacher (the paper's own main comparison), and BERT-mix
#   recipe    RECIPE=teacher_layers (metakd_teacher_layers) and that student alone
# Resumable: rerun it from the same commit; cells in docs/compare_10x10/cells count as done.
# Variables (environment; defaults in brackets): PARTS [answer kd_mix recipe], SHARED [../shared], SOURCE,
# TEACHER_MODEL, STUDENT_MODEL [SHARED's reviews and model pair], RUN_DIR [out/compare_10x10], SEEDS [42,43,44],
# CELLS_FROM [docs/compare_10x10/cells], and the numbered scripts' (DEVICE [cpu], NPROC [2], BATCH_SIZE [8],
# EVAL_EVERY [100], TEACHER_EPOCHS [1], STAGE1_EPOCHS [10], STAGE2_EPOCHS [10], ...).
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed -E 's/^# ?//'; exit 0 ;;
  ?*) echo "error: tools/compare_budget.sh takes no arguments; set PARTS, RUN_DIR or SHARED in the environment" >&2
      exit 2 ;;
esac
cd "$(dirname "$0")/.."
SHARED="$(realpath -m "${SHARED:-../shared}")"
export SOURCE="${SOURCE:-$SHARED/data/amazon_multidomain/sorted_data_acl}"
export TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/all-MiniLM-L6-v2}"
export STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/paraphrase-MiniLM-L3-v2}"
export DEVICE="${DEVICE:-cpu}" NPROC="${NPROC:-2}" BATCH_SIZE="${BATCH_SIZE:-8}" EVAL_EVERY="${EVAL_EVERY:-100}"
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}" STAGE1_EPOCHS="${STAGE1_EPOCHS:-10}" STAGE2_EPOCHS="${STAGE2_EPOCHS:-10}"
export RUN_DIR="${RUN_DIR:-out/compare_10x10}" SEEDS="${SEEDS:-42,43,44}"
[ -d docs/compare_10x10/cells ] && export CELLS_FROM="${CELLS_FROM:-docs/compare_10x10/cells}"
PARTS="${PARTS:-answer kd_mix recipe}"
for group in $PARTS; do
  case "$group" in
    answer) METHODS=teacher_meta,metakd,student_alone bash compare.sh ;;
    kd_mix) METHODS=teacher_mix,kd_mix bash compare.sh ;;
    recipe) METHODS=metakd_teacher_layers,student_alone_teacher_layers bash compare.sh ;;
    *) echo "error: tools/compare_budget.sh: unknown group $group; PARTS is a list of answer, kd_mix and recipe" >&2
       exit 2 ;;
  esac
done
