"""The Amazon multi-domain sentiment dataset (SENTI): parsing, the reference split, TSV files.

Blitzer et al.'s ``sorted_data_acl`` holds, per product domain, ``positive.review`` and
``negative.review`` in a pseudo-XML format that is not well-formed XML, so it is read line by
line. The split reproduces EasyNLP's ``generate_senti_data.py`` exactly (same reviews in each
split, same order); the text itself is cleaner than EasyNLP's (lines are joined with a space
instead of glued, no characters dropped, no CSV quote-escaping in the TSV files).

Two TSV schemas (TAB-separated, one header line, UTF-8, never quoted):

* split files ``train.tsv``, ``dev.tsv``, ``test.tsv``: ``review domain sentiment``;
* the "standard" schema used after processing (``train_with_weights.tsv``,
  ``dev_standard.tsv``, ...): ``guid text_a text_b label domain weight``, with ``text_b`` empty
  for single sentences and ``weight`` a float.
"""
from __future__ import annotations

import csv
import math
import os
from collections import deque
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import pandas as pd

from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_open

PathLike = Union[str, os.PathLike]

SPLIT_COLUMNS: Tuple[str, ...] = ("review", "domain", "sentiment")
STANDARD_COLUMNS: Tuple[str, ...] = ("guid", "text_a", "text_b", "label", "domain", "weight")
# Label ids follow EasyNLP's label_enumerate_values order: positive -> 0, negative -> 1.
SENTI_LABELS: Tuple[str, ...] = ("positive", "negative")
SENTI_DOMAINS: Tuple[str, ...] = ("books", "dvd", "electronics", "kitchen")
SPLIT_SEED = 11111
N_FOLDS = 10

_LAYOUT = ("expected the sorted_data_acl layout: <folder>/<domain>/positive.review and "
           "<domain>/negative.review (e.g. books, dvd, electronics, kitchen_&_housewares)")
# Characters that would break a TAB-separated line (pandas also cuts a field at a NUL).
_FORBIDDEN = {"\t": "a TAB", "\n": "a newline", "\r": "a carriage return", "\x00": "a NUL"}


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

def _check_field(value: object, column: str, path: PathLike, line: int) -> str:
    if not isinstance(value, str):
        raise UserError(f"column {column!r} must be text, got {type(value).__name__} {value!r}",
                        path=path, line=line)
    for ch, what in _FORBIDDEN.items():
        if ch in value:
            raise UserError(f"column {column!r} contains {what}, which a TSV field cannot hold "
                            "(normalise the text first)", path=path, line=line)
    return value


def _write_tsv(rows: Iterable[Sequence[str]], columns: Sequence[str], path: PathLike) -> None:
    """Fields joined by TABs, one row a line: csv.QUOTE_NONE without an escape character."""
    with atomic_open(path) as f:
        f.write("\t".join(columns) + "\n")
        for line, row in enumerate(rows, 2):
            fields = [_check_field(v, c, path, line) for v, c in zip(row, columns)]
            f.write("\t".join(fields) + "\n")


def _require_columns(df: pd.DataFrame, columns: Sequence[str], path: PathLike) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"cannot write: the frame lacks column(s) {', '.join(missing)}", path=path)


def _clip(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value))} chars)"


def _looks_utf16(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(data) >= 4 and (data[1:4:2] == b"\x00\x00" or data[0:4:2] == b"\x00\x00"))


def _decode(data: bytes, path: Path) -> str:
    """The file's text; a clear error (with the line) if it is not UTF-8."""
    if _looks_utf16(data):
        raise UserError("the file looks like UTF-16 text; save it as UTF-8", path=path, line=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"not valid UTF-8 ({e.reason} at byte {column} of the line); save the file as UTF-8",
                        path=path, line=line) from None


def _scan_tsv(path: Path, columns: Sequence[str],
              header_aliases: Dict[str, str]) -> int:
    """Check encoding, header and field counts line by line; return the number of data rows.

    pandas alone cannot say which line has too few fields, so this pass does, and guarantees
    that pandas' rows map 1:1 onto lines 2, 3, ...
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}", path=path) from None
    text = _decode(data, path)
    if text.startswith("\ufeff"):
        raise UserError("starts with a byte-order mark; save it as UTF-8 without BOM", path=path,
                        line=1)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    expected = "\t".join(columns)
    if not lines:
        raise UserError(f"empty file; expected a header line {expected!r}", path=path)
    header = [header_aliases.get(c, c) for c in lines[0].rstrip("\r").split("\t")]
    if header != list(columns):
        raise UserError(f"header is {_clip(lines[0])}, expected {expected!r}", path=path, line=1)
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
    return len(lines) - 1


def _read_tsv(path: PathLike, columns: Sequence[str],
              header_aliases: Optional[Dict[str, str]] = None) -> pd.DataFrame:
    path = Path(path)
    n_rows = _scan_tsv(path, columns, header_aliases or {})
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False,
                     quoting=csv.QUOTE_NONE, encoding="utf-8", skip_blank_lines=False,
                     header=0, names=list(columns), engine="c")
    if len(df) != n_rows:  # cannot happen after _scan_tsv; a guard against pandas surprises
        raise UserError(f"read {len(df)} rows but the file has {n_rows}", path=path)
    return df


def _check_choice(value: str, column: str, allowed: Optional[Sequence[str]], path: PathLike,
                  line: int) -> None:
    if value == "":
        raise UserError(f"empty {column}", path=path, line=line)
    if allowed is not None and value not in allowed:
        raise UserError(f"unknown {column} {_clip(value)}; allowed: {', '.join(allowed)}",
                        path=path, line=line)


def _validate_split_rows(df: pd.DataFrame, path: PathLike,
                         domains: Optional[Sequence[str]] = None) -> None:
    for i, (review, domain, sentiment) in enumerate(
            zip(df["review"], df["domain"], df["sentiment"])):
        line = i + 2
        if review == "":
            raise UserError("empty review", path=path, line=line)
        _check_choice(domain, "domain", domains, path, line)
        _check_choice(sentiment, "sentiment", SENTI_LABELS, path, line)


def write_split_tsv(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split (columns review, domain, sentiment) as TSV, atomically.

    Raises:
      UserError: a field holds a TAB/newline, or a value the reader would refuse.
    """
    _require_columns(df, SPLIT_COLUMNS, path)
    frame = df[list(SPLIT_COLUMNS)]
    for column in SPLIT_COLUMNS:  # type errors first: the value checks compare strings
        for i, v in enumerate(frame[column]):
            _check_field(v, column, path, i + 2)
    _validate_split_rows(frame, path)
    _write_tsv(frame.itertuples(index=False, name=None), SPLIT_COLUMNS, path)


def write_split_tsv_easynlp(df: pd.DataFrame, path: PathLike) -> None:
    """Write a split as EasyNLP's script does, byte for byte: pandas' ``to_csv(sep="\\t",
    index=False)``, which quotes a review holding a ``"`` (and doubles the quotes inside).
    EasyNLP's later stages, and metakd's readers, take those quotes as part of the text."""
    _require_columns(df, SPLIT_COLUMNS, path)
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
    df = _read_tsv(path, SPLIT_COLUMNS)
    _validate_split_rows(df, path, domains)
    return df


def make_guids(split: str, n: int) -> List[str]:
    """Deterministic example ids: ``train-000000``, ``train-000001``, ..."""
    return [f"{split}-{i:06d}" for i in range(n)]


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
    _require_columns(df, STANDARD_COLUMNS, path)
    rows = []
    for i, row in enumerate(df[list(STANDARD_COLUMNS)].itertuples(index=False, name=None)):
        line = i + 2
        fields = [_check_field(v, c, path, line) for v, c in zip(row[:5], STANDARD_COLUMNS)]
        guid, text_a, _, label, domain = fields
        if guid == "" or text_a == "":
            raise UserError(f"empty {'guid' if guid == '' else 'text_a'}", path=path, line=line)
        _check_choice(label, "label", None, path, line)
        _check_choice(domain, "domain", None, path, line)
        rows.append(fields + [_format_weight(row[5], path, line)])
    _write_tsv(rows, STANDARD_COLUMNS, path)


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
    df = _read_tsv(path, STANDARD_COLUMNS, header_aliases={"embeddings": "weight"})
    weights = []
    seen: Dict[str, int] = {}
    for i, (guid, text_a, label, domain, weight) in enumerate(
            zip(df["guid"], df["text_a"], df["label"], df["domain"], df["weight"])):
        line = i + 2
        if guid == "":
            raise UserError("empty guid", path=path, line=line)
        if guid in seen:
            raise UserError(f"guid {_clip(guid)} already used on line {seen[guid]}", path=path,
                            line=line)
        seen[guid] = line
        if text_a == "":
            raise UserError("empty text_a", path=path, line=line)
        _check_choice(label, "label", labels, path, line)
        _check_choice(domain, "domain", domains, path, line)
        try:
            w = float(weight)
        except ValueError:
            raise UserError(f"weight {_clip(weight)} is not a number", path=path, line=line) from None
        if not math.isfinite(w):
            raise UserError(f"weight {_clip(weight)} is not finite", path=path, line=line)
        weights.append(w)
    df["weight"] = pd.Series(weights, index=df.index, dtype="float64")
    return df


class SentiProcessor:
    """Where the SENTI files live and what their labels and domains are (BERT-style processor)."""

    labels: Tuple[str, ...] = SENTI_LABELS
    domains: Tuple[str, ...] = SENTI_DOMAINS
    splits: Tuple[str, ...] = ("train", "dev", "test")

    def split_path(self, data_dir: PathLike, split: str) -> Path:
        if split not in self.splits:
            raise UserError(f"unknown split {split!r}; allowed: {', '.join(self.splits)}")
        return Path(data_dir) / f"{split}.tsv"

    def read_split(self, data_dir: PathLike, split: str) -> pd.DataFrame:
        return read_split_tsv(self.split_path(data_dir, split))

    def standard_split(self, path: PathLike, split: str) -> pd.DataFrame:
        """A split file as a standard frame (single sentences, weight 0)."""
        return split_to_standard(read_split_tsv(path, domains=self.domains), split)

    def read_standard(self, path: PathLike) -> pd.DataFrame:
        return read_standard_tsv(path, labels=self.labels)
