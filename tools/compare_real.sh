#!/usr/bin/env bash
# The real comparison of docs/results.md: the real reviews and the ../shared/models pair on CPU
# (NPROC=2, global batch 16, epochs 1/3/3 as tools/real_run.sh), run in phases, most informative first.
# Resumable: rerun it (from the same commit) and finished cells are kept. RUN_DIR as in compare.sh.
# PHASES picks phases (default 1 5 6s 7s 2s 8 9s 2 3 4, the questions first; 6, the recipes at every seed, only when named): 1 Meta-KD vs the student alone and the meta-teacher;
# 2 plain KD from the meta-teacher and Meta-KD without stage 1; 3 BERT-mix, BERT-s and KD from them;
# 4 the other ablations; 5 COMPAT=easynlp Meta-KD on books (seed 42); 6 the recipes that might make the
# transfer work (hidden states only in stage 1, hard labels + T^2, a larger stage-2 rate and the student
# alone at that rate, a student made of the teacher's layers and that student alone); 6s: phase 6 on seed 42 only, the
# dev numbers that choose a recipe before its other seeds are spent; 2s: phase 2 on seed 42 only (no stage 1 is a recipe too);
# 7s: more recipes on seed 42 (no stage 1 with the student alone's epochs, soft only or with hard labels + T^2; T = 1);
# 8: the recipe dev chose (RECIPE=teacher_layers, the method metakd_teacher_layers) and that student alone, every seed;
# 9s: which stage lifts the made student: it without stage 1, stage 2 for both stages' epochs (seed 42, dev).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(realpath -m "${SHARED:-../shared}")"
export SOURCE="${SOURCE:-$SHARED/data/amazon_multidomain/sorted_data_acl}"
export TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/all-MiniLM-L6-v2}"
export STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/paraphrase-MiniLM-L3-v2}"
export DEVICE="${DEVICE:-cpu}" NPROC="${NPROC:-2}" BATCH_SIZE="${BATCH_SIZE:-8}" EVAL_EVERY="${EVAL_EVERY:-100}"
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}" STAGE1_EPOCHS="${STAGE1_EPOCHS:-3}" STAGE2_EPOCHS="${STAGE2_EPOCHS:-3}"
export RUN_DIR="${RUN_DIR:-out/compare_real}" SEEDS="${SEEDS:-42,43,44}"
[ -d docs/compare/cells ] && export CELLS_FROM="${CELLS_FROM:-docs/compare/cells}"  # cells earlier sessions committed
PHASES="${PHASES:-1 5 6s 7s 2s 8 9s 2 3 4}"  # the questions first: Meta-KD vs the student alone, EasyNLP's numerics, then why
for phase in $PHASES; do
  case "$phase" in
    1) METHODS=teacher_meta,metakd,student_alone bash compare.sh ;;
    2) METHODS=kd_meta,metakd_no_stage1 bash compare.sh ;;
    2s) METHODS=metakd_no_stage1,kd_meta SEEDS=42 bash compare.sh ;;
    7s) METHODS=metakd_no_stage1_hard,metakd_t1,metakd_no_stage1_full SEEDS=42 bash compare.sh ;;
    8) METHODS=metakd_teacher_layers,student_alone_teacher_layers bash compare.sh ;;
    9s) METHODS=metakd_teacher_layers_no_stage1_full SEEDS=42 bash compare.sh ;;
    3) METHODS=teacher_mix,kd_mix,teacher_single,kd_single bash compare.sh ;;
    4) METHODS=metakd_no_proto,metakd_no_expertise,metakd_no_domain_term,metakd_teacher_no_domain_loss bash compare.sh ;;
    5) METHODS=metakd_easynlp GENRES=books SEEDS=42 bash compare.sh ;;
    6|6s) [ "$phase" = 6s ] && seeds=42 || seeds="$SEEDS"
       METHODS=metakd_hidden_only,metakd_hard,metakd_lr1e-4,student_alone_lr1e-4,metakd_teacher_layers,student_alone_teacher_layers \
         SEEDS="$seeds" bash compare.sh ;;
    *) echo "error: tools/compare_real.sh: unknown phase $phase; PHASES is a list of 1-6, 2s, 6s, 7s, 8 and 9s" >&2; exit 2 ;;
  esac
done
