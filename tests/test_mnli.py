"""TASK=mnli: the GLUE reader, the fixed split protocol, DATA_PORTION and the download, on a small
MNLI-format fixture (tests/_mnli.py; real MNLI is not available offline)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from _mnli import GENRES, LABELS, write_mnli, zip_mnli
from metakd.data import mnli, sampling, tsv
from metakd.infra.errors import UserError
from test_get_data import FileServer, check_one_line_error, run_cli


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnli") / "MNLI"
    rows = write_mnli(folder, n_train_per_genre=60, n_dev_per_genre=12, seed=3)
    return folder, rows


def labelled(rows):
    """The rows the reader must keep, as (text_a, text_b, label, domain), in file order."""
    return [(r["sentence1"], r["sentence2"], r["gold_label"], r["genre"]) for r in rows if r["gold_label"] != "-"]


def as_tuples(df):
    return list(df[["text_a", "text_b", "label", "domain"]].itertuples(index=False, name=None))


def test_reader_keeps_pairs_labels_genres_and_drops_dash_rows(fixture):
    folder, rows = fixture
    for name, written in (("train.tsv", rows["train"]), ("dev_matched.tsv", rows["dev"])):
        df = mnli.read_mnli_tsv(folder / name)
        assert as_tuples(df) == labelled(written)
        n_dash = sum(r["gold_label"] == "-" for r in written)
        assert n_dash > 0 and df.attrs["no_gold_label"] == n_dash
        assert set(df["domain"]) == set(GENRES) and set(df["label"]) == set(LABELS)
        assert any('"' in a for a in df["text_a"])  # never quoted: the quotes are text
    assert mnli.MNLI_DOMAINS == GENRES and sorted(mnli.MNLI_LABELS) == sorted(LABELS)


def test_reader_errors(tmp_path, fixture):
    folder, _ = fixture
    lines = (folder / "train.tsv").read_text().split("\n")
    bad = tmp_path / "train.tsv"
    bad.write_text("\n".join(lines[:5] + [lines[5].rsplit("\t", 1)[0]] + lines[6:]))
    with pytest.raises(UserError, match=r"train.tsv:6: expected 12 TAB-separated fields .*found 11"):
        mnli.read_mnli_tsv(bad)
    bad.write_text("\n".join(lines[:3] + [lines[3].replace("\tfiction\t", "\tletters\t")] + lines[4:]))
    with pytest.raises(UserError, match=r":4: genre 'letters' is not one of MNLI's five .*dev_mismatched"):
        mnli.read_mnli_tsv(bad)
    bad.write_text(lines[0].replace("gold_label", "label") + "\n")
    with pytest.raises(UserError, match="no column gold_label"):
        mnli.read_mnli_tsv(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no folder with train.tsv and dev_matched.tsv"):
        mnli.find_mnli_dir(tmp_path / "empty")


def expected_stratum_sizes(rows, fraction, at_least_one=False):
    """Written out: round half up per genre x label stratum (at least one row when asked)."""
    counts = Counter((r["genre"], r["gold_label"]) for r in rows if r["gold_label"] != "-")
    out = {}
    for key, n in counts.items():
        k = math.floor(fraction * n + 0.5)
        out[key] = max(k, 1) if at_least_one else k
    return out


def stratum_sizes(df):
    return dict(Counter(zip(df["domain"], df["label"])))


def test_split_protocol_sizes_and_determinism(fixture):
    folder, rows = fixture
    train_all, test = mnli.load_mnli(folder)
    splits = mnli.split_mnli(train_all, test)
    assert as_tuples(splits["test"]) == labelled(rows["dev"])  # test = dev_matched, in file order
    dev_sizes = expected_stratum_sizes(rows["train"], 0.1)
    assert stratum_sizes(splits["dev"]) == {k: v for k, v in dev_sizes.items() if v}
    # train + dev is train.tsv's labelled rows, each once; both keep the file order.
    everything = labelled(rows["train"])
    assert sorted(as_tuples(splits["train"]) + as_tuples(splits["dev"])) == sorted(everything)
    position = {t: i for i, t in enumerate(everything)}
    for name in ("train", "dev"):
        idx = [position[t] for t in as_tuples(splits[name])]
        assert idx == sorted(idx), name
    again = mnli.split_mnli(*mnli.load_mnli(folder))
    for name in ("train", "dev", "test"):
        pd.testing.assert_frame_equal(again[name], splits[name])
    other = mnli.split_mnli(train_all, test, seed=7)
    assert as_tuples(other["dev"]) != as_tuples(splits["dev"])
    assert stratum_sizes(other["dev"]) == stratum_sizes(splits["dev"])


@pytest.mark.parametrize("portion", [0.25, 0.05])
def test_data_portion(fixture, portion):
    folder, rows = fixture
    full = mnli.split_mnli(*mnli.load_mnli(folder))
    part = mnli.split_mnli(*mnli.load_mnli(folder), portion=portion)
    for name in ("train", "dev"):
        n = stratum_sizes(full[name])
        assert stratum_sizes(part[name]) == {k: max(1, math.floor(portion * c + 0.5)) for k, c in n.items()}
        assert set(as_tuples(part[name])) <= set(as_tuples(full[name]))
    pd.testing.assert_frame_equal(part["test"], full["test"])  # test stays whole
    again = mnli.split_mnli(*mnli.load_mnli(folder), portion=portion)
    pd.testing.assert_frame_equal(again["train"], part["train"])
    # A smaller portion is a subset of a larger one (the same seed).
    larger = mnli.split_mnli(*mnli.load_mnli(folder), portion=0.5)
    assert set(as_tuples(part["train"])) <= set(as_tuples(larger["train"]))


def test_stratified_take_against_a_written_out_rule():
    """Per stratum, the first rows (in the seed's permutation of all rows) up to its quota."""
    import numpy as np

    keys = ["a"] * 7 + ["b"] * 3 + ["c"] * 1
    mask = sampling.stratified_take(keys, 0.3, seed=5)
    perm = np.random.default_rng(5).permutation(len(keys))
    quota = {"a": 2, "b": 1, "c": 0}  # round half up of 0.3 n: 2.1, 0.9, 0.3
    expected = np.zeros(len(keys), bool)
    for i in perm:
        if quota[keys[i]] > 0:
            expected[i] = True
            quota[keys[i]] -= 1
    assert (mask == expected).all()
    assert sampling.stratified_take(keys, 0.01, seed=5, at_least_one=True).sum() == 3


def test_get_data_over_http_with_cache(tmp_path, fixture):
    folder, rows = fixture
    archive = zip_mnli(folder, tmp_path / "served" / "MNLI.zip")
    with FileServer(archive.parent) as server:
        url = server.url + "/MNLI.zip"
        for run in range(2):
            r = run_cli(["--task", "mnli", "--source", url, "--out", "out", "--cache-dir", "c",
                         "--data-portion", "0.5"], cwd=tmp_path)
            assert r.returncode == 0, r.stderr
        assert server.requests == ["/MNLI.zip"]  # the second run: from the cache
    assert "without a gold label (-)" in r.stdout
    out = tmp_path / "out"
    info = json.loads((out / "task.json").read_text())
    assert (info["task"], info["labels"], info["domains"]) == ("mnli", list(mnli.MNLI_LABELS), list(GENRES))
    assert info["split"]["data_portion"] == 0.5 and info["split"]["seed"] == 11111
    expected = mnli.split_mnli(*mnli.load_mnli(folder), portion=0.5)
    for name in ("train", "dev", "test"):
        got = tsv.read_pair_split(out / f"{name}.tsv", mnli.MNLI_LABELS, mnli.MNLI_DOMAINS)
        assert as_tuples(got) == as_tuples(expected[name]), name
        assert info["rows"][name] == len(got)
    # A local zip and the extracted folder give the same files.
    r = run_cli(["--task", "mnli", "--source", folder, "--out", "out2", "--data-portion", "0.5"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (tmp_path / "out2" / name).read_bytes() == (out / name).read_bytes()


def test_get_data_mnli_bad_options(tmp_path, fixture):
    folder, _ = fixture
    r = run_cli(["--task", "mnli", "--source", folder, "--out", "out", "--data-portion", "0"], cwd=tmp_path)
    check_one_line_error(r, "--data-portion must be in (0, 1]")
    r = run_cli(["--task", "mnli", "--source", "synthetic", "--out", "out"], cwd=tmp_path)
    check_one_line_error(r, "TASK=mnli takes a URL")
    r = run_cli(["--task", "senti", "--source", "synthetic", "--out", "out", "--data-portion", "0.5"], cwd=tmp_path)
    check_one_line_error(r, "TASK=senti splits the Amazon reviews exactly as EasyNLP")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_mnli_six_scripts_end_to_end(tmp_path):
    """Real MNLI cannot be fetched offline: the fixture, served as MNLI.zip over HTTP, goes through the six
    scripts with TASK=mnli (pairs with segment ids, three labels, five genres, DATA_PORTION) and tiny BERTs."""
    import os
    import subprocess
    import sys

    from _mnli import vocabulary
    from metakd.data import synthetic

    folder = tmp_path / "src" / "MNLI"
    write_mnli(folder, n_train_per_genre=60, n_dev_per_genre=15, seed=4)
    archive = zip_mnli(folder, tmp_path / "served" / "MNLI.zip")
    models = tmp_path / "models"
    words = vocabulary()
    synthetic.make_tiny_bert_pair(models, seed=0, teacher={**synthetic.TINY_TEACHER, "vocab_words": words},
                                  student={**synthetic.TINY_STUDENT, "vocab_words": words})
    env = dict(os.environ, METAKD_PYTHON=sys.executable, TASK="mnli", DATA_DIR=str(tmp_path / "data"),
               OUT_DIR=str(tmp_path / "out"), CACHE_DIR=str(tmp_path / "cache"), DEVICE="cpu", GENRE="travel",
               TEACHER_MODEL=str(models / "tiny-teacher"), STUDENT_MODEL=str(models / "tiny-student"),
               DATA_PORTION="0.8", MAX_SEQ_LENGTH="32", TEACHER_EPOCHS="3", TEACHER_LR="1e-3", STAGE1_EPOCHS="1",
               STAGE1_LR="3e-3", STAGE2_EPOCHS="2", STAGE2_LR="3e-3", EVAL_EVERY="0", DOMAIN_LOSS_WEIGHT="0.1",
               no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    root = Path(__file__).resolve().parents[1]
    with FileServer(archive.parent) as server:
        env["SOURCE"] = server.url + "/MNLI.zip"
        for script in ("1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh",
                       "5_student_second.sh", "6_eval.sh"):
            p = subprocess.run(["bash", script], cwd=root, env=env, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, f"{script}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    data, out = tmp_path / "data", tmp_path / "out"
    weights = tsv.read_pair_split(data / "train.tsv")
    standard = pd.read_csv(data / "train_with_weights.tsv", sep="\t", quoting=3, keep_default_na=False)
    assert (standard["text_b"] != "").all() and len(standard) == len(weights)  # pairs reach the standard files
    # What every stage feeds the models: [CLS] a [SEP] b [SEP], segment 1 on b and its [SEP].
    from metakd.features import encode
    from metakd.tokenization import BertTokenizer

    tok = BertTokenizer.from_pretrained(models / "tiny-teacher")
    enc = encode(standard, tok, mnli.MNLI_LABELS, mnli.MNLI_DOMAINS, 32)
    for r in range(0, len(enc), 37):
        ids = enc.input_ids[r][enc.attention_mask[r] == 1].tolist()
        a, b = tok.tokenize(standard["text_a"][r]), tok.tokenize(standard["text_b"][r])
        if len(a) + len(b) + 3 <= 32:  # not truncated
            assert ids == tok.convert_tokens_to_ids(["[CLS]", *a, "[SEP]", *b, "[SEP]"])
            assert enc.token_type_ids[r][: len(ids)].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert json.loads((data / "prototypes.json").read_text())["prototypes"] == "domain"
    for model in (out / "meta_teacher", out / "travel" / "meta_student_finetune"):
        info = json.loads((model / "config.json").read_text())["metakd"]
        assert (info["task"], info["labels"], info["domains"]) == ("mnli", list(mnli.MNLI_LABELS), list(GENRES))
    result = json.loads((out / "eval_test.json").read_text())["results"]["travel"]
    n_test = sum(1 for r in write_mnli(tmp_path / "again", 60, 15, 4)["dev"]
                 if r["genre"] == "travel" and r["gold_label"] != "-")
    assert result["student"]["n"] == result["meta-teacher"]["n"] == n_test
    # Three epochs of a tiny random teacher on ~240 pairs: the run is the point, not the accuracy.
    assert 0.0 <= result["student"]["accuracy"] <= 1.0, result
