#!/usr/bin/env bash
# 5. Distillation stage 2 for GENRE: starting from stage 1's student, match the meta-teacher's soft
#    labels at temperature T; the best model by GENRE's dev accuracy -> OUT_DIR/GENRE/meta_student_finetune/
cd "$(dirname "$0")" && source tools/common.sh

GENRE="${GENRE:-books}"
DATA_DIR="${DATA_DIR:-data/SENTI}"
OUT_DIR="${OUT_DIR:-out}"                                   # reads meta_teacher and GENRE/meta_student_pretrain
STAGE2_EPOCHS="${STAGE2_EPOCHS:-10}"
STAGE2_LR="${STAGE2_LR:-3e-5}"
TEMPERATURE="${TEMPERATURE:-2}"                             # softmax temperature T (a float)
BATCH_SIZE="${BATCH_SIZE:-16}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
EVAL_EVERY="${EVAL_EVERY:-50}"                              # dev evaluation every N steps (0: per epoch)
LOG_EVERY="${LOG_EVERY:-20}"
SEED="${SEED:-42}"
DEVICE="${DEVICE:-auto}"
COMPAT="${COMPAT:-none}"
NPROC="${NPROC:-1}"
SAVE_EVERY="${SAVE_EVERY:-50}"                              # a resumable state every N steps (rerun to resume)
RESTART="${RESTART:-0}"                                     # 1: throw away a saved state and start over

flags=(--save-every "$SAVE_EVERY")
[ "$RESTART" = 1 ] && flags+=(--restart)
DISTRIBUTED=1 run_metakd distill --stage second --genre "$GENRE" --data-dir "$DATA_DIR" --teacher "$OUT_DIR/meta_teacher" \
  --student "$OUT_DIR/$GENRE/meta_student_pretrain" --out "$OUT_DIR/$GENRE/meta_student_finetune" \
  --epochs "$STAGE2_EPOCHS" --lr "$STAGE2_LR" --temperature "$TEMPERATURE" --batch-size "$BATCH_SIZE" \
  --max-seq-length "$MAX_SEQ_LENGTH" --eval-every "$EVAL_EVERY" --log-every "$LOG_EVERY" --seed "$SEED" \
  --device "$DEVICE" --compat "$COMPAT" "${flags[@]}"
