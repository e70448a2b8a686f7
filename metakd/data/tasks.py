"""The task registry: which dataset a pipeline run uses (``--task``, script variable ``TASK``).

* ``senti``: the Amazon reviews (:mod:`metakd.data.senti`), labels and domains fixed in code;
* ``mnli``: GLUE's MNLI, five genres, sentence pairs, three labels (:mod:`metakd.data.mnli`);
* ``tsv``: the user's own CSV/TSV (:mod:`metakd.data.table`); labels and domains are read from
  the data.

The files each task writes, and ``task.json``, are :mod:`metakd.data.tsv`'s.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.data import senti
from metakd.data.mnli import MNLI_DOMAINS, MNLI_LABELS
from metakd.data.tsv import TASK_FILE, TASKS, Processor, pair_split_to_standard, read_pair_split, read_task_file, task_file
from metakd.infra.errors import UserError

PathLike = Union[str, os.PathLike]

__all__ = ["TASKS", "PairProcessor", "processor"]


class PairProcessor(Processor):
    """Labels, domains and files of an ``mnli`` or ``tsv`` data folder (pair split files)."""

    def __init__(self, task: str, labels: Sequence[str], domains: Sequence[str]):
        self.task = task
        self.labels: Tuple[str, ...] = tuple(labels)
        self.domains: Tuple[str, ...] = tuple(domains)

    def read_split_file(self, path: PathLike, domains: Optional[Sequence[str]]) -> pd.DataFrame:
        return read_pair_split(path, self.labels, domains)

    def to_standard(self, df: pd.DataFrame, split: str) -> pd.DataFrame:
        return pair_split_to_standard(df, split)


def processor(task: str, data_dir: Optional[PathLike] = None):
    """The processor of ``task`` for the data in ``data_dir`` (the folder 1_get_data.sh wrote).

    ``senti`` needs no folder; ``mnli`` and ``tsv`` read ``data_dir/task.json`` (``tsv``: its
    labels and domains). A folder written for another task is refused, naming the task to set.
    """
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
