"""COMPAT=easynlp's data: the split files EasyNLP's generate_senti_data.py writes, byte for byte.

The script's extraction is rewritten here from its description (docs/reference.md section 2.1),
not imported from metakd: a line-based state machine whose append sits outside its length test.
"""
from __future__ import annotations

import hashlib
import os

import pandas as pd
from sklearn.model_selection import StratifiedKFold

from _tiny import call_main
from conftest import SORTED_DATA, needs_data

DOMAINS = ["books", "dvd", "electronics", "kitchen_&_housewares"]


def easynlp_extract(path, last):
    """Reviews of one file as the script builds them; ``last`` carries over between files."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    out, inside, text = [], False, None
    for line in lines:
        if line == "<review_text>\n":
            inside, text = True, " "
            continue
        if line == "</review_text>\n":
            inside = False
            out.append(text)
            continue
        if inside:
            if len(line) > 1:
                last = line[:len(line) - 1]
                if last[0] == "\t":
                    last = last[1:len(last) - 1]
            text += last
    return out, last


def easynlp_files(root, out):
    rows = []
    for d in DOMAINS:
        pos, last = easynlp_extract(os.path.join(root, d, "positive.review"), None)
        neg, _ = easynlp_extract(os.path.join(root, d, "negative.review"), last)
        label = d.split("_")[0]
        rows += [{"review": r.replace("\t", " "), "domain": label, "sentiment": "positive"} for r in pos]
        rows += [{"review": r.replace("\t", " "), "domain": label, "sentiment": "negative"} for r in neg]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=11111)
    tr, te = next(iter(StratifiedKFold(n_splits=10, random_state=11111, shuffle=True).split(df, df["sentiment"])))
    raw, test = df.iloc[tr], df.iloc[te]
    tr, va = next(iter(StratifiedKFold(n_splits=10, random_state=11111, shuffle=True).split(raw, raw["sentiment"])))
    os.makedirs(out, exist_ok=True)
    for name, frame in (("train", raw.iloc[tr]), ("dev", raw.iloc[va]), ("test", test)):
        frame.to_csv(os.path.join(out, f"{name}.tsv"), sep="\t", index=False)


def _review_file(i, sentiment):
    """Reviews with every quirk: blank lines (repeat the previous line), TAB-led lines (lose their
    first and last characters), quotes (pandas quotes the field), lines glued without a space."""
    blocks = []
    for k in range(12):
        body = [f"Review {k} of file {i} is {sentiment}.\n", "It was \"great\", she said.\n" if k % 3 == 0 else "Fine.\n"]
        if k % 2:
            body.insert(1, "\n")            # a blank line inside: the previous line again
        if k % 4 == 1:
            body.append("\tTabbed line here.\n")
        if k == 5:
            body = ["\n"] + body            # blank first line: the last line of the previous review
        blocks.append("<review>\n<review_text>\n" + "".join(body) + "</review_text>\n</review>\n")
    return "".join(blocks)


def test_compat_split_files_are_easynlps_byte_for_byte(tmp_path):
    root = tmp_path / "sorted_data_acl"
    for i, d in enumerate(DOMAINS):
        (root / d).mkdir(parents=True)
        for s in ("positive", "negative"):
            (root / d / f"{s}.review").write_text(_review_file(i, s), encoding="utf-8")
    easynlp_files(str(root), str(tmp_path / "easynlp"))
    code, out, err = call_main("metakd.get_data", ["--source", root, "--out", tmp_path / "ours", "--compat", "easynlp"])
    assert code == 0, err
    for name in ("train", "dev", "test"):
        want = (tmp_path / "easynlp" / f"{name}.tsv").read_bytes()
        assert (tmp_path / "ours" / f"{name}.tsv").read_bytes() == want, name
    text = (tmp_path / "ours" / "train.tsv").read_text()
    assert '""great""' in text  # pandas quoting reached the file
    assert "is positive.It was" in text or "is negative.It was" in text  # glued lines
    # the default mode reads the same files cleanly instead
    code, _, err = call_main("metakd.get_data", ["--source", root, "--out", tmp_path / "clean"])
    assert code == 0, err
    assert '""' not in (tmp_path / "clean" / "train.tsv").read_text()


@needs_data
def test_compat_split_files_on_the_real_reviews(tmp_path):
    """Checked against the rewrite above once (2026-11-29): the same bytes; 1,619 of the 6,480
    training reviews are quoted; the digests pin the files."""
    code, _, err = call_main("metakd.get_data", ["--source", SORTED_DATA, "--out", tmp_path, "--compat", "easynlp"])
    assert code == 0, err
    digests = {name: hashlib.md5((tmp_path / f"{name}.tsv").read_bytes()).hexdigest() for name in ("train", "dev", "test")}
    assert digests == {"train": "b9b267549146fc7bf3c359cc497aa597", "dev": "6e1778bb039983650037ca569680d1cf",
                       "test": "5cf2d59bb400a50dfce7be64b2eaa23e"}
    train = pd.read_csv(tmp_path / "train.tsv", sep="\t", quoting=3, dtype=str, keep_default_na=False)
    assert len(train) == 6480 and train.review.str.startswith('"').sum() == 1619
    assert train.review.str.startswith(" ").sum() == 6480 - 1619  # every unquoted review starts with a space
