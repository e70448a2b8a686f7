"""Classify new text with a trained model folder (a distilled student, or a teacher).

    python -m metakd.predict --model out/books/meta_student_finetune --input reviews.txt
    echo "A wonderful, moving book." | python -m metakd.predict --model out/books/meta_student_finetune
    python -m metakd.predict --model M --input new.csv --text-column review --output pred.jsonl

Input: a text file with one text per line, a CSV/TSV with a header (``--text-column``, and
``--text-b-column`` for sentence pairs), or standard input (one text per line). Output, in input
order: CSV (``row,label,prob_<label>...``) or JSON lines (``--format jsonl``, or an output file
ending in ``.jsonl``), to standard output or ``--output`` (written whole or not at all). The
tokenizer, the maximum length and the numerics are the ones the model was trained with (from its
``config.json``); batches are length-bucketed; a progress bar on standard error for large inputs.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from metakd import cli
from metakd.data.tsv import decode
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError

TEXT_COLUMNS = ("text", "text_a", "review", "sentence", "sentence1")


def build_parser():
    p = cli.parser("python -m metakd.predict", __doc__)
    p.add_argument("--model", type=Path, required=True, help="a metakd model folder (any stage's output)")
    p.add_argument("--input", default="-", help="a .txt (one text per line), .csv or .tsv file; '-' = standard input")
    p.add_argument("--text-column", default=None,
                   help=f"CSV/TSV: the text column (default: the first of {', '.join(TEXT_COLUMNS)})")
    p.add_argument("--text-b-column", default=None, help="CSV/TSV: a second text (sentence pairs)")
    p.add_argument("--output", default="-", help="file to write ('-' = standard output)")
    p.add_argument("--format", choices=["csv", "jsonl"], default=None,
                   help="default: jsonl for an output ending in .jsonl/.json, else csv")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true")
    return p


def read_texts(source: str, text_column: Optional[str] = None,
               text_b_column: Optional[str] = None) -> Tuple[List[str], Optional[List[str]]]:
    """The texts (and second texts) of the input, in order."""
    import pandas as pd

    if source == "-":
        raw, where = sys.stdin.buffer.read(), "<stdin>"
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError("input file not found" if not path.exists() else "not a file", path)
        raw, where = path.read_bytes(), str(path)
    if b"\x00" in raw[:4096]:
        raise UserError("binary data, not text; give a .txt, .csv or .tsv file", where)
    text = decode(raw, where)  # the one rule for every file metakd reads: UTF-8, a leading BOM dropped
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix in (".csv", ".tsv"):
        try:
            df = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise UserError(f"cannot read it as {suffix[1:].upper()}: {str(e).strip()}", where) from None
        col = text_column or next((c for c in TEXT_COLUMNS if c in df.columns), None)
        if col is None or col not in df.columns:
            raise UserError(f"no text column {col or ''} (columns: {', '.join(map(str, df.columns))}); "
                            "name it with --text-column", where)
        if text_b_column is not None and text_b_column not in df.columns:
            raise UserError(f"no column {text_b_column!r} (columns: {', '.join(map(str, df.columns))})", where)
        texts = df[col].tolist()
        texts_b = df[text_b_column].tolist() if text_b_column else None
        first_line = 2  # after the header
    else:
        if text_column or text_b_column:
            raise UserError("--text-column/--text-b-column apply to .csv/.tsv input only", where)
        texts = text.split("\n")
        if texts and texts[-1] == "":
            texts.pop()  # the final newline
        texts = [t[:-1] if t.endswith("\r") else t for t in texts]
        texts_b = None
        first_line = 1
    if not texts:
        raise UserError("no texts to classify", where)
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"empty text (line {i + first_line}); remove the line", where)
    return texts, texts_b


def write_predictions(out: str, fmt: str, labels: List[str], probs: np.ndarray) -> None:
    from metakd.infra.fileio import atomic_open

    pred = probs.argmax(axis=1)
    lines = []
    if fmt == "csv":
        lines.append(",".join(["row", "label"] + [f"prob_{lab}" for lab in labels]))
        lines += [",".join([str(i), labels[k]] + [f"{p:.6f}" for p in row]) for i, (k, row) in enumerate(zip(pred, probs))]
    else:
        lines += [json.dumps({"row": i, "label": labels[k], "probabilities": {lab: round(float(p), 6)
                                                                         for lab, p in zip(labels, row)}})
                  for i, (k, row) in enumerate(zip(pred, probs))]
    text = "\n".join(lines) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        with atomic_open(out) as f:
            f.write(text)


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cli.check_batch_size(a)
    fmt = a.format or ("jsonl" if a.output != "-" and Path(a.output).suffix.lower() in (".jsonl", ".json") else "csv")
    if a.output != "-" and Path(a.output).is_dir():
        raise UserError("is a folder; give a file name for the predictions", a.output)
    from metakd.checkpoint import check_model_folder, read_metakd_info

    if not Path(a.model).exists():  # (checkpoint's own message is about pretrained inputs: FETCH_MODELS)
        raise UserError("model folder not found; give a folder a training script wrote, e.g. "
                        "OUT_DIR/GENRE/meta_student_finetune (after the quick start: "
                        "out/synthetic/books/meta_student_finetune)", a.model)
    check_model_folder(a.model, metakd=True)
    info = read_metakd_info(a.model)
    labels = [str(x) for x in info.get("labels", [])]
    if len(labels) < 2:
        raise UserError("the checkpoint names no labels; it is not a classifier written by metakd", a.model)
    texts, texts_b = read_texts(a.input, a.text_column, a.text_b_column)

    from metakd.evaluation import predict_logits
    from metakd.features import Encoded
    from metakd.meta_model import load_meta_checkpoint
    from metakd.runtime import resolve_device

    device = resolve_device(a.device)
    model, _ = load_meta_checkpoint(a.model, verbose=False)
    model = model.to(device)
    tok = cli.load_tokenizer(a.model)
    compat = info.get("compat", "none")
    if compat == "easynlp":  # EasyNLP's evaluation input: [CLS] a [SEP] (b) [SEP]
        texts_b = texts_b or [""] * len(texts)
    enc = tok(texts, texts_b, max_length=int(info.get("max_seq_length", 128)))
    n = len(texts)
    data = Encoded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   token_type_ids=enc["token_type_ids"], labels=np.zeros(n, np.int64),
                   domains=np.zeros(n, np.int64), weights=np.zeros(n, np.float32), guids=[str(i) for i in range(n)])
    logits = predict_logits(model, data, a.batch_size, device, compat=compat,
                            progress=not a.no_progress and n >= 1000, desc="predict")
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    write_predictions(a.output, fmt, labels, probs)
    if a.output != "-":
        print(f"{n} predictions written to {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
