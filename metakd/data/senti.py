"""The Amazon multi-domain sentiment dataset (SENTI): parsing, the reference split, TSV files.

Blitzer et al.'s ``sorted_data_acl`` holds, per product domain, ``positive.review`` and
``negative.review`` in a pseudo-XML format that is not well-formed XML, so it is read line by
line. The split reproduces EasyNLP's ``generate_senti_data.py`` exactly (same reviews in each
split, same order); the text itself is cleaner than EasyNLP's (lines are joined with a space
instead of glued, no characters dropped, no CSV quote-escaping in the TSV files).

The split files ``train.tsv``, ``dev.tsv``, ``test.tsv`` have the columns ``review domain
sentiment``; their format, and the standard schema of the processed files, are
:mod:`metakd.data.tsv`'s.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.data.tsv import (SPLIT_COLUMNS, Processor, check_choice, check_field, make_guids, read_tsv, require_columns,
                             write_tsv)
from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_open

PathLike = Union[str, os.PathLike]

# Label ids follow EasyNLP's label_enumerate_values order: positive -> 0, negative -> 1.
SENTI_LABELS: Tuple[str, ...] = ("positive", "negative")
SENTI_DOMAINS: Tuple[str, ...] = ("books", "dvd", "electronics", "kitchen")
SPLIT_SEED = 11111
N_FOLDS = 10

_LAYOUT = ("expected the sorted_data_acl layout: <folder>/<domain>/positive.review and "
           "<domain>/negative.review (e.g. books, dvd, electronics, kitchen_&_housewares)")


# ------------------------------------------------------------------------------ .review files

def normalise_text(text: str) -> str:
    """Every run of whitespace (spaces, TABs, newlines, \\r, NUL...) becomes one space; stripped."""
    return " ".join(text.replace("\x00", " ").split())


def _parse_review_file(path: Path) -> Tuple[List[str], int]:
    """Reviews of one file and the number of empty ones left out."""
    reviews: List[str] = []
    empty = 0
    inside, opened_at = False, 0
    lines: List[str] = []
    try:
        f = open(path, "rb")  # bytes: split on b"\n" only, decode per line to name the line
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", path=path) from e
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"not valid UTF-8 ({e.reason} at byte {e.start + 1} of the line)",
                                path=path, line=lineno) from e
            if lineno == 1:
                line = line.lstrip("\ufeff")
            tag = line.strip()
            if tag == "<review_text>":
                if inside:
                    raise UserError(f"<review_text> inside the review opened at line {opened_at}",
                                    path=path, line=lineno)
                inside, opened_at, lines = True, lineno, []
            elif tag == "</review_text>":
                if not inside:
                    raise UserError("</review_text> without a matching <review_text>",
                                    path=path, line=lineno)
                inside = False
                text = normalise_text(" ".join(lines))
                if text:
                    reviews.append(text)
                else:
                    empty += 1
            elif inside:
                lines.append(line)
    if inside:
        raise UserError("<review_text> is never closed", path=path, line=opened_at)
    if not reviews and not empty:
        raise UserError("no <review_text> ... </review_text> blocks found; " + _LAYOUT, path=path)
    return reviews, empty


def extract_reviews_easynlp(positive: PathLike, negative: PathLike) -> Tuple[List[str], List[str]]:
    """One domain's reviews exactly as EasyNLP's ``generate_senti_data.py`` extracts them
    (``COMPAT=easynlp``; docs/reference.md section 2.1), its quirks included:

    * a review is the text between a line that is exactly ``<review_text>`` and one that is
      exactly ``</review_text>``, both with their newline; it starts as one space;
    * inside, a line longer than its newline loses the newline and, if it starts with a TAB,
      its first and last characters; lines are appended with nothing between them;
    * a blank line appends the last non-blank line again (the script's append sits outside its
      length test), and that "last line" carries over from review to review and from the
      positive file to the negative one;
    * TABs become spaces; empty reviews are kept.

    Returns the positive and the negative reviews in file order.
    """
    last: Optional[str] = None
    result = []
    for path in (Path(positive), Path(negative)):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except UnicodeDecodeError as e:
            raise UserError(f"not valid UTF-8 ({e.reason}); EasyNLP's script could not read it either", path=path) from e
        except OSError as e:
            raise UserError(f"cannot read: {e.strerror}", path=path) from e
        reviews, inside, text = [], False, ""
        for lineno, line in enumerate(lines, 1):
            if line == "<review_text>\n":
                inside, text = True, " "
            elif line == "</review_text>\n":
                inside = False
                reviews.append(text.replace("\t", " "))
            elif inside:
                if len(line) > 1:
                    last = line[:-1]
                    if last[0] == "\t":
                        last = last[1:-1]
                if last is None:  # the script fails here too (its variable is not yet defined)
                    raise UserError("a blank line before any text inside <review_text>", path=path, line=lineno)
                text += last
        result.append(reviews)
    return result[0], result[1]


def parse_review_file(path: PathLike) -> List[str]:
    """Texts of the reviews in one ``.review`` file, in file order.

    A review is every line between a line ``<review_text>`` and a line ``</review_text>``,
    joined with single spaces, whitespace normalised by :func:`normalise_text`. Reviews that
    are empty after that are left out (:func:`load_sorted_data_acl` counts them).

    Raises:
      UserError: the file is unreadable, not UTF-8 (names the line), or its tags do not pair up.
    """
    return _parse_review_file(Path(path))[0]


def domain_label(folder_name: str) -> str:
    """Domain label of a folder: the name up to the first "_" (``kitchen_&_housewares``)."""
    return folder_name.split("_")[0]


def find_domain_dirs(root: PathLike) -> List[Path]:
    """Subfolders of ``root`` that hold both ``positive.review`` and ``negative.review``, sorted."""
    root = Path(root)
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        has_pos, has_neg = (d / "positive.review").is_file(), (d / "negative.review").is_file()
        if has_pos and has_neg:
            found.append(d)
        elif has_pos or has_neg:
            missing = "negative.review" if has_pos else "positive.review"
            raise UserError(f"domain folder has no {missing}; " + _LAYOUT, path=d)
    return found


def load_sorted_data_acl(root: PathLike, compat: str = "none") -> pd.DataFrame:
    """All labelled reviews under a ``sorted_data_acl`` folder (``compat="easynlp"``: with
    EasyNLP's text, :func:`extract_reviews_easynlp`).

    Returns:
      A DataFrame with columns review, domain, sentiment: domains in sorted folder order, in
      each domain its positive reviews then its negative ones, each in file order (the split
      depends on this order). ``df.attrs["empty_reviews_skipped"]`` maps file -> count of
      empty reviews left out (only files with some).
    Raises:
      UserError: the folder is missing or has no domain folders, or a file is malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError("no such folder; " + _LAYOUT, path=root)
    domain_dirs = find_domain_dirs(root)
    if not domain_dirs:
        raise UserError("no domain folders found; " + _LAYOUT, path=root)
    seen: Dict[str, Path] = {}
    records = []
    skipped: Dict[str, int] = {}
    for d in domain_dirs:
        domain = domain_label(d.name)
        if not domain:
            raise UserError("a domain folder name must not start with '_'", path=d)
        if domain in seen:
            raise UserError(f"folders {seen[domain].name!r} and {d.name!r} both give domain "
                            f"label {domain!r} (the name up to the first '_')", path=root)
        seen[domain] = d
        if compat == "easynlp":
            texts = dict(zip(SENTI_LABELS, extract_reviews_easynlp(d / "positive.review", d / "negative.review")))
            for sentiment in SENTI_LABELS:
                records.extend((text, domain, sentiment) for text in texts[sentiment])
            continue
        for sentiment in SENTI_LABELS:
            path = d / f"{sentiment}.review"
            reviews, empty = _parse_review_file(path)
            if empty:
                skipped[str(path)] = empty
            records.extend((text, domain, sentiment) for text in reviews)
    df = pd.DataFrame.from_records(records, columns=list(SPLIT_COLUMNS))
    df.attrs["empty_reviews_skipped"] = skipped
    return df


def find_sorted_data_acl(path: PathLike, max_depth: int = 4) -> Path:
    """The ``sorted_data_acl`` folder at or below ``path`` (e.g. an extracted archive).

    Preference: ``path`` itself if it has domain folders; else the shallowest folder named
    ``sorted_data_acl``; else the shallowest folder with domain folders, except
    ``processed_acl`` (the archive's bag-of-words copy, which uses the same file names).
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError("no such folder; " + _LAYOUT, path=path)
    if find_domain_dirs(path):
        return path
    fallback: Optional[Path] = None
    queue = deque([(path, 0)])
    while queue:
        d, depth = queue.popleft()
        if d != path:
            if d.name == "sorted_data_acl":
                return d
            if fallback is None and d.name != "processed_acl" and _has_domain_dirs(d):
                fallback = d
        if depth < max_depth:
            queue.extend((c, depth + 1) for c in sorted(d.iterdir())
                         if c.is_dir() and not c.name.startswith("."))
    if fallback is not None:
        return fallback
    raise UserError("no sorted_data_acl folder found here; " + _LAYOUT, path=path)


def _has_domain_dirs(d: Path) -> bool:
    try:
        return bool(find_domain_dirs(d))
    except UserError:
        return False


# ------------------------------------------------------------------------------------ split

def split_reference(df: pd.DataFrame, seed: int = SPLIT_SEED,
                    n_splits: int = N_FOLDS) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, dev and test exactly as EasyNLP's ``generate_senti_data.py`` makes them.

    Shuffle with ``df.sample(frac=1, random_state=seed)``; a stratified (on sentiment) 10-fold
    split with the same seed: its first held-out fold is test, the rest raw-train; the same
    splitter on raw-train: first held-out fold is dev, the rest train. Rows keep the order
    sklearn gives and their index from ``df``. With the real data: 6480 / 720 / 800.
    """
    from sklearn.model_selection import StratifiedKFold  # only this function needs sklearn

    counts = df["sentiment"].value_counts()
    if len(counts) < 2 or counts.min() < 2 * n_splits:
        raise UserError(f"too few reviews to split: need at least {2 * n_splits} of each "
                        f"sentiment, have {counts.to_dict()}")
    shuffled = df.sample(frac=1.0, random_state=seed)

    def first_fold(frame: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        keep, held_out = next(iter(skf.split(frame, frame["sentiment"])))
        return frame.iloc[keep], frame.iloc[held_out]

    raw_train, test = first_fold(shuffled)
    train, dev = first_fold(raw_train)
    return train, dev, test


# ------------------------------------------------------------------------------ TSV files

def _validate_split_rows(df: pd.DataFrame, path: PathLike,
                         domains: Optional[Sequence[str]] = None) -> None:
    for i, (review, domain, sentiment) in enumerate(
            zip(df["review"], df["domain"], df["sentiment"])):
        line = i + 2
        if review == "":
            raise UserError("empty review", path=path, line=line)
        check_choice(domain, "domain", domains, path, line)
        check_choice(sentiment, "sentiment", SENTI_LABELS, path, line)


def write_split_tsv(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split (columns review, domain, sentiment) as TSV, atomically.

    Raises:
      UserError: a field holds a TAB/newline, or a value the reader would refuse.
    """
    require_columns(df, SPLIT_COLUMNS, path)
    frame = df[list(SPLIT_COLUMNS)]
    for column in SPLIT_COLUMNS:  # type errors first: the value checks compare strings
        for i, v in enumerate(frame[column]):
            check_field(v, column, path, i + 2)
    _validate_split_rows(frame, path)
    write_tsv(frame.itertuples(index=False, name=None), SPLIT_COLUMNS, path)


def write_split_tsv_easynlp(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split as EasyNLP's script does, byte for byte: pandas' ``to_csv(sep="\\t",
    index=False)``, which quotes a review holding a ``"`` (and doubles the quotes inside).
    EasyNLP's later stages, and metakd's readers, take those quotes as part of the text."""
    require_columns(df, SPLIT_COLUMNS, path)
    with atomic_open(path) as f:
        df[list(SPLIT_COLUMNS)].to_csv(f, sep="\t", index=False)


def read_split_tsv(path: PathLike, domains: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Read a split file written by :func:`write_split_tsv` (all columns str).

    Args:
      domains: if given, a domain outside it is an error.
    Raises:
      UserError: naming file and line for a bad header, a wrong number of fields, an unknown
        sentiment, an empty review or domain.
    """
    df = read_tsv(path, SPLIT_COLUMNS)
    _validate_split_rows(df, path, domains)
    return df


def split_to_standard(df: pd.DataFrame, split: str,
                      weights: Optional[Sequence[float]] = None) -> pd.DataFrame:
    """A split frame (review, domain, sentiment) in the standard schema, rows in the same order.

    ``text_b`` is empty (single sentences); ``weight`` is ``weights`` or 0.0.
    """
    n = len(df)
    if weights is not None and len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} rows")
    return pd.DataFrame({
        "guid": make_guids(split, n),
        "text_a": df["review"].to_list(),
        "text_b": [""] * n,
        "label": df["sentiment"].to_list(),
        "domain": df["domain"].to_list(),
        "weight": [0.0] * n if weights is None else [float(w) for w in weights],
    })


class SentiProcessor(Processor):
    """Where the SENTI files live and what their labels and domains are."""

    task = "senti"
    labels: Tuple[str, ...] = SENTI_LABELS
    domains: Tuple[str, ...] = SENTI_DOMAINS
    split_domains = None  # read_split takes any domain (the standard split checks them)

    def read_split_file(self, path: PathLike, domains: Optional[Sequence[str]]) -> pd.DataFrame:
        return read_split_tsv(path, domains=domains)

    def to_standard(self, df: pd.DataFrame, split: str) -> pd.DataFrame:
        return split_to_standard(df, split)
