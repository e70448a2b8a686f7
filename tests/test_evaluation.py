"""Golden tests for metakd.evaluation: accuracy, macro-F1 and loss written out in numpy; batched
prediction keeps row order and matches an unbatched forward."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import tiny_config
from metakd.evaluation import classification_metrics, evaluate, predict_logits
from metakd.features import Encoded
from metakd.meta_model import MetaBert
from metakd.runtime import flow


def np_metrics(labels: np.ndarray, logits: np.ndarray, k: int):
    preds = logits.argmax(axis=1)
    acc = float(np.mean(preds == labels))
    f1s = []
    for c in range(k):  # every label counts, present or not; 0/0 -> 0
        tp = int(np.sum((preds == c) & (labels == c)))
        fp = int(np.sum((preds == c) & (labels != c)))
        fn = int(np.sum((preds != c) & (labels == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    loss = np.mean([-(z[y] - math.log(sum(math.exp(v) for v in z))) for z, y in zip(logits.astype(np.float64), labels)])
    return acc, float(np.mean(f1s)), float(loss)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4)])
def test_classification_metrics_random(seed, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=40)
    logits = (rng.normal(size=(40, k)) + 1.5 * np.eye(k)[labels] * (rng.random(40) < 0.6)[:, None]).astype(np.float32)
    m = classification_metrics(labels, logits, [f"l{i}" for i in range(k)])
    acc, f1, loss = np_metrics(labels, logits, k)
    assert m["n"] == 40
    assert m["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert m["loss"] == pytest.approx(loss, rel=1e-5)


def test_classification_metrics_hand_example():
    # labels 0 1 1 0 1, preds 0 1 0 0 0: acc 3/5; class 0: tp 2 fp 2 fn 0 -> 4/6; class 1: tp 1 fp 0 fn 2 -> 2/4
    labels = np.array([0, 1, 1, 0, 1])
    logits = np.array([[1, 0], [0, 1], [2, 1], [3, 0], [0.5, 0.2]], np.float32)
    m = classification_metrics(labels, logits, ["positive", "negative"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert m["binary_f1"] == pytest.approx(2 / 4)  # EasyNLP's F1: label id 1's (tp 1, fp 0, fn 2)


def test_classification_metrics_absent_label_counts_as_zero():
    labels = np.array([0, 1, 0, 1])
    logits = np.array([[2, 0, -1], [0, 2, -1], [2, 0, -1], [0, 2, -1]], np.float32)  # perfect on 0/1; 2 never seen
    m = classification_metrics(labels, logits, ["a", "b", "c"])
    assert m["accuracy"] == 1.0
    assert m["macro_f1"] == pytest.approx(2 / 3)
    m2 = classification_metrics(labels, logits[:, :2], ["a", "b"])
    assert m2["macro_f1"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def model_and_data():
    flow.manual_seed(0)
    model = MetaBert(tiny_config(), num_labels=3, num_domains=2)
    rng = np.random.default_rng(3)
    n, width = 9, 8
    lengths = np.array([8, 3, 5, 2, 8, 4, 3, 6, 2])
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 50, size=(n, width)) * mask
    ids[:, 0] = 2
    enc = Encoded(ids, mask, np.zeros_like(ids), rng.integers(0, 3, size=n), np.zeros(n, np.int64),
                  np.zeros(n, np.float32), [str(i) for i in range(n)])
    return model, enc


@pytest.mark.parametrize("compat", ["none", "easynlp"])
def test_predict_logits_row_order_and_mode(model_and_data, compat):
    model, enc = model_and_data
    model.eval()
    with flow.no_grad():
        want = model(flow.tensor(enc.input_ids), flow.tensor(enc.attention_mask), flow.tensor(enc.token_type_ids),
                     compat=compat).logits.numpy()
    model.train()
    got = predict_logits(model, enc, batch_size=4, device="cpu", compat=compat)
    assert model.training  # left as it was
    np.testing.assert_allclose(got, want, atol=2e-5)
    m = evaluate(model, enc, ["a", "b", "c"], 4, "cpu", compat=compat)
    acc, f1, loss = np_metrics(enc.labels, want, 3)
    assert m["accuracy"] == pytest.approx(acc) and m["macro_f1"] == pytest.approx(f1)
    assert m["loss"] == pytest.approx(loss, abs=1e-4)
