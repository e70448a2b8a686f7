#!/usr/bin/env bash
# 1. Get the data and split it: DATA_DIR/{train,dev,test}.tsv (TASK=mnli and tsv also write task.json,
#    the labels and domains every later script uses).
#    TASK=senti: the Amazon multi-domain sentiment reviews, split like the reference
#    (seed 11111; test 800 / dev 720 / train 6480).
#    TASK=mnli: GLUE's MNLI, five genres of sentence pairs; dev = a stratified 10% of train.tsv by
#    genre x label (SPLIT_SEED), test = dev_matched.tsv; DATA_PORTION keeps a stratified fraction.
#    TASK=tsv: your own CSV/TSV (text, optional second text, label, domain columns): one file split
#    stratified by domain x label (SOURCE), or your TRAIN_FILE, DEV_FILE and TEST_FILE.
# Every variable can be set from the environment: SOURCE=/path/to/sorted_data_acl bash 1_get_data.sh
cd "$(dirname "$0")" && source tools/common.sh

TASK="${TASK:-senti}"                   # senti | mnli | tsv
# Where the data comes from; empty: the task's public archive (senti: the Amazon reviews' URL; mnli:
# https://dl.fbaipublicfiles.com/glue/data/MNLI.zip), downloaded with retries into CACHE_DIR.
# senti: a URL, a local domain_sentiment_data.tar.gz, a local sorted_data_acl folder, or "synthetic" (a
# tiny generated dataset plus tiny random teacher/student BERTs in MODELS_DIR, for trying the pipeline out).
# mnli: a URL, a local MNLI.zip, or a folder with train.tsv and dev_matched.tsv. tsv: your one data file.
SOURCE="${SOURCE:-}"                    # empty: the task's public archive (tsv: required, or the three files)
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"  # output folder of the split files: data/SENTI, data/MNLI or data/TSV
CACHE_DIR="${CACHE_DIR:-cache}"         # downloads and extracted archives
MODELS_DIR="${MODELS_DIR:-models}"      # model folders (synthetic ones, or FETCH_MODELS)
# 1: also download the paper's pretrained pair (needs the internet): bert-base-uncased (teacher)
# and huawei-noah/TinyBERT_General_4L_312D (student), as Hugging Face folders in MODELS_DIR.
FETCH_MODELS="${FETCH_MODELS:-0}"       # 1: download the paper's pretrained pair too
COMPAT="${COMPAT:-none}"                # easynlp: EasyNLP's text and split files, byte for byte (senti)
SYNTHETIC_SIZE="${SYNTHETIC_SIZE:-50}"    # synthetic only: reviews per domain and label
# mnli and tsv:
DATA_PORTION="${DATA_PORTION:-1}"       # keep this stratified fraction of train and of dev (test stays whole)
SPLIT_SEED="${SPLIT_SEED:-11111}"       # seed of the split and of DATA_PORTION (senti: always 11111)
# tsv: given files instead of SOURCE (all three), the column names, the split of one file.
TRAIN_FILE="${TRAIN_FILE:-}"            # tsv: your training rows (with DEV_FILE, TEST_FILE; instead of SOURCE)
DEV_FILE="${DEV_FILE:-}"                # tsv: your dev rows (model selection)
TEST_FILE="${TEST_FILE:-}"              # tsv: your test rows (6_eval.sh)
TEXT_COLUMN="${TEXT_COLUMN:-text}"      # the text
TEXT_B_COLUMN="${TEXT_B_COLUMN:-}"      # a second text (sentence pairs); empty: none
LABEL_COLUMN="${LABEL_COLUMN:-label}"   # the class
DOMAIN_COLUMN="${DOMAIN_COLUMN:-domain}"  # the domain (product, shop, app...): a GENRE of scripts 4-6
DEV_FRACTION="${DEV_FRACTION:-0.1}"     # one file: share of each domain x label for dev
TEST_FRACTION="${TEST_FRACTION:-0.1}"   # one file: share of each domain x label for test

flags=()
[ -n "$SOURCE" ] && flags+=(--source "$SOURCE")
[ -n "$TRAIN_FILE" ] && flags+=(--train-file "$TRAIN_FILE")
[ -n "$DEV_FILE" ] && flags+=(--dev-file "$DEV_FILE")
[ -n "$TEST_FILE" ] && flags+=(--test-file "$TEST_FILE")
run_metakd get_data --task "$TASK" --out "$DATA_DIR" --cache-dir "$CACHE_DIR" --models-out "$MODELS_DIR" \
  --synthetic-size "$SYNTHETIC_SIZE" --compat "$COMPAT" --data-portion "$DATA_PORTION" --split-seed "$SPLIT_SEED" \
  --text-column "$TEXT_COLUMN" --text-b-column "$TEXT_B_COLUMN" --label-column "$LABEL_COLUMN" \
  --domain-column "$DOMAIN_COLUMN" --dev-fraction "$DEV_FRACTION" --test-fraction "$TEST_FRACTION" "${flags[@]}"
if [ "$FETCH_MODELS" = 1 ]; then
  run_metakd get_data --fetch-model bert-base-uncased --models-out "$MODELS_DIR" --cache-dir "$CACHE_DIR"
  run_metakd get_data --fetch-model huawei-noah/TinyBERT_General_4L_312D --models-out "$MODELS_DIR" --cache-dir "$CACHE_DIR"
fi
