"""MNLI (GLUE's copy of MultiNLI): five genres, sentence pairs, three labels.

GLUE's ``MNLI.zip`` holds ``MNLI/train.tsv`` (392,702 pairs) and ``MNLI/dev_matched.tsv``
(9,815 pairs of the same five genres), TAB-separated with a header, never quoted. The columns
this module reads, by name: ``genre``, ``sentence1``, ``sentence2`` and ``gold_label``
(``train.tsv`` has 12 columns, ``dev_matched.tsv`` 16: five annotator labels). A pair whose
annotators did not agree has ``gold_label`` ``-``; it has no label and is left out.

The split (fixed; the same for every run with the same ``DATA_PORTION``):

* test = ``dev_matched.tsv`` (MNLI's test labels are not public), in file order, all of it;
* dev  = a stratified 10% of ``train.tsv`` by genre x label: in each genre x label stratum of
  ``n`` pairs, ``floor(0.1 n + 0.5)`` of them, chosen by :func:`metakd.data.sampling.stratified_take`
  with the split seed (11111 unless ``SPLIT_SEED`` says otherwise); train = the rest. Both keep
  the file order;
* ``DATA_PORTION`` p < 1 keeps a stratified fraction p (at least one pair per stratum) of train
  and of dev, chosen the same way with the same seed (a smaller portion is a subset of a larger
  one); test stays whole.

Whitespace in the sentences is normalised (each run becomes one space, stripped); a pair with an
empty sentence after that is left out (and counted).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import pandas as pd

from metakd.data.sampling import stratified_take, strata_of, take_portion
from metakd.data.senti import normalise_text
from metakd.data.tsv import PAIR_SPLIT_COLUMNS, clip, decode
from metakd.infra.errors import UserError

PathLike = Union[str, os.PathLike]

DEFAULT_SOURCE = "https://dl.fbaipublicfiles.com/glue/data/MNLI.zip"
# google-research/bert's MnliProcessor order.
MNLI_LABELS: Tuple[str, ...] = ("contradiction", "entailment", "neutral")
MNLI_DOMAINS: Tuple[str, ...] = ("fiction", "government", "slate", "telephone", "travel")
TRAIN_FILE = "train.tsv"
TEST_FILE = "dev_matched.tsv"
COLUMNS = ("genre", "sentence1", "sentence2", "gold_label")
NO_LABEL = "-"
DEV_FRACTION = 0.1
SPLIT_SEED = 11111

_LAYOUT = f"expected GLUE's MNLI folder: {TRAIN_FILE} and {TEST_FILE} (e.g. MNLI.zip extracted)"


def read_mnli_tsv(path: PathLike) -> pd.DataFrame:
    """The labelled pairs of a GLUE MNLI file, in file order.

    Returns:
      A frame with columns text_a (sentence1), text_b (sentence2), label (gold_label), domain
      (genre). ``df.attrs`` counts what was left out: ``no_gold_label`` (``-``) and
      ``empty_sentence``.
    Raises:
      UserError: naming file and line: not UTF-8, a header without the columns, a line with
        another number of fields than the header, a genre or label that is not MNLI's.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}; " + _LAYOUT, path=path) from None
    text = decode(data, path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise UserError("empty file; " + _LAYOUT, path=path)
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserError(f"the header has no column {', '.join(missing)}; " + _LAYOUT, path=path, line=1)
    at = {c: header.index(c) for c in COLUMNS}
    records: List[Tuple[str, str, str, str]] = []
    dropped = {"no_gold_label": 0, "empty_sentence": 0}
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(header):
            raise UserError(f"expected {len(header)} TAB-separated fields (as the header), found {len(fields)}",
                            path=path, line=lineno)
        genre, label = fields[at["genre"]], fields[at["gold_label"]]
        if genre not in MNLI_DOMAINS:
            raise UserError(f"genre {clip(genre)} is not one of MNLI's five ({', '.join(MNLI_DOMAINS)}); "
                            f"use train.tsv and dev_matched.tsv, not dev_mismatched.tsv", path=path, line=lineno)
        if label == NO_LABEL:
            dropped["no_gold_label"] += 1
            continue
        if label not in MNLI_LABELS:
            raise UserError(f"gold_label {clip(label)} is not one of {', '.join(MNLI_LABELS)} or '-'",
                            path=path, line=lineno)
        a, b = normalise_text(fields[at["sentence1"]]), normalise_text(fields[at["sentence2"]])
        if not a or not b:
            dropped["empty_sentence"] += 1
            continue
        records.append((a, b, label, genre))
    df = pd.DataFrame.from_records(records, columns=list(PAIR_SPLIT_COLUMNS))
    df.attrs.update(dropped)
    return df


def find_mnli_dir(path: PathLike, max_depth: int = 3) -> Path:
    """The folder at or below ``path`` (breadth first) that holds train.tsv and dev_matched.tsv."""
    path = Path(path)
    if not path.is_dir():
        raise UserError("no such folder; " + _LAYOUT, path=path)
    level = [path]
    for _ in range(max_depth + 1):
        for d in level:
            if (d / TRAIN_FILE).is_file() and (d / TEST_FILE).is_file():
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    raise UserError("no folder with train.tsv and dev_matched.tsv here; " + _LAYOUT, path=path)


def split_mnli(train_all: pd.DataFrame, test: pd.DataFrame, portion: float = 1.0,
               seed: int = SPLIT_SEED) -> Dict[str, pd.DataFrame]:
    """Train, dev and test by the module's protocol (see the module docstring)."""
    for name, frame in (("train.tsv", train_all), ("dev_matched.tsv", test)):
        if len(frame) == 0:
            raise UserError(f"{name} has no labelled pairs; " + _LAYOUT)
    is_dev = stratified_take(strata_of(train_all), DEV_FRACTION, seed)
    train = train_all[~is_dev].reset_index(drop=True)
    dev = train_all[is_dev].reset_index(drop=True)
    if len(dev) == 0:
        raise UserError(f"train.tsv has too few pairs for a 10% dev split ({len(train_all)}); " + _LAYOUT)
    return {"train": take_portion(train, portion, seed), "dev": take_portion(dev, portion, seed),
            "test": test.reset_index(drop=True)}


def load_mnli(folder: PathLike) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(train.tsv's, dev_matched.tsv's) labelled pairs of an MNLI folder."""
    folder = Path(folder)
    return read_mnli_tsv(folder / TRAIN_FILE), read_mnli_tsv(folder / TEST_FILE)
