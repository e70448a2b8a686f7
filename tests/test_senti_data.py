"""SENTI data layer: .review parsing, the EasyNLP split, and the two TSV schemas."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import StratifiedKFold

from metakd.data import senti, tsv
from metakd.data.synthetic import make_synthetic_reviews
from metakd.infra.errors import UserError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_multidomain" / "sorted_data_acl"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real SENTI data not found at {REAL} "
                                "(../shared is only there for developers and CI)")

HANDMADE = (
    "<reviews>\n"
    "<review>\n"
    "<title>\n"
    "A & B < C\n"
    "</title>\n"
    "<review_text>\n"
    'First line with a "quote" & an ampersand.\n'
    "\n"
    "\tTabbed\tline with <b>tag</b> and x < y   spaces  \n"
    "Last line.\n"
    "</review_text>\n"
    "</review>\n"
    "<review>\n"
    "<review_text>\n"
    "Single line review\n"
    "</review_text>\n"
    "</review>\n"
    "<review>\n"
    "<review_text>\n"
    "\n"
    "   \t \n"
    "</review_text>\n"
    "</review>\n"
    "<review>\n"
    "<review_text>\n"
    "Caf\u00e9 \u2013 na\u00efve \u2713 5.0 stars!!\n"
    "glued\n"
    "</review_text>\n"
    "</review>\n"
    "</reviews>\n"
)
HANDMADE_EXPECTED = [
    'First line with a "quote" & an ampersand. Tabbed line with <b>tag</b> and x < y spaces Last line.',
    "Single line review",
    "Caf\u00e9 \u2013 na\u00efve \u2713 5.0 stars!! glued",
]


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline=newline) as f:
        f.write(text)
    return path


# ------------------------------------------------------------------------------ parsing

def test_parse_handmade_review_file(tmp_path):
    path = write(tmp_path / "positive.review", HANDMADE)
    assert senti.parse_review_file(path) == HANDMADE_EXPECTED


def test_parse_crlf_file_gives_the_same_text(tmp_path):
    path = write(tmp_path / "positive.review", HANDMADE, newline="\r\n")
    assert senti.parse_review_file(path) == HANDMADE_EXPECTED


def test_parse_bad_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "negative.review"
    path.write_bytes(b"<review_text>\nok\nbad \xff byte\n</review_text>\n")
    with pytest.raises(UserError, match=r"negative.review:3: not valid UTF-8"):
        senti.parse_review_file(path)


@pytest.mark.parametrize("text, line, what", [
    ("<review_text>\na\n", 1, "never closed"),
    ("<review_text>\na\n<review_text>\n</review_text>\n", 3, "inside the review opened at line 1"),
    ("a\n</review_text>\n", 2, "without a matching"),
])
def test_parse_unbalanced_tags(tmp_path, text, line, what):
    path = write(tmp_path / "x.review", text)
    with pytest.raises(UserError, match=rf"x.review:{line}: .*{what}"):
        senti.parse_review_file(path)


def test_parse_file_without_reviews(tmp_path):
    path = write(tmp_path / "x.review", "<review>\n<title>\nno text\n</title>\n</review>\n")
    with pytest.raises(UserError, match="no <review_text>"):
        senti.parse_review_file(path)


def make_layout(root: Path, domains=("books", "kitchen_&_housewares")) -> Path:
    for d in domains:
        for s in ("positive", "negative"):
            body = "".join(f"<review_text>\n{d} {s} {i}\n</review_text>\n" for i in range(2))
            write(root / d / f"{s}.review", body)
    return root


def test_load_order_and_domain_labels(tmp_path):
    root = make_layout(tmp_path / "sorted_data_acl", domains=("kitchen_&_housewares", "books"))
    write(root / "books" / "negative.review",
          "<review_text>\nbooks negative 0\n</review_text>\n<review_text>\n\n</review_text>\n")
    (root / "notes").mkdir()  # a folder without review files is ignored
    df = senti.load_sorted_data_acl(root)
    assert list(df.columns) == ["review", "domain", "sentiment"]
    assert df.values.tolist() == [
        ["books positive 0", "books", "positive"],
        ["books positive 1", "books", "positive"],
        ["books negative 0", "books", "negative"],
        ["kitchen_&_housewares positive 0", "kitchen", "positive"],
        ["kitchen_&_housewares positive 1", "kitchen", "positive"],
        ["kitchen_&_housewares negative 0", "kitchen", "negative"],
        ["kitchen_&_housewares negative 1", "kitchen", "negative"],
    ]
    assert df.attrs["empty_reviews_skipped"] == {str(root / "books" / "negative.review"): 1}


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder; expected the sorted_data_acl layout"):
        senti.load_sorted_data_acl(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no domain folders found; expected the sorted_data_acl"):
        senti.load_sorted_data_acl(tmp_path / "empty")
    half = tmp_path / "half"
    write(half / "books" / "positive.review", "<review_text>\nx\n</review_text>\n")
    with pytest.raises(UserError, match="has no negative.review"):
        senti.load_sorted_data_acl(half)
    clash = make_layout(tmp_path / "clash", domains=("kitchen", "kitchen_&_housewares"))
    with pytest.raises(UserError, match="both give domain label 'kitchen'"):
        senti.load_sorted_data_acl(clash)


def test_find_sorted_data_acl(tmp_path):
    extracted = tmp_path / "domain_sentiment_data"
    make_layout(extracted / "processed_acl")  # same file names, bag-of-words content
    make_layout(extracted / "sorted_data_acl")
    assert senti.find_sorted_data_acl(extracted) == extracted / "sorted_data_acl"
    assert senti.find_sorted_data_acl(extracted / "sorted_data_acl") == extracted / "sorted_data_acl"
    other = make_layout(tmp_path / "a" / "b" / "my_reviews")
    assert senti.find_sorted_data_acl(tmp_path / "a") == other
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no sorted_data_acl folder found"):
        senti.find_sorted_data_acl(tmp_path / "nothing")


# -------------------------------------------------------------------------------- split

def easynlp_split_indices(n: int, sentiments: list) -> tuple:
    """The split of EasyNLP's generate_senti_data.py, written out again from its description."""
    frame = pd.DataFrame({"sentiment": sentiments})
    frame = frame.sample(frac=1.0, random_state=11111)
    for tr, te in StratifiedKFold(n_splits=10, random_state=11111, shuffle=True).split(
            frame, frame["sentiment"]):
        raw_train, test = frame.iloc[tr], frame.iloc[te]
        break
    for tr, va in StratifiedKFold(n_splits=10, random_state=11111, shuffle=True).split(
            raw_train, raw_train["sentiment"]):
        train, dev = raw_train.iloc[tr], raw_train.iloc[va]
        break
    return list(train.index), list(dev.index), list(test.index)


def test_split_synthetic_sizes_disjoint_deterministic():
    df = make_synthetic_reviews(n_per_domain_label=50, seed=3)
    train, dev, test = senti.split_reference(df)
    assert (len(train), len(dev), len(test)) == (324, 36, 40)
    ids = [set(x.index) for x in (train, dev, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(df.index)
    assert test["sentiment"].value_counts().to_dict() == {"positive": 20, "negative": 20}
    assert dev["sentiment"].value_counts().to_dict() == {"positive": 18, "negative": 18}
    for a, b in zip((train, dev, test), senti.split_reference(df.copy())):
        pd.testing.assert_frame_equal(a, b)
    # rows are the input rows, unchanged
    pd.testing.assert_frame_equal(test, df.loc[test.index])
    assert (list(train.index), list(dev.index), list(test.index)) == easynlp_split_indices(
        len(df), list(df["sentiment"]))


def test_split_too_small():
    df = make_synthetic_reviews(n_per_domain_label=2)
    with pytest.raises(UserError, match="too few reviews to split"):
        senti.split_reference(df)


# ---------------------------------------------------------------------------- split TSV

def test_split_tsv_round_trip(tmp_path):
    df = pd.DataFrame({"review": ['a "quoted" review, with & and <', "NaN", "null", " lead"],
                       "domain": ["books", "dvd", "dvd", "kitchen"],
                       "sentiment": ["positive", "negative", "positive", "negative"]})
    path = tmp_path / "train.tsv"
    senti.write_split_tsv(df, path)
    raw = path.read_text(encoding="utf-8")
    assert raw.splitlines()[0] == "review\tdomain\tsentiment"
    assert raw.splitlines()[1] == 'a "quoted" review, with & and <\tbooks\tpositive'
    pd.testing.assert_frame_equal(senti.read_split_tsv(path), df)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\t\n\r\x00",
                                               blacklist_categories=("Cs",)), min_size=1),
                min_size=1, max_size=5))
def test_split_tsv_round_trip_any_text(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("tsv") / "x.tsv"
    df = pd.DataFrame({"review": texts, "domain": ["books"] * len(texts),
                       "sentiment": ["positive"] * len(texts)})
    senti.write_split_tsv(df, path)
    assert senti.read_split_tsv(path)["review"].tolist() == texts


@pytest.mark.parametrize("bad", ["a\tb", "a\nb", "a\rb"])
def test_write_refuses_tab_newline(tmp_path, bad):
    df = pd.DataFrame({"review": ["ok", bad], "domain": ["books"] * 2, "sentiment": ["positive"] * 2})
    with pytest.raises(UserError, match=r"x.tsv:3: column 'review' contains"):
        senti.write_split_tsv(df, tmp_path / "x.tsv")
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("content, line, message", [
    ("text\tdomain\tsentiment\na\tbooks\tpositive\n", 1, "header is"),
    ("review\tdomain\tsentiment\na\tbooks\tpositive\nb\tpositive\n", 3,
     "expected 3 TAB-separated fields, found 2"),
    ("review\tdomain\tsentiment\na\tbooks\tpositive\tx\n", 2, "expected 3 TAB-separated fields, found 4"),
    ("review\tdomain\tsentiment\na\tbooks\tpositive\n\nb\tdvd\tnegative\n", 3,
     "expected 3 TAB-separated fields, found 1"),
    ("review\tdomain\tsentiment\na\tbooks\tneutral\n", 2, "unknown sentiment 'neutral'; allowed: positive, negative"),
    ("review\tdomain\tsentiment\na\tbooks\tpositive\nb\t\tnegative\n", 3, "empty domain"),
    ("review\tdomain\tsentiment\n\tbooks\tpositive\n", 2, "empty review"),
    ("review\tdomain\tsentiment\r\na\tbooks\tpositive\r\n", 1, "carriage return"),
])
def test_read_split_errors(tmp_path, content, line, message):
    path = write(tmp_path / "train.tsv", content)
    with pytest.raises(UserError) as e:
        senti.read_split_tsv(path)
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert message in str(e.value)


def test_read_split_other_errors(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"review\tdomain\tsentiment\nok\tbooks\tpositive\nbad \xe9\tbooks\tpositive\n")
    with pytest.raises(UserError, match=r"dev.tsv:3: not valid UTF-8"):
        senti.read_split_tsv(path)
    write(path, "")
    with pytest.raises(UserError, match="empty file"):
        senti.read_split_tsv(path)
    with pytest.raises(UserError, match="cannot read"):
        senti.read_split_tsv(tmp_path / "missing.tsv")
    write(path, "review\tdomain\tsentiment\na\tmusic\tpositive\n")
    with pytest.raises(UserError, match=r"dev.tsv:2: unknown domain 'music'; allowed: books, dvd"):
        senti.read_split_tsv(path, domains=["books", "dvd"])


# ------------------------------------------------------------------------- standard TSV

def standard_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "guid": tsv.make_guids("train", 3),
        "text_a": ["a review", 'with "quotes"', "third"],
        "text_b": ["", "", "a second sentence"],
        "label": ["positive", "negative", "positive"],
        "domain": ["books", "dvd", "kitchen"],
        "weight": [0.1 + 0.2, -1e-300, 0.7071067811865476],
    })


def test_standard_round_trip_exact(tmp_path):
    df = standard_frame()
    path = tmp_path / "train_with_weights.tsv"
    tsv.write_standard_tsv(df, path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "guid\ttext_a\ttext_b\tlabel\tdomain\tweight"
    back = tsv.read_standard_tsv(path, labels=senti.SENTI_LABELS, domains=senti.SENTI_DOMAINS)
    pd.testing.assert_frame_equal(back, df)
    assert back["weight"].tolist() == df["weight"].tolist()  # bit-identical floats


def test_make_guids_and_split_to_standard():
    assert tsv.make_guids("dev", 2) == ["dev-000000", "dev-000001"]
    split = pd.DataFrame({"review": ["x", "y"], "domain": ["dvd", "books"],
                          "sentiment": ["negative", "positive"]}, index=[7, 3])
    std = senti.split_to_standard(split, "dev", weights=[0.5, 0.25])
    assert std.to_dict("list") == {"guid": ["dev-000000", "dev-000001"], "text_a": ["x", "y"],
                                   "text_b": ["", ""], "label": ["negative", "positive"],
                                   "domain": ["dvd", "books"], "weight": [0.5, 0.25]}
    assert senti.split_to_standard(split, "dev")["weight"].tolist() == [0.0, 0.0]


def test_standard_reads_easynlp_dev_header(tmp_path):
    path = write(tmp_path / "dev_standard.tsv",
                 "guid\ttext_a\ttext_b\tlabel\tdomain\tembeddings\ndev-0\tnice\t\tpositive\tdvd\t0\n")
    df = tsv.read_standard_tsv(path)
    assert list(df.columns) == list(tsv.STANDARD_COLUMNS)
    assert df["weight"].tolist() == [0.0]


HEADER = "guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n"


@pytest.mark.parametrize("row, message", [
    ("g1\tx\t\tneutral\tbooks\t0.5", "unknown label 'neutral'; allowed: positive, negative"),
    ("g1\tx\t\tpositive\tmusic\t0.5", "unknown domain 'music'; allowed: books, dvd, electronics, kitchen"),
    ("g1\tx\t\tpositive\tbooks\tabc", "weight 'abc' is not a number"),
    ("g1\tx\t\tpositive\tbooks\tnan", "weight 'nan' is not finite"),
    ("g1\tx\t\tpositive\tbooks\t", "weight '' is not a number"),
    ("g1\t\t\tpositive\tbooks\t1", "empty text_a"),
    ("\tx\t\tpositive\tbooks\t1", "empty guid"),
    ("g0\tx\t\tpositive\tbooks\t1", "guid 'g0' already used on line 2"),
    ("g1\tx\tpositive\tbooks\t1", "expected 6 TAB-separated fields, found 5"),
])
def test_read_standard_errors(tmp_path, row, message):
    path = write(tmp_path / "s.tsv", HEADER + "g0\tok\t\tnegative\tdvd\t1.0\n" + row + "\n")
    with pytest.raises(UserError) as e:
        tsv.read_standard_tsv(path, labels=senti.SENTI_LABELS, domains=senti.SENTI_DOMAINS)
    assert str(e.value).startswith(f"{path}:3: ")
    assert message in str(e.value)


def test_write_standard_refuses_bad_weight(tmp_path):
    df = standard_frame()
    df.loc[1, "weight"] = math.inf
    with pytest.raises(UserError, match=r"s.tsv:3: weight inf is not finite"):
        tsv.write_standard_tsv(df, tmp_path / "s.tsv")
    with pytest.raises(UserError, match="lacks column"):
        tsv.write_standard_tsv(df.drop(columns=["text_b"]), tmp_path / "s.tsv")


# ---------------------------------------------------------------------------- real data

def easynlp_parse(path: Path) -> list:
    """EasyNLP's parser as docs/reference.md section 2.1 describes it: lines glued, TAB-led lines lose their
    first and last character. (Its code also appends the previous line again for every blank
    line inside a review, 2502 of the 8000 reviews; that repetition is left out here, only the
    characters kept matter.) Returns (text, had_tab_line) pairs.
    """
    out, text, inside, tabbed = [], "", False, False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line == "<review_text>":
            inside, text, tabbed = True, " ", False
        elif line == "</review_text>":
            inside = False
            out.append((text.replace("\t", " "), tabbed))
        elif inside and len(line) >= 1:
            if line[0] == "\t":
                line, tabbed = line[1:-1], True
            text += line
    return out


@needs_real
def test_real_data_split_and_round_trip(tmp_path):
    df = senti.load_sorted_data_acl(REAL)
    assert len(df) == 8000
    assert df.attrs["empty_reviews_skipped"] == {}
    assert df.groupby(["domain", "sentiment"]).size().to_dict() == {
        (d, s): 1000 for d in senti.SENTI_DOMAINS for s in senti.SENTI_LABELS}
    assert not df["review"].str.contains("[\t\n\r]").any()
    assert (df["review"] == df["review"].str.strip()).all()

    # The same reviews in the same order as EasyNLP's parser, text equal up to whitespace.
    ez = []
    for d in ("books", "dvd", "electronics", "kitchen_&_housewares"):
        for s in ("positive", "negative"):
            ez += easynlp_parse(REAL / d / f"{s}.review")
    assert len(ez) == 8000
    same = [("".join(ours.split()) == "".join(text.split())) for ours, (text, _) in zip(df["review"], ez)]
    assert all(ok for ok, (_, tabbed) in zip(same, ez) if not tabbed)
    assert sum(not ok for ok in same) <= sum(tabbed for _, tabbed in ez)

    train, dev, test = senti.split_reference(df)
    assert (len(train), len(dev), len(test)) == (6480, 720, 800)
    assert (list(train.index), list(dev.index), list(test.index)) == easynlp_split_indices(
        len(df), list(df["sentiment"]))
    counts = {name: part["domain"].value_counts().to_dict()
              for name, part in (("train", train), ("dev", dev), ("test", test))}
    print("per-domain split counts:", counts)
    assert counts == {
        "train": {"books": 1631, "dvd": 1621, "electronics": 1615, "kitchen": 1613},
        "dev": {"books": 170, "dvd": 194, "electronics": 172, "kitchen": 184},
        "test": {"books": 199, "dvd": 185, "electronics": 213, "kitchen": 203},
    }
    for d in senti.SENTI_DOMAINS:
        assert sum(counts[s][d] for s in counts) == 2000
    for name, part in (("train", train), ("dev", dev), ("test", test)):
        path = tmp_path / f"{name}.tsv"
        senti.write_split_tsv(part, path)
        back = senti.read_split_tsv(path, domains=senti.SENTI_DOMAINS)
        pd.testing.assert_frame_equal(back, part.reset_index(drop=True))
