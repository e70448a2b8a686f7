#!/usr/bin/env bash
# 4. Distillation stage 1 for GENRE: the student learns the meta-teacher's attention, hidden states and
#    domain representation, each example weighted by (1 + prototype) x the teacher's domain expertise
#    -> OUT_DIR/GENRE/meta_student_pretrain/
#    Baselines: PLAIN_KD=1 is TinyBERT-style KD (every weight 1, no domain term), from any TEACHER_DIR;
#    USE_PROTOTYPE_WEIGHTS / USE_EXPERTISE_WEIGHTS / USE_DOMAIN_TERM=0 switch off one ingredient each.
cd "$(dirname "$0")" && source tools/common.sh

RECIPE="${RECIPE:-paper}"                                   # a named set of defaults for the variables below (python -m metakd.recipes lists them)
use_recipe
GENRE="${GENRE:-books}"                                     # target domain: books | dvd | electronics | kitchen (mnli: fiction | government | slate | telephone | travel; tsv: a domain of your data)
TASK="${TASK:-senti}"                                       # senti | mnli | tsv: the same TASK as 1_get_data.sh
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"                      # data/SENTI, data/MNLI or data/TSV
OUT_DIR="${OUT_DIR:-out}"                                   # where the models and reports go
TEACHER_DIR="${TEACHER_DIR:-$OUT_DIR/meta_teacher}"         # the frozen teacher (3_train_teacher.sh)
STAGE1_DIR="${STAGE1_DIR:-$OUT_DIR/$GENRE/meta_student_pretrain}"  # the checkpoint folder to write
TEACHER_MODEL="${TEACHER_MODEL:-models/bert-base-uncased}"  # the pretrained teacher STUDENT_FROM_TEACHER takes layers from
STUDENT_FROM_TEACHER="${STUDENT_FROM_TEACHER:-0}"           # k > 0: the student is k of TEACHER_MODEL's own layers (made once in OUT_DIR/students), not STUDENT_MODEL
pick_student
STUDENT_MODEL="${STUDENT_MODEL:-models/TinyBERT_General_4L_312D}"  # pretrained student BERT folder
STAGE1_EPOCHS="${STAGE1_EPOCHS:-10}"
STAGE1_LR="${STAGE1_LR:-3e-5}"
BATCH_SIZE="${BATCH_SIZE:-16}"                              # per process; global batch = BATCH_SIZE x NPROC
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
DOMAIN_LOSS_WEIGHT="${DOMAIN_LOSS_WEIGHT:-0.5}"             # weight of the domain-representation term
USE_PROTOTYPE_WEIGHTS="${USE_PROTOTYPE_WEIGHTS:-1}"         # 1: weight (1 + prototype score); 0: 1
USE_EXPERTISE_WEIGHTS="${USE_EXPERTISE_WEIGHTS:-1}"         # 1: times the teacher's domain expertise; 0: 1
USE_DOMAIN_TERM="${USE_DOMAIN_TERM:-1}"                     # 1: the domain-representation MSE; 0: none
USE_ATTENTION_TERM="${USE_ATTENTION_TERM:-1}"               # 1: the attention-score MSE; 0: hidden states only
SKIP_STAGE1="${SKIP_STAGE1:-0}"                             # 1: no stage 1 (5_student_second.sh starts from STUDENT_MODEL)
PLAIN_KD="${PLAIN_KD:-0}"                                   # 1: all three ingredients off (plain two-stage KD)
TEACHER_CACHE_GB="${TEACHER_CACHE_GB:-4}"                   # memory for the frozen teacher's targets (computed once); 0: none
LOG_EVERY="${LOG_EVERY:-20}"
SEED="${SEED:-42}"                                          # training seed (the data split has its own, SPLIT_SEED)
DEVICE="${DEVICE:-auto}"                                    # auto (CUDA when OneFlow sees a GPU) | cpu | cuda | cuda:N (GPU N)
CPU_KERNELS="${CPU_KERNELS:-}"                              # on CPU: numpy (faster) or oneflow (as on CUDA); empty: numpy, or METAKD_CPU_MATMUL's
COMPAT="${COMPAT:-none}"
NPROC="${NPROC:-1}"
SAVE_EVERY="${SAVE_EVERY:-50}"                              # a resumable state every N steps (rerun to resume)
RESTART="${RESTART:-0}"                                     # 1: throw away a saved state and start over

if [ "$SKIP_STAGE1" = 1 ]; then
  echo "4_student_first.sh: SKIP_STAGE1=1 (RECIPE=$RECIPE): no stage 1; 5_student_second.sh starts from STUDENT_MODEL" >&2
  exit 0
fi
flags=(--save-every "$SAVE_EVERY" --teacher-cache-gb "$TEACHER_CACHE_GB")
[ "$RESTART" = 1 ] && flags+=(--restart)
[ "$USE_PROTOTYPE_WEIGHTS" = 1 ] || flags+=(--no-prototype-weights)
[ "$USE_EXPERTISE_WEIGHTS" = 1 ] || flags+=(--no-expertise-weights)
[ "$USE_DOMAIN_TERM" = 1 ] || flags+=(--no-domain-term)
[ "$USE_ATTENTION_TERM" = 1 ] || flags+=(--no-attention-term)
[ "$PLAIN_KD" = 1 ] && flags+=(--plain-kd)
make_student_from_teacher
DISTRIBUTED=1 run_metakd distill --task "$TASK" --stage first --genre "$GENRE" --data-dir "$DATA_DIR" --teacher "$TEACHER_DIR" \
  --student "$STUDENT_MODEL" --out "$STAGE1_DIR" --epochs "$STAGE1_EPOCHS" --lr "$STAGE1_LR" \
  --batch-size "$BATCH_SIZE" --max-seq-length "$MAX_SEQ_LENGTH" --domain-loss-weight "$DOMAIN_LOSS_WEIGHT" \
  --log-every "$LOG_EVERY" --seed "$SEED" --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} --compat "$COMPAT" "${flags[@]}"
