"""Using a trained model: predict on new text, export to Hugging Face names. The logits are checked
against an independent numpy BERT reading the files (tests/_np_bert.py), not metakd's loader."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import _np_bert as np_bert
from _tiny import ROOT, call_main, env, make_checkpoint, run_cli, tiny
from conftest import SORTED_DATA, STUDENT_DIR, needs_data, needs_models

TEXTS = ["a wonderful book , i loved it", "terrible . broke after two days", "ok"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("use") / "student", role="student_second")


def _reference_probs(folder, texts, prefix="backbone.", relu=True):
    """The classifier's probabilities from the folder's files, computed in numpy."""
    from safetensors.numpy import load_file

    from metakd.tokenization import BertTokenizer

    sd = load_file(str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    tok = BertTokenizer.from_pretrained(folder)
    out = []
    for t in texts:  # one at a time: no padding involved
        enc = tok([t], None, max_length=32)
        n = int(enc["attention_mask"].sum())
        _, pooled = np_bert.forward(sd, cfg, enc["input_ids"][:, :n], enc["attention_mask"][:, :n],
                                    enc["token_type_ids"][:, :n], prefix=prefix)
        h = np.maximum(pooled, 0) if relu else pooled
        z = h @ sd["classifier.weight"].astype(np.float64).T + sd["classifier.bias"]
        out.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
    return np.concatenate(out)


def test_predict_text_file_csv_output(student, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    code, out, err = call_main("metakd.predict", ["--model", student, "--input", src, "--device", "cpu"])
    assert code == 0, err
    lines = out.strip().split("\n")
    assert lines[0] == "row,label,prob_positive,prob_negative" and len(lines) == 4
    probs = np.array([[float(v) for v in ln.split(",")[2:]] for ln in lines[1:]])
    np.testing.assert_allclose(probs, _reference_probs(student, TEXTS), atol=1e-5)
    labels = [ln.split(",")[1] for ln in lines[1:]]
    assert labels == [["positive", "negative"][k] for k in probs.argmax(axis=1)]
    assert [int(ln.split(",")[0]) for ln in lines[1:]] == [0, 1, 2]  # input order


def test_predict_csv_with_column_to_jsonl_file(student, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,review\n1,\"" + TEXTS[0] + "\"\n2,\"" + TEXTS[1] + "\"\n")
    dest = tmp_path / "pred.jsonl"
    code, out, err = call_main("metakd.predict", ["--model", student, "--input", src, "--text-column", "review",
                                                  "--output", dest, "--device", "cpu"])
    assert code == 0, err
    rows = [json.loads(ln) for ln in dest.read_text().splitlines()]
    assert [r["row"] for r in rows] == [0, 1]
    got = np.array([[r["probabilities"]["positive"], r["probabilities"]["negative"]] for r in rows])
    np.testing.assert_allclose(got, _reference_probs(student, TEXTS[:2]), atol=1e-5)


def test_predict_reads_stdin(student):
    p = subprocess.run([sys.executable, "-m", "metakd.predict", "--model", str(student), "--device", "cpu"],
                       input="\n".join(TEXTS), capture_output=True, text=True, cwd=ROOT, env=env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().split("\n")) == 4


@pytest.mark.parametrize("content,args,msg", [
    (b"good\n\nbad\n", [], "empty text (line 2)"),
    (b"\x00\x01binary", [], "binary data"),
    (b"\xff\xfe bad", [], "not UTF-8"),
    (b"a,b\n1,2\n", ["--suffix", ".csv"], "no text column"),
    (b"good\n", ["--text-column", "x"], "apply to .csv/.tsv input only"),
])
def test_predict_bad_input_one_line(student, tmp_path, content, args, msg):
    suffix = ".txt"
    if args[:1] == ["--suffix"]:
        suffix, args = args[1], args[2:]
    src = tmp_path / f"in{suffix}"
    src.write_bytes(content)
    dest = tmp_path / "out.csv"
    code, out, err = call_main("metakd.predict", ["--model", student, "--input", src, "--output", dest, *args])
    assert code == 2 and msg in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not dest.exists()


def test_predict_refuses_a_folder_that_is_not_a_metakd_classifier(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("good\n")
    code, _, err = call_main("metakd.predict", ["--model", tiny().student, "--input", src])
    assert code == 2 and "not a metakd checkpoint" in err



def test_predict_missing_model_names_the_training_output_not_fetch_models(tmp_path):
    """A missing --model is a path mistake, not a pretrained model to download: no FETCH_MODELS advice."""
    code, _, err = call_main("metakd.predict", ["--model", tmp_path / "out" / "books" / "meta_student_finetune"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model folder not found" in err and "meta_student_finetune" in err and "FETCH_MODELS" not in err


def test_onnx_export_on_cpu_prints_no_cuda_noise(student, tmp_path):
    """Without a GPU, OneFlow's nn.Graph prints a glog ERROR about the CUDA runtime to fd 2; the export hides it
    (and the converter's progress lines, which name a temporary file). Only metakd's own line remains."""
    p = run_cli("metakd.export", ["--model", student, "--out", tmp_path / "onnx", "--format", "onnx",
                                  "--batch", "2", "--seq", "16"])
    assert p.returncode == 0, p.stderr
    assert "cuda runtime version" not in p.stdout + p.stderr
    assert "Converting model" not in p.stdout and p.stdout.startswith("wrote "), p.stdout

def test_export_hf_names_config_and_logits(student, tmp_path):
    from safetensors.numpy import load_file

    dest = tmp_path / "hf"
    code, out, err = call_main("metakd.export", ["--model", student, "--out", dest])
    assert code == 0, err
    assert "domain_embedding" in out and "fit_dense" in out  # the heads left out are named
    sd = load_file(str(dest / "model.safetensors"))
    src = load_file(str(student / "model.safetensors"))
    assert set(sd) == {"bert." + k[len("backbone."):] for k in src if k.startswith("backbone.")} \
        | {"classifier.weight", "classifier.bias"}
    for k, v in sd.items():
        original = src["backbone." + k[5:]] if k.startswith("bert.") else src[k]
        np.testing.assert_array_equal(v, original)
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["model_type"] == "bert"
    assert cfg["num_labels"] == 2 and cfg["id2label"] == {"0": "positive", "1": "negative"}
    assert cfg["label2id"] == {"positive": 0, "negative": 1}
    assert cfg["auto_map"]["AutoModelForSequenceClassification"] == "modeling_metakd.MetaKDBertForSequenceClassification"
    assert "torch.relu(out.pooler_output)" in (dest / "modeling_metakd.py").read_text()
    assert (dest / "vocab.txt").read_text() == (student / "vocab.txt").read_text()
    assert json.loads((dest / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert "metakd" not in cfg  # a plain Hugging Face config
    # the exported files (bert.* names) give metakd's probabilities, read independently
    np.testing.assert_allclose(_reference_probs(dest, TEXTS, prefix="bert."), _reference_probs(student, TEXTS),
                               atol=1e-6)
    code, _, err = call_main("metakd.export", ["--model", student, "--out", dest])
    assert code == 2 and "already exists" in err


def test_export_onnx_matches_an_independent_computation(student, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from metakd.onnx_export import run_padded
    from metakd.tokenization import BertTokenizer

    dest = tmp_path / "onnx"
    code, out, err = call_main("metakd.export", ["--model", student, "--out", dest, "--format", "onnx",
                                                 "--batch", "2", "--seq", "24"])
    assert code == 0, err
    assert "fixed shape [2, 24]" in out
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["onnx"]["batch"] == 2 and cfg["onnx"]["seq"] == 24 and cfg["id2label"] == {"0": "positive", "1": "negative"}
    session = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [list(i.shape) for i in session.get_inputs()] == [[2, 24]] * 3
    enc = BertTokenizer.from_pretrained(dest)(TEXTS, None, max_length=24)  # 3 rows: two padded batches of 2
    logits = run_padded(session, enc)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(z / z.sum(axis=1, keepdims=True), _reference_probs(student, TEXTS), atol=1e-5)
    code, _, err = call_main("metakd.export", ["--model", student, "--out", tmp_path / "x", "--format", "onnx",
                                               "--seq", "2"])
    assert code == 2 and "--seq must be in [3" in err and not (tmp_path / "x").exists()


def test_compression_benchmark_table(student, tmp_path):
    """The benchmark runs (tiny sizes, one thread) and reports what it says: the classifier's
    parameters counted by hand from the checkpoint, eager and ONNX rates, ONNX's logits checked."""
    from safetensors.numpy import load_file

    pytest.importorskip("onnxruntime")
    out = tmp_path / "c.json"
    code, stdout, err = call_main("metakd.compression", ["--model", f"s={student}", "--batch", "2", "--seq", "12",
                                                         "--iters", "1", "--latency-iters", "5", "--threads", "1",
                                                         "--onnx", "--json", out])
    assert code == 0, err
    row = json.loads(out.read_text())["rows"][0]
    sd = load_file(str(student / "model.safetensors"))
    by_hand = sum(v.size for k, v in sd.items() if k.startswith(("backbone.", "classifier.")) and "position_ids" not in k)
    assert row["parameters"] == by_hand and row["threads"] == 1
    assert row["eager_reviews_per_s"] > 0 and row["onnx_reviews_per_s"] > 0 and row["onnx_max_logit_diff"] < 1e-4
    assert row["eager_p50_ms"] <= row["eager_p95_ms"]
    code, _, err = call_main("metakd.compression", [])
    assert code == 2 and "nothing to measure" in err


@needs_models
@needs_data
def test_onnx_export_of_the_real_student_on_real_reviews(tmp_path):
    """The shared 3-layer student (fresh heads) as a metakd checkpoint, exported and run in
    onnxruntime on real reviews: its logits within 1e-4 of metakd's own inference."""
    pytest.importorskip("onnxruntime")
    import re

    import onnxruntime as ort

    from metakd.checkpoint import save_checkpoint
    from metakd.data.senti import SENTI_DOMAINS, SENTI_LABELS
    from metakd.evaluation import predict_logits
    from metakd.features import Encoded
    from metakd.meta_model import build_from_pretrained
    from metakd.onnx_export import run_padded
    from metakd.runtime import flow
    from metakd.tokenization import BertTokenizer

    flow.manual_seed(0)
    model, _ = build_from_pretrained(STUDENT_DIR, len(SENTI_LABELS), len(SENTI_DOMAINS), verbose=False)
    info = model.metakd_info("student_second", SENTI_LABELS, SENTI_DOMAINS, "senti")
    info.update(compat="none", max_seq_length=128)
    folder = save_checkpoint(tmp_path / "student", model, model.config, info, vocab_from=STUDENT_DIR)
    text = (SORTED_DATA / "books" / "positive.review").read_text(encoding="utf-8")[:200_000]
    reviews = [" ".join(t.split()) for t in re.findall(r"<review_text>(.*?)</review_text>", text, re.S)[:5]]
    code, _, err = call_main("metakd.export", ["--model", folder, "--out", tmp_path / "onnx", "--format", "onnx",
                                               "--batch", "4", "--seq", "128"])
    assert code == 0, err
    enc = BertTokenizer.from_pretrained(folder)(reviews, None, max_length=128)
    n = len(reviews)
    data = Encoded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"],
                   labels=np.zeros(n, np.int64), domains=np.zeros(n, np.int64), weights=np.zeros(n, np.float32),
                   guids=[str(i) for i in range(n)])
    want = predict_logits(model, data, 64, flow.device("cpu"))
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = run_padded(session, enc)  # 5 rows through a graph of 4: two padded batches
    assert np.abs(got - want).max() < 1e-4
