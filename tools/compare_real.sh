#!/usr/bin/env bash
# The real comparison of docs/results.md at epochs 1/3/3 (teacher / stage 1 / stage 2, as tools/real_run.sh):
# the real reviews and the ../shared/models pair on CPU, NPROC=2, global batch 16, sequence 128, dev every
# 100 updates, seeds 42-44, all four genres. Resumable: rerun it (from the same commit) and finished cells are
# kept; cells published in docs/compare/cells count as done. Publish with bash tools/publish_compare.sh RUN_DIR.
#
#   PARTS="answer kd_meta" bash tools/compare_real.sh
#
# PARTS picks the method groups, run in the order given (default: every group but recipes, in the order
# below); "_dev" groups run seed 42 only, whose dev accuracy chooses a recipe before other seeds are spent:
#   answer                Meta-KD, the student alone and the meta-teacher (does Meta-KD pay off?)
#   easynlp               COMPAT=easynlp Meta-KD on books, seed 42
#   recipes_dev           recipes that might make the transfer work: hidden states only in stage 1, hard labels
#                         + T^2, a larger stage-2 rate (and the student alone at it), a student made of the
#                         teacher's layers (and that student alone)
#   recipes_more_dev      no stage 1 with both stages' epochs (soft only, or hard labels + T^2); T = 1
#   no_stage1_dev         Meta-KD without stage 1 and plain KD from the meta-teacher
#   recipe                the recipe dev chose (RECIPE=teacher_layers) and that student alone, every seed
#   recipe_no_stage1_dev  which stage lifts the made student: it without stage 1, stage 2 for both stages' epochs
#   kd_meta               plain two-stage KD from the meta-teacher and Meta-KD without stage 1, every seed
#   teachers              BERT-mix, BERT-s and plain KD from each
#   ablations             Meta-KD without the prototype weights, the expertise weights, the domain term, or the
#                         teacher's domain loss
#   recipes               recipes_dev at every seed (only when named)
# Variables (environment; defaults in brackets): PARTS, SHARED [../shared], SOURCE, TEACHER_MODEL, STUDENT_MODEL
# [SHARED's reviews and model pair], RUN_DIR [out/compare_real], SEEDS [42,43,44], CELLS_FROM
# [docs/compare/cells], and the numbered scripts' (DEVICE [cpu], NPROC [2], BATCH_SIZE [8], EVAL_EVERY [100],
# TEACHER_EPOCHS [1], STAGE1_EPOCHS [3], STAGE2_EPOCHS [3], ...).
source "$(dirname "$0")/tool_help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(realpath -m "${SHARED:-../shared}")"
export SOURCE="${SOURCE:-$SHARED/data/amazon_multidomain/sorted_data_acl}"
export TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/all-MiniLM-L6-v2}"
export STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/paraphrase-MiniLM-L3-v2}"
export DEVICE="${DEVICE:-cpu}" NPROC="${NPROC:-2}" BATCH_SIZE="${BATCH_SIZE:-8}" EVAL_EVERY="${EVAL_EVERY:-100}"
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}" STAGE1_EPOCHS="${STAGE1_EPOCHS:-3}" STAGE2_EPOCHS="${STAGE2_EPOCHS:-3}"
export RUN_DIR="${RUN_DIR:-out/compare_real}" SEEDS="${SEEDS:-42,43,44}"
[ -d docs/compare/cells ] && export CELLS_FROM="${CELLS_FROM:-docs/compare/cells}"  # the published cells: not recomputed
# the questions first (Meta-KD against the student alone, EasyNLP's numerics), then why
PARTS="${PARTS:-answer easynlp recipes_dev recipes_more_dev no_stage1_dev recipe recipe_no_stage1_dev kd_meta teachers ablations}"
KNOWN=" answer easynlp recipes_dev recipes_more_dev no_stage1_dev recipe recipe_no_stage1_dev kd_meta teachers ablations recipes "
for part in $PARTS; do  # checked before the first group: a misspelt one would fail hours in
  [[ "$KNOWN" == *" $part "* ]] || { echo "error: tools/compare_real.sh: unknown group $part; PARTS is a list of$KNOWN" >&2; exit 2; }
done
for part in $PARTS; do
  case "$part" in
    answer) METHODS=teacher_meta,metakd,student_alone bash compare.sh ;;
    easynlp) METHODS=metakd_easynlp GENRES=books SEEDS=42 bash compare.sh ;;
    recipes_dev|recipes) [ "$part" = recipes_dev ] && seeds=42 || seeds="$SEEDS"
       METHODS=metakd_hidden_only,metakd_hard,metakd_lr1e-4,student_alone_lr1e-4,metakd_teacher_layers,student_alone_teacher_layers \
         SEEDS="$seeds" bash compare.sh ;;
    recipes_more_dev) METHODS=metakd_no_stage1_hard,metakd_t1,metakd_no_stage1_full SEEDS=42 bash compare.sh ;;
    no_stage1_dev) METHODS=metakd_no_stage1,kd_meta SEEDS=42 bash compare.sh ;;
    recipe) METHODS=metakd_teacher_layers,student_alone_teacher_layers bash compare.sh ;;
    recipe_no_stage1_dev) METHODS=metakd_teacher_layers_no_stage1_full SEEDS=42 bash compare.sh ;;
    kd_meta) METHODS=kd_meta,metakd_no_stage1 bash compare.sh ;;
    teachers) METHODS=teacher_mix,kd_mix,teacher_single,kd_single bash compare.sh ;;
    ablations) METHODS=metakd_no_proto,metakd_no_expertise,metakd_no_domain_term,metakd_teacher_no_domain_loss bash compare.sh ;;
  esac
done
