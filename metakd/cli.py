"""Pieces shared by the ``python -m metakd.<stage>`` entry points: options, data, models."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

# The processed files' names, which the stages read as cli.TRAIN_FILE ... (data/tsv.py holds them with their schema)
from metakd.data.tsv import DEV_FILE, TEST_FILE, TRAIN_FILE  # noqa: F401
from metakd.features import Encoded, encode
from metakd.infra.errors import UserError



class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


# The numbered scripts' variables behind options whose name differs from the variable's
# (otherwise the variable is the option in capitals: --compat -> COMPAT, --batch-size -> BATCH_SIZE).
SCRIPT_VARIABLES = {
    "3_train_teacher.sh": {"--model": "TEACHER_MODEL", "--out": "TEACHER_DIR", "--epochs": "TEACHER_EPOCHS",
                           "--lr": "TEACHER_LR", "--genre": "TEACHER_GENRE"},
    "4_student_first.sh": {"--student": "STUDENT_MODEL", "--teacher": "TEACHER_DIR", "--out": "STAGE1_DIR",
                           "--epochs": "STAGE1_EPOCHS", "--lr": "STAGE1_LR"},
    "5_student_second.sh": {"--student": "STAGE1_DIR", "--teacher": "TEACHER_DIR", "--out": "STUDENT_DIR",
                            "--epochs": "STAGE2_EPOCHS", "--lr": "STAGE2_LR", "--model": "STUDENT_MODEL"},
    "2_process_data.sh": {"--teacher-model": "TEACHER_MODEL", "--batch-size": "EMBED_BATCH_SIZE"},
    "6_eval.sh": {"--out-root": "OUT_DIR", "--student": "STUDENT_DIR", "--teacher": "TEACHER_DIR"},
    "1_get_data.sh": {"--out": "DATA_DIR", "--models-out": "MODELS_DIR"},
}


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, exit 2, naming the script variable
    when a numbered script (``METAKD_SCRIPT``, set by tools/common.sh) passed the option; and
    negative numbers in exponent form (``-1e-3``) read as values, not as options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def parse_args(self, args=None, namespace=None):
        a = super().parse_args(args, namespace)
        if getattr(a, "cpu_kernels", None) is not None:  # the one place the choice is applied
            from metakd.cpu import set_kernels

            set_kernels(a.cpu_kernels)
        return a

    def error(self, message):
        script = os.environ.get("METAKD_SCRIPT")
        hint = f"see {self.prog} --help"
        if script:
            flag = next((w for w in re.findall(r"--[a-z0-9-]+", message)), None)
            if flag:
                var = SCRIPT_VARIABLES.get(script, {}).get(flag, flag[2:].upper().replace("-", "_"))
                hint = f"check {var} (bash {script} --help lists the variables)"
        self.exit(2, f"error: {script or self.prog}: {message}; {hint}\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return Parser(prog=prog, description=description, formatter_class=Formatter)


def check_batch_size(a: argparse.Namespace) -> None:
    """For the inference entry points (training checks it in TrainArgs.validate): one error line,
    exit 2, as every other bad input (argparse's own type errors print the usage too)."""
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {a.batch_size}")


def add_common(p: argparse.ArgumentParser, batch_size: int = 16) -> None:
    g = p.add_argument_group("common")
    g.add_argument("--task", default="senti", choices=["senti", "mnli", "tsv"],
                   help="dataset: senti (Amazon reviews), mnli (GLUE MNLI), tsv (your own data); mnli and tsv read "
                        "their labels and domains from --data-dir's task.json")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    g.add_argument("--compat", default="none", choices=["none", "easynlp"],
                   help="'easynlp' reproduces EasyNLP's numerics (docs/design.md section 3) for side-by-side checks")
    g.add_argument("--max-seq-length", type=int, default=128, help="tokens per input, [CLS]/[SEP] included")
    g.add_argument("--batch-size", type=int, default=batch_size, help="examples per step and process")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    g.add_argument("--cpu-kernels", choices=["numpy", "oneflow"],
                   default="oneflow" if os.environ.get("METAKD_CPU_MATMUL") == "oneflow" else "numpy",
                   help="on CPU: numpy (BLAS and numpy autograd Functions, faster) or oneflow (OneFlow's own kernels, "
                        "the code that runs on CUDA); the same function to float rounding")


def add_training(p: argparse.ArgumentParser, epochs: int, eval_every: int = 50) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (for the global batch)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-proportion", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--log-every", type=int, default=20, help="a log line every N steps")
    g.add_argument("--eval-every", type=int, default=eval_every, help="dev evaluation every N steps (0: end of each epoch)")
    g.add_argument("--save-every", type=int, default=50, help="a resumable state every N steps (0: never)")
    g.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: run all epochs)")
    g.add_argument("--restart", action="store_true", help="ignore a saved resumable state and start over")


def train_args(a: argparse.Namespace):
    from metakd.trainer import TrainArgs

    return TrainArgs(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                     warmup_proportion=a.warmup_proportion, max_grad_norm=a.max_grad_norm, seed=a.seed,
                     log_every=a.log_every, eval_every=a.eval_every, save_every=a.save_every,
                     max_steps=a.max_steps, resume=not a.restart,
                     adamw="huggingface" if getattr(a, "compat", "none") == "easynlp" else "pytorch")


def processor(task: str, data_dir: Optional[Path] = None):
    """The task's labels, domains and file readers (metakd.data.tasks.processor); ``data_dir``, the
    folder 1_get_data.sh wrote, is where mnli and tsv find their task.json."""
    from metakd.data.tasks import processor as task_processor

    return task_processor(task, data_dir)


def check_seq_length(max_seq_length: int, *configs) -> None:
    if max_seq_length < 3:
        raise UserError(f"--max-seq-length must be >= 3, got {max_seq_length}")
    for cfg in configs:
        if max_seq_length > cfg.max_position_embeddings:
            raise UserError(f"--max-seq-length {max_seq_length} exceeds the model's max_position_embeddings "
                            f"{cfg.max_position_embeddings}; lower it")


# The lowest prototype score (metakd.prototypes: a mean of two cosines). A slightly negative score is
# real: an example far from both prototypes (5 of the 6480 Amazon training rows with the shared teacher,
# down to -0.036); the teacher weighs its loss by it as the reference does, stage 1 by 1 + it >= 0.
PROTOTYPE_SCORE_MIN = -1.0


def read_standard(path: Path, proc, genre: Optional[str] = None, min_weight: Optional[float] = None) -> pd.DataFrame:
    """A standard TSV, checked, optionally filtered to one genre (which must have rows).

    ``min_weight``: the smallest sample weight the caller accepts (``PROTOTYPE_SCORE_MIN`` for a
    prototype score: a mean of two cosines, so in [-1, 1]); a smaller one is not a score."""
    path = Path(path)
    if not path.exists():
        raise UserError("file not found; run the earlier pipeline scripts first (2_process_data.sh writes it)", path)
    df = proc.read_standard(path)
    unknown = sorted(set(df["domain"]) - set(proc.domains))
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r}; this task's domains are {', '.join(proc.domains)}", path)
    if min_weight is not None and len(df) and df["weight"].min() < min_weight:
        row = int((df["weight"].to_numpy() < min_weight).argmax())  # the first one
        raise UserError(f"sample weight {df['weight'][row]!r} is below {min_weight:g}, so it is not a prototype score "
                        "(a mean of two cosines, in [-1, 1]); correct the weight column (2_process_data.sh writes it)",
                        path, line=row + 2)  # line 1 is the header; the reader refuses blank lines
    if genre is not None:
        check_genre(genre, proc)
        df = df[df["domain"] == genre].reset_index(drop=True)
        if len(df) == 0:
            raise UserError(f"no rows of genre {genre!r}; the genres present are {', '.join(sorted(set(proc.read_standard(path)['domain'])))}", path)
    return df


def check_genre(genre: str, proc) -> None:
    if genre not in proc.domains:
        raise UserError(f"unknown GENRE {genre!r}; choose one of {', '.join(proc.domains)}")


def encode_split(df: pd.DataFrame, tokenizer, proc, max_length: int, compat: str, training: bool, source: Path) -> Encoded:
    """Encode with the input layout of the chosen numerics (docs/design.md section 3)."""
    mode = "data" if compat == "none" else ("none-pair" if training else "empty-pair")
    return encode(df, tokenizer, proc.labels, proc.domains, max_length, text_b_mode=mode, source=str(source))


def load_tokenizer(folder: Path):
    from metakd.tokenization import BertTokenizer

    return BertTokenizer.from_pretrained(folder)


def print_table(rows: Sequence[dict], columns: Sequence[str], file=sys.stdout) -> None:
    """A plain aligned text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)
