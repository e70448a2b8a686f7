#!/usr/bin/env bash
# 5. Distillation stage 2 for GENRE: starting from stage 1's student, match the meta-teacher's soft
#    labels at temperature T; the best model by GENRE's dev accuracy -> OUT_DIR/GENRE/meta_student_finetune/
#    SKIP_STAGE1=1 starts from STUDENT_MODEL instead of stage 1's student. STUDENT_ALONE=1 is the baseline
#    without any teacher: STUDENT_MODEL fine-tuned on GENRE's labels (cross-entropy) for STAGE1_EPOCHS +
#    STAGE2_EPOCHS epochs, best by GENRE's dev accuracy -> OUT_DIR/GENRE/student_alone/
cd "$(dirname "$0")" && source tools/common.sh

RECIPE="${RECIPE:-paper}"                                   # a named set of defaults for the variables below (python -m metakd.recipes lists them)
use_recipe
GENRE="${GENRE:-books}"
TASK="${TASK:-senti}"                                       # senti | mnli | tsv: the same TASK as 1_get_data.sh
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"                      # data/SENTI, data/MNLI or data/TSV
OUT_DIR="${OUT_DIR:-out}"                                   # where the models and reports go
TEACHER_DIR="${TEACHER_DIR:-$OUT_DIR/meta_teacher}"         # the frozen teacher
STAGE1_DIR="${STAGE1_DIR:-$OUT_DIR/$GENRE/meta_student_pretrain}"  # stage 1's student (4_student_first.sh)
SKIP_STAGE1="${SKIP_STAGE1:-0}"                             # 1: start from STUDENT_MODEL (no stage 1)
STUDENT_ALONE="${STUDENT_ALONE:-0}"                         # 1: no teacher at all (the baseline)
TEACHER_MODEL="${TEACHER_MODEL:-models/bert-base-uncased}"  # the pretrained teacher STUDENT_FROM_TEACHER takes layers from
STUDENT_FROM_TEACHER="${STUDENT_FROM_TEACHER:-0}"           # k > 0: the student is k of TEACHER_MODEL's own layers (made once in OUT_DIR/students), not STUDENT_MODEL
pick_student
STUDENT_MODEL="${STUDENT_MODEL:-models/TinyBERT_General_4L_312D}"  # pretrained student (SKIP_STAGE1, STUDENT_ALONE)
STUDENT_DIR="${STUDENT_DIR:-}"                              # folder to write (default GENRE/meta_student_finetune or GENRE/student_alone)
STAGE1_EPOCHS="${STAGE1_EPOCHS:-10}"                        # STUDENT_ALONE trains STAGE1_EPOCHS + STAGE2_EPOCHS
STAGE2_EPOCHS="${STAGE2_EPOCHS:-10}"
STAGE2_LR="${STAGE2_LR:-3e-5}"
TEMPERATURE="${TEMPERATURE:-2}"                             # softmax temperature T (a float)
ALPHA="${ALPHA:-0}"                                         # hard labels: ALPHA * CE(y) + (1 - ALPHA) * soft term
T_SQUARED="${T_SQUARED:-0}"                                 # 1: the soft term times T^2
BATCH_SIZE="${BATCH_SIZE:-16}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
EVAL_EVERY="${EVAL_EVERY:-50}"                              # dev evaluation every N steps (0: per epoch)
LOG_EVERY="${LOG_EVERY:-20}"
SEED="${SEED:-42}"                                          # training seed (the data split has its own, SPLIT_SEED)
DEVICE="${DEVICE:-auto}"                                    # auto (CUDA when OneFlow sees a GPU) | cpu | cuda | cuda:N (GPU N)
CPU_KERNELS="${CPU_KERNELS:-}"                              # on CPU: numpy (faster) or oneflow (as on CUDA); empty: numpy, or METAKD_CPU_MATMUL's
COMPAT="${COMPAT:-none}"
NPROC="${NPROC:-1}"
SAVE_EVERY="${SAVE_EVERY:-50}"                              # a resumable state every N steps (rerun to resume)
RESTART="${RESTART:-0}"                                     # 1: throw away a saved state and start over

flags=(--save-every "$SAVE_EVERY")
[ "$RESTART" = 1 ] && flags+=(--restart)
if [ "$STUDENT_ALONE" = 1 ]; then
  [[ "$STAGE1_EPOCHS" =~ ^[0-9]+$ && "$STAGE2_EPOCHS" =~ ^[0-9]+$ ]] || {
    echo "error: 5_student_second.sh: STAGE1_EPOCHS=$STAGE1_EPOCHS, STAGE2_EPOCHS=$STAGE2_EPOCHS; STUDENT_ALONE needs whole numbers of epochs" >&2; exit 2; }
  make_student_from_teacher
  # The same fine-tuning as the teachers', on the student and GENRE's rows only: no teacher is loaded.
  DISTRIBUTED=1 run_metakd train_teacher --task "$TASK" --genre "$GENRE" --data-dir "$DATA_DIR" --model "$STUDENT_MODEL" \
    --out "${STUDENT_DIR:-$OUT_DIR/$GENRE/student_alone}" --no-sample-weights --no-domain-loss \
    --epochs "$((10#$STAGE1_EPOCHS + 10#$STAGE2_EPOCHS))" --lr "$STAGE2_LR" --batch-size "$BATCH_SIZE" \
    --max-seq-length "$MAX_SEQ_LENGTH" --eval-every "$EVAL_EVERY" --log-every "$LOG_EVERY" --seed "$SEED" \
    --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} --compat "$COMPAT" "${flags[@]}"
  exit
fi
if [ "$SKIP_STAGE1" = 1 ]; then  # checked here: distill cannot tell STUDENT_MODEL from a missing STAGE1_DIR
  make_student_from_teacher
  [ -e "$STUDENT_MODEL" ] || {
    echo "error: 5_student_second.sh: $STUDENT_MODEL: model folder not found; check STUDENT_MODEL (SKIP_STAGE1=1 starts from it)" >&2; exit 2; }
  STAGE1_DIR="$STUDENT_MODEL"
fi
[ "$T_SQUARED" = 1 ] && flags+=(--t-squared)
DISTRIBUTED=1 run_metakd distill --task "$TASK" --stage second --genre "$GENRE" --data-dir "$DATA_DIR" --teacher "$TEACHER_DIR" \
  --student "$STAGE1_DIR" --out "${STUDENT_DIR:-$OUT_DIR/$GENRE/meta_student_finetune}" \
  --epochs "$STAGE2_EPOCHS" --lr "$STAGE2_LR" --temperature "$TEMPERATURE" --alpha "$ALPHA" --batch-size "$BATCH_SIZE" \
  --max-seq-length "$MAX_SEQ_LENGTH" --eval-every "$EVAL_EVERY" --log-every "$LOG_EVERY" --seed "$SEED" \
  --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} --compat "$COMPAT" "${flags[@]}"
