#!/usr/bin/env bash
# 1. Get the Amazon multi-domain sentiment reviews and split them like the reference
#    (seed 11111; test 800 / dev 720 / train 6480): DATA_DIR/{train,dev,test}.tsv
# Every variable can be set from the environment: SOURCE=/path/to/sorted_data_acl bash 1_get_data.sh
cd "$(dirname "$0")" && source tools/common.sh

# Where the reviews come from: the archive's URL (downloaded with retries into CACHE_DIR), a local
# domain_sentiment_data.tar.gz, a local sorted_data_acl folder, or "synthetic" (a tiny generated
# dataset plus tiny random teacher/student BERTs in MODELS_DIR, for trying the pipeline out).
SOURCE="${SOURCE:-https://www.cs.jhu.edu/~mdredze/datasets/sentiment/domain_sentiment_data.tar.gz}"
DATA_DIR="${DATA_DIR:-data/SENTI}"      # output folder of the split files
CACHE_DIR="${CACHE_DIR:-cache}"         # downloads and extracted archives
MODELS_DIR="${MODELS_DIR:-models}"      # model folders (synthetic ones, or FETCH_MODELS)
# 1: also download the paper's pretrained pair (needs the internet): bert-base-uncased (teacher)
# and huawei-noah/TinyBERT_General_4L_312D (student), as Hugging Face folders in MODELS_DIR.
FETCH_MODELS="${FETCH_MODELS:-0}"
COMPAT="${COMPAT:-none}"                # easynlp: EasyNLP's text and split files, byte for byte
SYNTHETIC_SIZE="${SYNTHETIC_SIZE:-50}"    # synthetic only: reviews per domain and label

run_metakd get_data --source "$SOURCE" --out "$DATA_DIR" --cache-dir "$CACHE_DIR" --models-out "$MODELS_DIR" \
  --synthetic-size "$SYNTHETIC_SIZE" --compat "$COMPAT"
if [ "$FETCH_MODELS" = 1 ]; then
  run_metakd get_data --fetch-model bert-base-uncased --models-out "$MODELS_DIR" --cache-dir "$CACHE_DIR"
  run_metakd get_data --fetch-model huawei-noah/TinyBERT_General_4L_312D --models-out "$MODELS_DIR" --cache-dir "$CACHE_DIR"
fi
