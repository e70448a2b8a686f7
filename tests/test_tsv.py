"""data/tsv.py: the one decode rule (UTF-8, a leading byte-order mark dropped) for every file metakd
reads, and the processors' shared methods."""
from __future__ import annotations

import pandas as pd
import pytest

from metakd.data import senti, tasks, tsv
from metakd.infra.errors import UserError
from metakd.predict import read_texts

BOM = b"\xef\xbb\xbf"
SPLIT = "review\tdomain\tsentiment\nA fine book.\tbooks\tpositive\nDull.\tdvd\tnegative\n"


def test_decode_drops_one_leading_bom_and_nothing_else(tmp_path):
    assert tsv.decode(BOM + "ab\ufeffc".encode(), tmp_path) == "ab\ufeffc"  # a BOM inside is text
    assert tsv.decode("ab".encode(), tmp_path) == "ab"
    assert tsv.decode(BOM + BOM + b"a", tmp_path) == "\ufeffa"  # only the mark itself


def test_decode_refuses_utf16_and_names_the_line_of_bad_utf8(tmp_path):
    with pytest.raises(UserError, match=r":1: not UTF-8: the file looks like UTF-16"):
        tsv.decode("text\n".encode("utf-16"), tmp_path / "f.tsv")
    with pytest.raises(UserError, match=r"f\.tsv:2: not valid UTF-8 .* at byte 3 of the line"):
        tsv.decode(b"ok\nab\xffc\n", tmp_path / "f.tsv")


def test_a_split_file_saved_with_a_bom_reads_as_without(tmp_path):
    """A split file edited in a spreadsheet and saved as "UTF-8" (with BOM) is the same file."""
    (tmp_path / "plain.tsv").write_bytes(SPLIT.encode())
    (tmp_path / "bom.tsv").write_bytes(BOM + SPLIT.encode())
    expected = pd.DataFrame({"review": ["A fine book.", "Dull."], "domain": ["books", "dvd"],
                             "sentiment": ["positive", "negative"]})
    for name in ("plain.tsv", "bom.tsv"):
        pd.testing.assert_frame_equal(senti.read_split_tsv(tmp_path / name), expected)


def test_a_standard_file_with_a_bom_keeps_its_first_column(tmp_path):
    text = "guid\ttext_a\ttext_b\tlabel\tdomain\tweight\ntrain-000000\tx\t\tpositive\tbooks\t0.25\n"
    (tmp_path / "s.tsv").write_bytes(BOM + text.encode())
    df = tsv.read_standard_tsv(tmp_path / "s.tsv")
    assert list(df.columns) == list(tsv.STANDARD_COLUMNS) and df["guid"].tolist() == ["train-000000"]
    assert df["weight"].tolist() == [0.25]


def test_predict_reads_a_csv_with_a_bom_by_its_header(tmp_path):
    (tmp_path / "in.csv").write_bytes(BOM + b"text,id\ngood,1\nbad,2\n")
    texts, pairs = read_texts(str(tmp_path / "in.csv"))
    assert texts == ["good", "bad"] and pairs is None


def test_the_processors_share_split_paths_and_refuse_an_unknown_split(tmp_path):
    pair = tasks.PairProcessor("tsv", ["a", "b"], ["d1", "d2"])
    for proc in (senti.SentiProcessor(), pair):
        assert proc.split_path(tmp_path, "dev") == tmp_path / "dev.tsv"
        with pytest.raises(UserError, match="unknown split 'valid'; allowed: train, dev, test"):
            proc.split_path(tmp_path, "valid")


def test_the_pair_processor_reads_its_split_and_its_standard_frame(tmp_path):
    frame = pd.DataFrame({"text_a": ["x", "y"], "text_b": ["", "z"], "label": ["a", "b"], "domain": ["d1", "d2"]})
    tsv.write_pair_split(frame, tmp_path / "train.tsv")
    proc = tasks.PairProcessor("tsv", ["a", "b"], ["d1", "d2"])
    pd.testing.assert_frame_equal(proc.read_split(tmp_path, "train"), frame)
    std = proc.standard_split(tmp_path / "train.tsv", "train")
    assert std["guid"].tolist() == ["train-000000", "train-000001"] and std["weight"].tolist() == [0.0, 0.0]
    with pytest.raises(UserError, match="unknown domain 'd2'"):
        tasks.PairProcessor("tsv", ["a", "b"], ["d1", "d3"]).read_split(tmp_path, "train")


def test_senti_read_split_takes_any_domain_but_its_standard_split_checks_them(tmp_path):
    (tmp_path / "dev.tsv").write_text(SPLIT.replace("dvd", "toys"), encoding="utf-8")
    proc = senti.SentiProcessor()
    assert proc.read_split(tmp_path, "dev")["domain"].tolist() == ["books", "toys"]
    with pytest.raises(UserError, match="unknown domain 'toys'"):
        proc.standard_split(tmp_path / "dev.tsv", "dev")
