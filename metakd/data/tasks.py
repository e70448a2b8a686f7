"""Tasks: which dataset a pipeline run uses, and the pieces the non-Amazon tasks share.

Three tasks (``--task``, script variable ``TASK``):

* ``senti``: the Amazon reviews (:mod:`metakd.data.senti`), labels and genres fixed in code;
* ``mnli``: GLUE's MNLI, five genres, sentence pairs, three labels (:mod:`metakd.data.mnli`);
* ``tsv``: the user's own CSV/TSV (:mod:`metakd.data.table`); labels and domains are read from
  the data.

``mnli`` and ``tsv`` write their split files (``train.tsv``, ``dev.tsv``, ``test.tsv``) with the
columns ``text_a text_b label domain`` (TAB-separated, UTF-8, one header line, never quoted;
``text_b`` empty for single texts), and ``task.json`` beside them: the task, its labels and
domains in id order, and how the split was made. Every later stage reads the labels and domains
from ``task.json`` (and stores them in each checkpoint's ``config.json``), so all stages agree.
``senti`` writes no ``task.json``: its files are what they always were.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from metakd.data import senti
from metakd.infra.errors import UserError
from metakd.infra.fileio import read_json_object

PathLike = Union[str, os.PathLike]

TASKS = ("senti", "mnli", "tsv")
TASK_FILE = "task.json"
PAIR_SPLIT_COLUMNS: Tuple[str, ...] = ("text_a", "text_b", "label", "domain")
SPLITS = ("train", "dev", "test")
# Folder-name rules for a domain: it becomes OUT_DIR/<domain>/ and a GENRE value.
RESERVED_DOMAINS = ("all", ".", "..")


# ------------------------------------------------------------------------ stratified sampling

def stratum_counts(n: int, fraction: float, at_least_one: bool = False) -> int:
    """Rows taken from a stratum of ``n``: ``floor(fraction * n + 0.5)`` (round half up), and at
    least 1 of a non-empty stratum when ``at_least_one``."""
    k = int(math.floor(fraction * n + 0.5))
    if at_least_one and n > 0:
        k = max(k, 1)
    return min(k, n)


def stratified_take(strata: Sequence, fraction: float, seed: int, at_least_one: bool = False) -> np.ndarray:
    """A boolean mask over the rows: in each stratum, ``stratum_counts(n, fraction)`` rows.

    The rows taken are the stratum's first ones in the order of one permutation of all rows,
    ``np.random.default_rng(seed).permutation(N)``. So the result depends only on the rows (in
    order), the strata, the fraction and the seed; and a smaller fraction takes a subset of what
    a larger one takes (the same seed).

    Args:
      strata: [N] hashable keys (e.g. ``(domain, label)`` tuples).
    """
    keys = list(strata)
    n = len(keys)
    order = np.random.default_rng(seed).permutation(n)
    sizes: Dict[object, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    quota = {k: stratum_counts(c, fraction, at_least_one) for k, c in sizes.items()}
    taken = np.zeros(n, dtype=bool)
    for i in order:
        k = keys[i]
        if quota[k] > 0:
            taken[i] = True
            quota[k] -= 1
    return taken


def stratified_partition(strata: Sequence, fractions: Sequence[float], seed: int) -> np.ndarray:
    """[N] part ids: in each stratum of ``n`` rows, part ``j`` (``j < len(fractions)``) gets
    ``stratum_counts(n, fractions[j])`` rows (fewer if the stratum runs out; earlier parts first)
    and part ``len(fractions)`` the rest. Rows are dealt in the order of
    ``np.random.default_rng(seed).permutation(N)``: each stratum's first rows in that order go to
    part 0, the next to part 1, and so on."""
    keys = list(strata)
    sizes: Dict[object, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    quotas: Dict[object, List[int]] = {}
    for k, n in sizes.items():
        left, q = n, []
        for f in fractions:
            q.append(min(stratum_counts(n, f), left))
            left -= q[-1]
        quotas[k] = q
    part = np.full(len(keys), len(fractions), dtype=np.int64)
    for i in np.random.default_rng(seed).permutation(len(keys)):
        q = quotas[keys[i]]
        j = next((j for j, left in enumerate(q) if left > 0), None)
        if j is not None:
            part[i] = j
            q[j] -= 1
    return part


def strata_of(df: pd.DataFrame) -> List[Tuple[str, str]]:
    return list(zip(df["domain"].tolist(), df["label"].tolist()))


def take_portion(df: pd.DataFrame, portion: float, seed: int) -> pd.DataFrame:
    """A stratified (domain x label) ``portion`` of ``df``'s rows, at least one row of every
    stratum, in ``df``'s order (``portion`` 1: ``df`` itself)."""
    if portion >= 1.0:
        return df
    mask = stratified_take(strata_of(df), portion, seed, at_least_one=True)
    return df[mask].reset_index(drop=True)


def check_portion(portion: float) -> None:
    if not (0.0 < portion <= 1.0):
        raise UserError(f"--data-portion must be in (0, 1], got {portion}")


# ------------------------------------------------------------------------------ split files

def write_pair_split(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split (text_a, text_b, label, domain) as TSV, atomically; fields checked like
    the Amazon split files (no TAB, newline, NUL or carriage return inside a field)."""
    senti._require_columns(df, PAIR_SPLIT_COLUMNS, path)
    frame = df[list(PAIR_SPLIT_COLUMNS)]
    for i, (a, b, label, domain) in enumerate(frame.itertuples(index=False, name=None)):
        line = i + 2
        for value, column in zip((a, b, label, domain), PAIR_SPLIT_COLUMNS):
            senti._check_field(value, column, path, line)
        if a == "":
            raise UserError("empty text_a", path=path, line=line)
        senti._check_choice(label, "label", None, path, line)
        senti._check_choice(domain, "domain", None, path, line)
    senti._write_tsv(frame.itertuples(index=False, name=None), PAIR_SPLIT_COLUMNS, path)


def read_pair_split(path: PathLike, labels: Optional[Sequence[str]] = None,
                    domains: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Read a split file written by :func:`write_pair_split` (all columns str).

    Raises:
      UserError: naming file and line for a bad header, a wrong number of fields, an empty
        text_a, an empty or unknown label or domain.
    """
    df = senti._read_tsv(path, PAIR_SPLIT_COLUMNS)
    for i, (a, label, domain) in enumerate(zip(df["text_a"], df["label"], df["domain"])):
        line = i + 2
        if a == "":
            raise UserError("empty text_a", path=path, line=line)
        senti._check_choice(label, "label", labels, path, line)
        senti._check_choice(domain, "domain", domains, path, line)
    return df


def pair_split_to_standard(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """A pair split frame in the standard schema (guid text_a text_b label domain weight), weight 0."""
    n = len(df)
    return pd.DataFrame({
        "guid": senti.make_guids(split, n), "text_a": df["text_a"].to_list(), "text_b": df["text_b"].to_list(),
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
        raise UserError(f"domain {senti._clip(domain)} cannot name a folder (OUT_DIR/<domain>/) or a GENRE: it must "
                        "not be 'all', '.' or '..', contain '/' or '\\', start with '-' or a space, or exceed 100 "
                        "characters; rename it in the data", path=path, line=line)


# ------------------------------------------------------------------------------ processors

class PairProcessor:
    """Labels, domains and files of an ``mnli`` or ``tsv`` data folder (see the module doc)."""

    splits: Tuple[str, ...] = SPLITS

    def __init__(self, task: str, labels: Sequence[str], domains: Sequence[str]):
        self.task = task
        self.labels: Tuple[str, ...] = tuple(labels)
        self.domains: Tuple[str, ...] = tuple(domains)

    def split_path(self, data_dir: PathLike, split: str) -> Path:
        if split not in self.splits:
            raise UserError(f"unknown split {split!r}; allowed: {', '.join(self.splits)}")
        return Path(data_dir) / f"{split}.tsv"

    def read_split(self, data_dir: PathLike, split: str) -> pd.DataFrame:
        return read_pair_split(self.split_path(data_dir, split), self.labels, self.domains)

    def standard_split(self, path: PathLike, split: str) -> pd.DataFrame:
        """A split file as a standard frame (weight 0)."""
        return pair_split_to_standard(read_pair_split(path, self.labels, self.domains), split)

    def read_standard(self, path: PathLike) -> pd.DataFrame:
        return senti.read_standard_tsv(path, labels=self.labels)


def processor(task: str, data_dir: Optional[PathLike] = None):
    """The processor of ``task`` for the data in ``data_dir`` (the folder 1_get_data.sh wrote).

    ``senti`` needs no folder; ``mnli`` and ``tsv`` read ``data_dir/task.json`` (``tsv``: its
    labels and domains). A folder written for another task is refused, naming the task to set.
    """
    from metakd.data.mnli import MNLI_DOMAINS, MNLI_LABELS

    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    info = read_task_file(data_dir) if data_dir is not None else None
    if info is not None and info["task"] != task:
        raise UserError(f"this data folder holds TASK={info['task']} data (its task.json), not TASK={task}; "
                        f"set TASK={info['task']}, or run 1_get_data.sh with TASK={task} into another DATA_DIR",
                        task_file(data_dir))
    if task == "senti":
        return senti.SentiProcessor()
    if data_dir is None:
        if task == "mnli":
            return PairProcessor("mnli", MNLI_LABELS, MNLI_DOMAINS)
        raise UserError("TASK=tsv reads its labels and domains from DATA_DIR/task.json; give --data-dir")
    if info is None:
        raise UserError(f"no {TASK_FILE} here (TASK={task} writes it with the split files); run 1_get_data.sh "
                        f"with TASK={task} first, or check DATA_DIR", task_file(data_dir))
    if task == "mnli" and (tuple(info["labels"]) != MNLI_LABELS or tuple(info["domains"]) != MNLI_DOMAINS):
        raise UserError("the labels or genres are not MNLI's; run 1_get_data.sh with TASK=mnli again",
                        task_file(data_dir))
    return PairProcessor(task, info["labels"], info["domains"])
