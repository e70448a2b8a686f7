"""The synthetic dataset and the tiny random BERT folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from tokenizers import BertWordPieceTokenizer

from metakd.data import senti, synthetic

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def test_reviews_shape_and_determinism():
    df = synthetic.make_synthetic_reviews(n_per_domain_label=50, seed=0)
    assert list(df.columns) == ["review", "domain", "sentiment"]
    assert len(df) == 400
    assert df.groupby(["domain", "sentiment"]).size().to_dict() == {
        (d, s): 50 for d in ("books", "dvd", "electronics", "kitchen") for s in ("positive", "negative")}
    assert list(dict.fromkeys(df["domain"])) == ["books", "dvd", "electronics", "kitchen"]
    assert df.equals(synthetic.make_synthetic_reviews(n_per_domain_label=50, seed=0))
    assert not df.equals(synthetic.make_synthetic_reviews(n_per_domain_label=50, seed=1))
    assert (df["review"].map(senti.normalise_text) == df["review"]).all()
    assert df["review"].is_unique


def test_sorted_data_acl_layout_round_trip(tmp_path):
    root = synthetic.make_synthetic_sorted_data_acl(tmp_path / "sorted_data_acl", 20, seed=5)
    assert sorted(p.name for p in root.iterdir()) == [
        "books", "dvd", "electronics", "kitchen_&_housewares"]
    text = (root / "dvd" / "positive.review").read_text(encoding="utf-8")
    assert text.count("<review_text>\n") == 20 and "\n\t" in text and "\n\n" in text
    back = senti.load_sorted_data_acl(root)
    assert back.equals(synthetic.make_synthetic_reviews(20, seed=5))


def test_learnable_but_not_trivial():
    """A bag-of-words model is clearly above chance on dev+test; shared words carry signal."""
    df = synthetic.make_synthetic_reviews()
    train, dev, test = senti.split_reference(df)
    held = [*dev["review"], *test["review"]]
    held_y = [*dev["sentiment"], *test["sentiment"]]
    vec = CountVectorizer()
    model = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train["review"]), train["sentiment"])
    acc = model.score(vec.transform(held), held_y)
    assert 0.7 <= acc
    # label noise and mixed reviews: some reviews hold words of both sentiments
    words = df["review"].str.lower().str.findall(r"[a-z]+").map(set)
    pos, neg = set(synthetic.SHARED_WORDS["positive"]), set(synthetic.SHARED_WORDS["negative"])
    assert (words.map(lambda w: bool(w & pos) and bool(w & neg))).sum() > 20


def expected_bert_names(num_layers: int) -> list:
    """Hugging Face BertModel parameter names, written out by hand."""
    names = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
             "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
             "embeddings.LayerNorm.bias"]
    for i in range(num_layers):
        names += [f"encoder.layer.{i}.{n}" for n in (
            "attention.self.query.weight", "attention.self.query.bias",
            "attention.self.key.weight", "attention.self.key.bias",
            "attention.self.value.weight", "attention.self.value.bias",
            "attention.output.dense.weight", "attention.output.dense.bias",
            "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
            "intermediate.dense.weight", "intermediate.dense.bias",
            "output.dense.weight", "output.dense.bias",
            "output.LayerNorm.weight", "output.LayerNorm.bias")]
    return names + ["pooler.dense.weight", "pooler.dense.bias"]


def test_tiny_bert_folder(tmp_path):
    folder = synthetic.make_tiny_bert(tmp_path / "bert", num_layers=3, hidden_size=32,
                                      num_heads=4, intermediate_size=40, seed=7)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    config = json.loads((folder / "config.json").read_text())
    for key, value in {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
                       "intermediate_size": 40, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                       "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 128,
                       "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
                       "pad_token_id": 0, "model_type": "bert"}.items():
        assert config[key] == value, key
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert config["vocab_size"] == len(vocab) == len(set(vocab))
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert json.loads((folder / "tokenizer_config.json").read_text())["do_lower_case"] is True

    V, H, P, I = len(vocab), 32, 128, 40
    weights = load_file(str(folder / "model.safetensors"))
    assert sorted(weights) == sorted(expected_bert_names(3))
    assert weights["embeddings.word_embeddings.weight"].shape == (V, H)
    assert weights["embeddings.position_embeddings.weight"].shape == (P, H)
    assert weights["embeddings.token_type_embeddings.weight"].shape == (2, H)
    assert weights["encoder.layer.2.attention.self.key.weight"].shape == (H, H)
    assert weights["encoder.layer.0.intermediate.dense.weight"].shape == (I, H)
    assert weights["encoder.layer.1.output.dense.weight"].shape == (H, I)
    assert weights["encoder.layer.1.output.dense.bias"].shape == (H,)
    assert weights["pooler.dense.weight"].shape == (H, H)
    assert all(w.dtype == np.float32 for w in weights.values())
    assert (weights["encoder.layer.0.output.LayerNorm.weight"] == 1).all()
    assert (weights["embeddings.LayerNorm.bias"] == 0).all()
    assert (weights["encoder.layer.0.attention.self.query.bias"] == 0).all()
    assert (weights["embeddings.word_embeddings.weight"][0] == 0).all()  # [PAD] row
    std = weights["embeddings.word_embeddings.weight"][1:].std()
    assert 0.017 < std < 0.023
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}

    again = synthetic.make_tiny_bert(tmp_path / "again", 3, 32, 4, 40, seed=7)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folders left behind


def test_tiny_vocab_tokenises_synthetic_reviews_without_unk(tmp_path):
    folder = synthetic.make_tiny_bert(tmp_path / "bert", num_layers=1)
    tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
    reviews = list(synthetic.make_synthetic_reviews()["review"]) + ["Zebra-42, o'clock: $9.99!"]
    encodings = tok.encode_batch(reviews)
    assert sum(e.tokens.count("[UNK]") for e in encodings) == 0
    assert max(len(e.ids) for e in encodings) <= 128


def test_tiny_bert_pair(tmp_path):
    teacher, student = synthetic.make_tiny_bert_pair(tmp_path / "models")
    assert (teacher.name, student.name) == ("tiny-teacher", "tiny-student")
    t = json.loads((teacher / "config.json").read_text())
    s = json.loads((student / "config.json").read_text())
    assert t["num_hidden_layers"] % s["num_hidden_layers"] == 0
    assert t["num_hidden_layers"] > s["num_hidden_layers"]
    assert t["num_attention_heads"] == s["num_attention_heads"]
    assert (t["hidden_size"], s["hidden_size"]) == (64, 48)  # fit_dense 48 -> 64 is exercised
    assert (teacher / "vocab.txt").read_bytes() == (student / "vocab.txt").read_bytes()


@pytest.mark.skipif(not (SHARED_MODELS / "all-MiniLM-L6-v2").is_dir(),
                    reason=f"real BERT checkpoints not found under {SHARED_MODELS}")
def test_names_and_shapes_match_a_real_hub_checkpoint():
    folder = SHARED_MODELS / "all-MiniLM-L6-v2"
    config = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        real = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    real.pop("embeddings.position_ids", None)
    assert synthetic.bert_parameter_shapes(config) == real
    ours = synthetic.tiny_bert_config(100, 2, 16, 2, 32)
    assert set(config) >= set(ours) - {"architectures"}
