"""The user's own multi-domain data (``TASK=tsv``): a CSV or TSV file with a header.

Columns, named by the user (defaults in brackets): the text [``text``], optionally a second
text [none; e.g. ``TEXT_B_COLUMN=answer`` for pairs], the label [``label``] and the domain
[``domain``]; other columns are ignored. A file ending in ``.csv`` is comma-separated with the
usual CSV quoting (a quoted field may hold commas, quotes and line breaks); any other file is
TAB-separated without quoting (a field cannot hold a TAB or a line break). UTF-8; blank lines are
skipped; whitespace in texts is normalised (each run becomes one space), labels and domains are
stripped.

The labels and domains are whatever the training rows hold (at least 2 of each), in sorted
order; they go into ``task.json`` and from there into every checkpoint's ``config.json``.
Either the user gives train, dev and test files, or one file is split, stratified by
domain x label with a seed: in each stratum of ``n`` rows, ``floor(TEST_FRACTION n + 0.5)`` go
to test and ``floor(DEV_FRACTION n + 0.5)`` to dev (see
:func:`metakd.data.sampling.stratified_partition`), the rest to train.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.data.sampling import stratified_partition, take_portion
from metakd.data.senti import normalise_text
from metakd.data.tsv import FORBIDDEN, PAIR_SPLIT_COLUMNS, check_domain_name, clip, decode
from metakd.infra.errors import UserError

PathLike = Union[str, os.PathLike]

DEV_FRACTION = 0.1
TEST_FRACTION = 0.1
SPLIT_SEED = 11111
# Which script variable / option names each column, for the messages.
_COLUMN_VARIABLES = {"text": "TEXT_COLUMN", "text_b": "TEXT_B_COLUMN", "label": "LABEL_COLUMN",
                     "domain": "DOMAIN_COLUMN"}


@dataclass(frozen=True)
class Columns:
    """Column names in the user's file (``text_b`` empty: single texts)."""

    text: str = "text"
    text_b: str = ""
    label: str = "label"
    domain: str = "domain"

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)


def _missing_column(name: str, role: str, header: Sequence[str], path: Path) -> UserError:
    var = _COLUMN_VARIABLES[role]
    return UserError(f"no column {clip(name)} (the file's columns: {', '.join(header)}); set {var} "
                     f"(--{var.lower().replace('_', '-')}) to the name of the {role.replace('_', ' ')} column",
                     path=path, line=1)


def read_table(path: PathLike, columns: Columns) -> pd.DataFrame:
    """The rows of a user's CSV/TSV file, checked.

    Returns:
      A frame with columns text_a, text_b ("" without a second-text column), label, domain and
      line (where the row starts in the file, for messages), in file order.
    Raises:
      UserError: naming file and line: unreadable, not UTF-8, a missing column, a row with
        another number of fields than the header, an empty text, label or domain, a domain that
        cannot name a folder, no rows at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file" if not path.exists() else "not a file", path=path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}", path=path) from None
    text = decode(data, path)  # Excel's UTF-8 files start with a BOM: decode drops it
    is_csv = path.suffix.lower() == ".csv"
    kind = "CSV" if is_csv else "TSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if is_csv else "\t",
                        quoting=csv.QUOTE_MINIMAL if is_csv else csv.QUOTE_NONE, strict=True)
    rows = []
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"cannot read it as {kind}: {e}", path=path, line=reader.line_num) from None
    rows = [(line, row) for line, row in rows if any(field.strip() for field in row)]
    if not rows:
        raise UserError("empty file; expected a header line naming the columns (e.g. text, label, domain)", path=path)
    header = [h.strip() for h in rows[0][1]]
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise UserError(f"the header names column {clip(dup)} twice; rename one", path=path, line=rows[0][0])
    at = {}
    for role, name in columns.as_dict().items():
        if role == "text_b" and not name:
            continue
        if name not in header:
            if role == "text" and len(header) == 1 and not is_csv and "," in header[0]:
                raise UserError("the header has one TAB-separated column; a comma-separated file must end in .csv",
                                path=path, line=1)
            raise _missing_column(name, role, header, path)
        at[role] = header.index(name)
    records: List[Tuple[str, str, str, str, int]] = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise UserError(f"expected {len(header)} {'comma' if is_csv else 'TAB'}-separated fields (as the header), "
                            f"found {len(row)}", path=path, line=line)
        a = normalise_text(row[at["text"]])
        if not a:
            raise UserError(f"empty text in column {clip(columns.text)}; fill it in or delete the row",
                            path=path, line=line)
        b = normalise_text(row[at["text_b"]]) if "text_b" in at else ""
        label, domain = row[at["label"]].strip(), row[at["domain"]].strip()
        for value, role in ((label, "label"), (domain, "domain")):
            name = getattr(columns, role)
            if not value:
                raise UserError(f"empty {role} in column {clip(name)}; fill it in or delete the row",
                                path=path, line=line)
            bad = next((what for ch, what in FORBIDDEN.items() if ch in value), None)
            if bad:
                raise UserError(f"the {role} {clip(value)} contains {bad}; labels and domains are one-line names",
                                path=path, line=line)
        check_domain_name(domain, path, line)
        records.append((a, b, label, domain, line))
    if not records:
        raise UserError("no data rows below the header", path=path)
    return pd.DataFrame.from_records(records, columns=[*PAIR_SPLIT_COLUMNS, "line"])


def names_of(train: pd.DataFrame, path: PathLike) -> Tuple[List[str], List[str]]:
    """The labels and domains of the training rows, sorted; at least two of each."""
    labels, domains = sorted(set(train["label"])), sorted(set(train["domain"]))
    for what, values in (("label", labels), ("domain", domains)):
        if len(values) < 2:
            found = f"only {what} {clip(values[0])}" if values else f"no {what}"
            raise UserError(f"the training rows have {found}; Meta-KD needs at least 2 labels and 2 domains",
                            path=path)
    return labels, domains


def check_known(df: pd.DataFrame, labels: Sequence[str], domains: Sequence[str], path: PathLike,
                fix: str) -> None:
    """Every label and domain of ``df`` (dev or test rows) occurs in the training rows."""
    for what, known in (("label", labels), ("domain", domains)):
        bad = df[~df[what].isin(known)]
        if len(bad):
            row = bad.iloc[0]
            raise UserError(f"{what} {clip(row[what])} does not occur in the training rows (their {what}s: "
                            f"{', '.join(known)}); {fix}", path=path, line=int(row["line"]))


def split_table(df: pd.DataFrame, path: PathLike, dev_fraction: float = DEV_FRACTION,
                test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Dict[str, pd.DataFrame]:
    """One file's rows as train, dev and test, stratified by domain x label (module docstring);
    each split keeps the file order.

    Raises:
      UserError: a domain would have no rows in one of the splits, or a label none in train.
    """
    part = stratified_partition(list(zip(df["domain"], df["label"])), [test_fraction, dev_fraction], seed)
    splits = {"train": df[part == 2], "dev": df[part == 1], "test": df[part == 0]}
    for domain in sorted(set(df["domain"])):
        counts = {name: int((frame["domain"] == domain).sum()) for name, frame in splits.items()}
        empty = [name for name, c in counts.items() if c == 0]
        if empty:
            n = sum(counts.values())
            raise UserError(
                f"domain {clip(domain)} has {n} row(s), too few to split into train/dev/test at DEV_FRACTION "
                f"{dev_fraction} and TEST_FRACTION {test_fraction} ({' and '.join(empty)} would get none); give it "
                "more rows, raise the fractions, or give TRAIN_FILE, DEV_FILE and TEST_FILE", path=path)
    labels = set(splits["train"]["label"])
    for label in sorted(set(df["label"]) - labels):
        n = int((df["label"] == label).sum())
        raise UserError(f"label {clip(label)} has {n} row(s), too few to leave one for training after the "
                        "dev/test split; give it more rows or leave it out", path=path)
    return {k: v.reset_index(drop=True) for k, v in splits.items()}


def load_own_data(columns: Columns, source: Optional[PathLike] = None, train: Optional[PathLike] = None,
                  dev: Optional[PathLike] = None, test: Optional[PathLike] = None,
                  dev_fraction: float = DEV_FRACTION, test_fraction: float = TEST_FRACTION,
                  seed: int = SPLIT_SEED, portion: float = 1.0) -> Tuple[Dict[str, pd.DataFrame], dict]:
    """Train/dev/test frames (text_a, text_b, label, domain) and what ``task.json`` records.

    Either ``source`` (one file, split here) or all of ``train``, ``dev`` and ``test``. A
    ``portion`` < 1 keeps that stratified fraction of train and of dev (as for MNLI).
    """
    if source is not None:
        df = read_table(source, columns)
        labels, domains = names_of(df, source)
        splits = split_table(df, source, dev_fraction, test_fraction, seed)
        how = {"how": "one file split by domain x label", "file": str(source), "dev_fraction": dev_fraction,
               "test_fraction": test_fraction, "seed": seed}
    else:
        files = {"train": train, "dev": dev, "test": test}
        splits = {name: read_table(p, columns) for name, p in files.items()}
        labels, domains = names_of(splits["train"], train)
        for name in ("dev", "test"):
            check_known(splits[name], labels, domains, files[name],
                        "every dev and test label and domain must occur in training; fix the row or add training rows")
        how = {"how": "given files", **{f"{k}_file": str(v) for k, v in files.items()}}
    splits = {k: v.drop(columns=["line"]) for k, v in splits.items()}
    if portion < 1.0:
        splits["train"] = take_portion(splits["train"], portion, seed)
        splits["dev"] = take_portion(splits["dev"], portion, seed)
        how.update(data_portion=portion, portion_seed=seed)
    return splits, {"task": "tsv", "labels": labels, "domains": domains, "columns": columns.as_dict(), "split": how}
