"""The files passed between stages, in one place: their names, schemas, reader and writer, and task.json.

Every file metakd writes for a later stage (and reads back) is TAB-separated, UTF-8, one header
line, never quoted (``csv.QUOTE_NONE`` without an escape character, so no field may hold a TAB,
newline, carriage return or NUL). Three schemas:

* the Amazon split files ``train.tsv``, ``dev.tsv``, ``test.tsv``: ``review domain sentiment``
  (:mod:`metakd.data.senti` writes them);
* the split files of the other tasks (mnli, tsv): ``text_a text_b label domain``
  (``text_b`` empty for single texts; :func:`write_pair_split`);
* the "standard" schema of the processed files (``STAGE_FILES``: ``train_with_weights.tsv``,
  ``dev_standard.tsv``, ``test_standard.tsv``, written by 2_process_data.sh):
  ``guid text_a text_b label domain weight``, ``weight`` a float written with ``repr``.

``task.json`` beside the split files of mnli and tsv names the task, its labels and domains in id
order, and how the split was made; every later stage reads labels and domains from it (and stores
them in each checkpoint's ``config.json``), so all stages agree. ``senti`` writes no ``task.json``.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_open, read_json_object

PathLike = Union[str, os.PathLike]

SPLITS: Tuple[str, ...] = ("train", "dev", "test")
# The processed files 2_process_data.sh writes into DATA_DIR (standard schema), read by every later stage.
TRAIN_FILE = "train_with_weights.tsv"
DEV_FILE = "dev_standard.tsv"
TEST_FILE = "test_standard.tsv"
STAGE_FILES: Dict[str, str] = {"train": TRAIN_FILE, "dev": DEV_FILE, "test": TEST_FILE}
SPLIT_COLUMNS: Tuple[str, ...] = ("review", "domain", "sentiment")  # senti's split files
STANDARD_COLUMNS: Tuple[str, ...] = ("guid", "text_a", "text_b", "label", "domain", "weight")
PAIR_SPLIT_COLUMNS: Tuple[str, ...] = ("text_a", "text_b", "label", "domain")
TASKS = ("senti", "mnli", "tsv")
TASK_FILE = "task.json"
# Folder-name rules for a domain: it becomes OUT_DIR/<domain>/ and a GENRE value.
RESERVED_DOMAINS = ("all", ".", "..")
# Characters that would break a TAB-separated line (pandas also cuts a field at a NUL).
FORBIDDEN = {"\t": "a TAB", "\n": "a newline", "\r": "a carriage return", "\x00": "a NUL"}


def split_file(data_dir: PathLike, split: str) -> Path:
    """``DATA_DIR/<split>.tsv``, the split file 1_get_data.sh writes."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return Path(data_dir) / f"{split}.tsv"


# ------------------------------------------------------------------------------ reading and writing

def check_field(value: object, column: str, path: PathLike, line: int) -> str:
    if not isinstance(value, str):
        raise UserError(f"column {column!r} must be text, got {type(value).__name__} {value!r}",
                        path=path, line=line)
    for ch, what in FORBIDDEN.items():
        if ch in value:
            raise UserError(f"column {column!r} contains {what}, which a TSV field cannot hold "
                            "(normalise the text first)", path=path, line=line)
    return value


def write_tsv(rows: Iterable[Sequence[str]], columns: Sequence[str], path: PathLike) -> None:
    """Fields joined by TABs, one row a line: csv.QUOTE_NONE without an escape character."""
    with atomic_open(path) as f:
        f.write("\t".join(columns) + "\n")
        for line, row in enumerate(rows, 2):
            fields = [check_field(v, c, path, line) for v, c in zip(row, columns)]
            f.write("\t".join(fields) + "\n")


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: PathLike) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"cannot write: the frame lacks column(s) {', '.join(missing)}", path=path)


def clip(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value))} chars)"


def _looks_utf16(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(data) >= 4 and (data[1:4:2] == b"\x00\x00" or data[0:4:2] == b"\x00\x00"))


def decode(data: bytes, path: PathLike) -> str:
    """A file's bytes as text: UTF-8, with one leading byte-order mark dropped; a clear error (with
    the line) otherwise.

    Every file metakd reads goes through here, with one BOM rule: the mark is dropped. A UTF-8 BOM is
    how Excel and Notepad save "UTF-8" (a user's CSV, a split file edited by hand); it says how the
    file is encoded and is never part of its text, so refusing it would only make the user re-save.
    """
    if _looks_utf16(data):
        raise UserError("not UTF-8: the file looks like UTF-16 text; save it as UTF-8", path=path, line=1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"not valid UTF-8 ({e.reason} at byte {column} of the line); save the file as UTF-8",
                        path=path, line=line) from None
    return text[1:] if text.startswith("\ufeff") else text


def _scan_tsv(path: Path, columns: Sequence[str],
              header_aliases: Dict[str, str]) -> Tuple[str, int]:
    """Check encoding, header and field counts line by line; return the text and its number of data rows.

    pandas alone cannot say which line has too few fields, so this pass does, and guarantees
    that pandas' rows map 1:1 onto lines 2, 3, ...
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}", path=path) from None
    text = decode(data, path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    expected = "\t".join(columns)
    if not lines:
        raise UserError(f"empty file; expected a header line {expected!r}", path=path)
    header = [header_aliases.get(c, c) for c in lines[0].rstrip("\r").split("\t")]
    if header != list(columns):
        raise UserError(f"header is {clip(lines[0])}, expected {expected!r}", path=path, line=1)
    n = len(columns)
    for lineno, line in enumerate(lines, 1):
        if "\r" in line:
            raise UserError("carriage return inside a line (Windows line ends?); save the file "
                            "with plain \\n line ends", path=path, line=lineno)
        if "\x00" in line:
            raise UserError("NUL character in the line", path=path, line=lineno)
        found = line.count("\t") + 1
        if found != n:
            what = "empty line (delete it): " if line == "" else ""
            raise UserError(f"{what}expected {n} TAB-separated fields, found {found}",
                            path=path, line=lineno)
    return text, len(lines) - 1


def read_tsv(path: PathLike, columns: Sequence[str],
              header_aliases: Optional[Dict[str, str]] = None) -> pd.DataFrame:
    path = Path(path)
    text, n_rows = _scan_tsv(path, columns, header_aliases or {})
    df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, na_filter=False,
                     quoting=csv.QUOTE_NONE, skip_blank_lines=False,
                     header=0, names=list(columns), engine="c")
    if len(df) != n_rows:  # cannot happen after _scan_tsv; a guard against pandas surprises
        raise UserError(f"read {len(df)} rows but the file has {n_rows}", path=path)
    return df


def check_choice(value: str, column: str, allowed: Optional[Sequence[str]], path: PathLike,
                  line: int) -> None:
    if value == "":
        raise UserError(f"empty {column}", path=path, line=line)
    if allowed is not None and value not in allowed:
        raise UserError(f"unknown {column} {clip(value)}; allowed: {', '.join(allowed)}",
                        path=path, line=line)


# ------------------------------------------------------------------------------ the standard schema

def make_guids(split: str, n: int) -> List[str]:
    """Deterministic example ids: ``train-000000``, ``train-000001``, ..."""
    return [f"{split}-{i:06d}" for i in range(n)]


def _format_weight(value: object, path: PathLike, line: int) -> str:
    try:
        w = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"weight {value!r} is not a number", path=path, line=line) from None
    if not math.isfinite(w):
        raise UserError(f"weight {w!r} is not finite", path=path, line=line)
    return repr(w)  # shortest text that reads back as the same float64


def write_standard_tsv(df: pd.DataFrame, path: PathLike) -> None:
    """Write a frame in the standard schema (guid text_a text_b label domain weight), atomically.

    Weights are written with ``repr`` so they read back bit-identical.
    """
    require_columns(df, STANDARD_COLUMNS, path)
    rows = []
    for i, row in enumerate(df[list(STANDARD_COLUMNS)].itertuples(index=False, name=None)):
        line = i + 2
        fields = [check_field(v, c, path, line) for v, c in zip(row[:5], STANDARD_COLUMNS)]
        guid, text_a, _, label, domain = fields
        if guid == "" or text_a == "":
            raise UserError(f"empty {'guid' if guid == '' else 'text_a'}", path=path, line=line)
        check_choice(label, "label", None, path, line)
        check_choice(domain, "domain", None, path, line)
        rows.append(fields + [_format_weight(row[5], path, line)])
    write_tsv(rows, STANDARD_COLUMNS, path)


def read_standard_tsv(path: PathLike, labels: Optional[Sequence[str]] = None,
                      domains: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Read a standard-schema TSV; ``weight`` comes back as float64, the rest as str.

    A 6th header column named ``embeddings`` (EasyNLP's ``dev_standard.tsv``) is read as
    ``weight``, as EasyNLP does. ``text_b`` is taken as is (EasyNLP writes the string ``None``
    in its training files; metakd leaves it empty).

    Args:
      labels, domains: if given, values outside them are errors.
    Raises:
      UserError: naming file and line for a bad header, a wrong number of fields, an empty or
        duplicate guid, an empty text_a, an unknown label or domain, a weight that is not a
        finite float.
    """
    df = read_tsv(path, STANDARD_COLUMNS, header_aliases={"embeddings": "weight"})
    weights = []
    seen: Dict[str, int] = {}
    for i, (guid, text_a, label, domain, weight) in enumerate(
            zip(df["guid"], df["text_a"], df["label"], df["domain"], df["weight"])):
        line = i + 2
        if guid == "":
            raise UserError("empty guid", path=path, line=line)
        if guid in seen:
            raise UserError(f"guid {clip(guid)} already used on line {seen[guid]}", path=path,
                            line=line)
        seen[guid] = line
        if text_a == "":
            raise UserError("empty text_a", path=path, line=line)
        check_choice(label, "label", labels, path, line)
        check_choice(domain, "domain", domains, path, line)
        try:
            w = float(weight)
        except ValueError:
            raise UserError(f"weight {clip(weight)} is not a number", path=path, line=line) from None
        if not math.isfinite(w):
            raise UserError(f"weight {clip(weight)} is not finite", path=path, line=line)
        weights.append(w)
    df["weight"] = pd.Series(weights, index=df.index, dtype="float64")
    return df


# ------------------------------------------------------------------------------ pair split files

def write_pair_split(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split (text_a, text_b, label, domain) as TSV, atomically; fields checked like
    the Amazon split files (no TAB, newline, NUL or carriage return inside a field)."""
    require_columns(df, PAIR_SPLIT_COLUMNS, path)
    frame = df[list(PAIR_SPLIT_COLUMNS)]
    for i, (a, b, label, domain) in enumerate(frame.itertuples(index=False, name=None)):
        line = i + 2
        for value, column in zip((a, b, label, domain), PAIR_SPLIT_COLUMNS):
            check_field(value, column, path, line)
        if a == "":
            raise UserError("empty text_a", path=path, line=line)
        check_choice(label, "label", None, path, line)
        check_choice(domain, "domain", None, path, line)
    write_tsv(frame.itertuples(index=False, name=None), PAIR_SPLIT_COLUMNS, path)


def read_pair_split(path: PathLike, labels: Optional[Sequence[str]] = None,
                    domains: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Read a split file written by :func:`write_pair_split` (all columns str).

    Raises:
      UserError: naming file and line for a bad header, a wrong number of fields, an empty
        text_a, an empty or unknown label or domain.
    """
    df = read_tsv(path, PAIR_SPLIT_COLUMNS)
    for i, (a, label, domain) in enumerate(zip(df["text_a"], df["label"], df["domain"])):
        line = i + 2
        if a == "":
            raise UserError("empty text_a", path=path, line=line)
        check_choice(label, "label", labels, path, line)
        check_choice(domain, "domain", domains, path, line)
    return df


def pair_split_to_standard(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """A pair split frame in the standard schema (guid text_a text_b label domain weight), weight 0."""
    n = len(df)
    return pd.DataFrame({
        "guid": make_guids(split, n), "text_a": df["text_a"].to_list(), "text_b": df["text_b"].to_list(),
        "label": df["label"].to_list(), "domain": df["domain"].to_list(), "weight": [0.0] * n,
    })


# ------------------------------------------------------------------------------- task.json

def task_file(data_dir: PathLike) -> Path:
    return Path(data_dir) / TASK_FILE


def read_task_file(data_dir: PathLike) -> Optional[dict]:
    """``DATA_DIR/task.json`` checked (task, at least two labels and domains), or None if absent."""
    path = task_file(data_dir)
    if not path.exists():
        return None
    info = read_json_object(path, damaged_fix="run 1_get_data.sh again")
    for key in ("labels", "domains"):
        values = info.get(key)
        if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, str) and v for v in values) \
                or len(set(values)) != len(values):
            raise UserError(f"'{key}' must be a list of at least 2 distinct names; run 1_get_data.sh again", path)
    if info.get("task") not in TASKS:
        raise UserError(f"unknown task {info.get('task')!r}; run 1_get_data.sh again", path)
    return info


def check_domain_name(domain: str, path: PathLike, line: Optional[int] = None) -> None:
    """A domain names a folder (``OUT_DIR/<domain>/``) and a GENRE value."""
    if domain in RESERVED_DOMAINS or "/" in domain or "\\" in domain or domain.startswith("-") \
            or domain != domain.strip() or len(domain) > 100:
        raise UserError(f"domain {clip(domain)} cannot name a folder (OUT_DIR/<domain>/) or a GENRE: it must "
                        "not be 'all', '.' or '..', contain '/' or '\\', start with '-' or a space, or exceed 100 "
                        "characters; rename it in the data", path=path, line=line)


# ------------------------------------------------------------------------------ processors

class Processor:
    """A task's labels, domains and split files (BERT-style processor); a task says how its split
    files are read (:meth:`read_split_file`) and turned into the standard schema (:meth:`to_standard`)."""

    task: str
    labels: Tuple[str, ...]
    domains: Tuple[str, ...]
    splits: Tuple[str, ...] = SPLITS

    def split_path(self, data_dir: PathLike, split: str) -> Path:
        return split_file(data_dir, split)

    def read_split_file(self, path: PathLike, domains: Optional[Sequence[str]]) -> pd.DataFrame:
        raise NotImplementedError

    def to_standard(self, df: pd.DataFrame, split: str) -> pd.DataFrame:
        raise NotImplementedError

    def read_split(self, data_dir: PathLike, split: str) -> pd.DataFrame:
        return self.read_split_file(self.split_path(data_dir, split), self.split_domains)

    def standard_split(self, path: PathLike, split: str) -> pd.DataFrame:
        """A split file as a standard frame (weight 0)."""
        return self.to_standard(self.read_split_file(path, self.domains), split)

    def read_standard(self, path: PathLike) -> pd.DataFrame:
        return read_standard_tsv(path, labels=self.labels)

    @property
    def split_domains(self) -> Optional[Sequence[str]]:
        """The domains :meth:`read_split` accepts (None: any)."""
        return self.domains
