"""Golden tests for metakd.prototypes: the prototype score of docs/reference.md section 2.3 and the content
vector (masked mean vs. EasyNLP's mean over positions 1..L-1) written out in numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import tiny_config
from metakd.infra.errors import UserError
from metakd.features import Encoded
from metakd.bert import BertModel
from metakd.prototypes import class_prototype_scores, mean_embeddings, prototype_scores
from metakd.runtime import flow


def _cos(u, v) -> float:
    """1 - SciPy's cosine distance, written out."""
    return float(sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))))


def np_scores(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
    emb = emb.astype(np.float64)
    present = sorted(set(domains.tolist()))
    centroid = {d: emb[domains == d].sum(axis=0) / np.sum(domains == d) for d in present}
    out = []
    for e, d in zip(emb, domains):
        others = [centroid[o] for o in present if o != d]
        c_out = sum(others) / len(others)  # mean of the other centroids (vectors, not cosines)
        out.append((_cos(e, centroid[d]) + _cos(e, c_out)) / 2.0)
    return np.array(out)


def test_prototype_scores_three_domains():
    rng = np.random.default_rng(0)
    domains = np.array([0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 2, 1])
    emb = (rng.normal(size=(12, 5)) + domains[:, None] * 0.7).astype(np.float32)
    got = prototype_scores(emb, domains, num_domains=3)
    assert got.dtype == np.float64 and got.shape == (12,)
    np.testing.assert_allclose(got, np_scores(emb, domains), atol=1e-12, rtol=1e-10)
    assert np.all(np.abs(got) <= 1.0)


def test_prototype_scores_hand_example():
    # domain 0: e=(1,0),(0,1) -> c0=(.5,.5); domain 1: e=(2,0) -> c1=(2,0)
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], np.float32)
    got = prototype_scores(emb, np.array([0, 0, 1]), 2)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(got, [(r + 1.0) / 2, (r + 0.0) / 2, (1.0 + r) / 2], atol=1e-12)


def np_class_scores(emb: np.ndarray, domains: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class prototypes written out row by row: c_{d,y} = mean of domain d's rows of label y; the
    outside prototype is the mean of c_{d',y} over the other domains with label y (else of the
    other domains' pooled centroids)."""
    emb = emb.astype(np.float64)
    out = []
    for e, d, y in zip(emb, domains, labels):
        own = [x for x, dd, yy in zip(emb, domains, labels) if dd == d and yy == y]
        c = sum(own) / len(own)
        others = []
        for o in sorted(set(domains.tolist()) - {d}):
            members = [x for x, dd, yy in zip(emb, domains, labels) if dd == o and yy == y]
            if members:
                others.append(sum(members) / len(members))
        if not others:
            for o in sorted(set(domains.tolist()) - {d}):
                members = [x for x, dd in zip(emb, domains) if dd == o]
                others.append(sum(members) / len(members))
        out.append((_cos(e, c) + _cos(e, sum(others) / len(others))) / 2.0)
    return np.array(out)


def test_class_prototype_scores_against_numpy():
    rng = np.random.default_rng(2)
    domains = np.array([0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 2, 1, 0, 1, 2, 2])
    labels = np.array([0, 1, 2, 1, 2, 0, 0, 1, 2, 0, 2, 1, 1, 1, 0, 2])
    labels[domains == 2] = np.where(labels[domains == 2] == 0, 1, labels[domains == 2])  # label 0 absent in domain 2
    labels[-1] = 3  # label 3 only in domain 2: falls back to the other domains' pooled centroids
    emb = (rng.normal(size=(16, 6)) + labels[:, None] * 0.5 + domains[:, None] * 0.3).astype(np.float32)
    got = class_prototype_scores(emb, domains, labels)
    assert got.dtype == np.float64 and got.shape == (16,)
    np.testing.assert_allclose(got, np_class_scores(emb, domains, labels), atol=1e-12, rtol=1e-10)
    # Not the domain prototypes: the per-class ones score each row against its own class.
    assert np.abs(got - prototype_scores(emb, domains, 3)).max() > 1e-3


def test_class_prototype_scores_hand_example():
    # domain 0: label 0 e=(1,0), label 1 e=(0,1); domain 1: label 0 e=(1,1), label 1 e=(0,2)
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]], np.float32)
    got = class_prototype_scores(emb, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    r = 1 / math.sqrt(2)
    # row 0: own (1,0) -> 1; outside = domain 1's label-0 prototype (1,1) -> r; row 1: 1 and (0,2) -> 1
    np.testing.assert_allclose(got, [(1 + r) / 2, 1.0, (1 + r) / 2, 1.0], atol=1e-12)
    with pytest.raises(UserError, match="only 1 domain"):
        class_prototype_scores(emb, np.zeros(4, np.int64), np.array([0, 1, 0, 1]))


def test_prototype_scores_absent_domains_ignored():
    # only domains 1 and 3 of 4 present: the "other" centroid is the other present domain's
    rng = np.random.default_rng(1)
    domains = np.array([1, 3, 3, 1, 1, 3])
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    got = prototype_scores(emb, domains, num_domains=4)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_scores(emb, domains), atol=1e-12)


def test_prototype_scores_need_two_domains():
    with pytest.raises(UserError, match="at least two"):
        prototype_scores(np.ones((3, 4), np.float32), np.array([2, 2, 2]), 4)


# ------------------------------------------------------------------ content vectors from a tiny BERT


@pytest.fixture(scope="module")
def bert_and_data():
    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    rng = np.random.default_rng(2)
    n, width = 7, 10
    lengths = np.array([10, 3, 6, 2, 8, 3, 5])
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 50, size=(n, width)) * mask
    ids[:, 0] = 2
    types = np.zeros_like(ids)
    enc = Encoded(ids, mask, types, np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float32),
                  [str(i) for i in range(n)])
    model.eval()
    with flow.no_grad():
        last = model(flow.tensor(ids), flow.tensor(mask), flow.tensor(types)).last_hidden_state.numpy()
    model.train()  # mean_embeddings must switch to eval itself (dropout is large here)
    return model, enc, last.astype(np.float64)


@pytest.mark.parametrize("batch_size", [2, 3, 7])
def test_mean_embeddings_default_masked_mean(bert_and_data, batch_size):
    model, enc, last = bert_and_data
    got = mean_embeddings(model, enc, batch_size, "cpu", progress=False)
    assert got.shape == (7, 16) and got.dtype == np.float32
    want = np.stack([last[i, 1:n].mean(axis=0) for i, n in enumerate(enc.lengths)])  # real tokens, no [CLS]
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("batch_size", [3, 7])
def test_mean_embeddings_easynlp_mean_over_positions(bert_and_data, batch_size):
    model, enc, last = bert_and_data
    got = mean_embeddings(model, enc, batch_size, "cpu", compat="easynlp", progress=False)
    want = last[:, 1:, :].mean(axis=1)  # positions 1..L-1 of the padded input, padding included
    np.testing.assert_allclose(got, want, atol=2e-5)
    default = mean_embeddings(model, enc, batch_size, "cpu", progress=False)
    full = enc.lengths == enc.input_ids.shape[1]
    np.testing.assert_allclose(got[full], default[full], atol=2e-5)  # same where there is no padding
    assert np.abs(got[~full] - default[~full]).max() > 1e-3


def test_mean_embeddings_one_token_input_is_zero():
    flow.manual_seed(1)
    model = BertModel(tiny_config())
    mask = np.array([[1, 0, 0], [1, 1, 0]], np.int64)
    ids = np.array([[2, 0, 0], [2, 7, 0]], np.int64)
    enc = Encoded(ids, mask, np.zeros_like(ids), np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.float32),
                  ["a", "b"])
    got = mean_embeddings(model, enc, 2, "cpu", progress=False)
    assert np.all(np.isfinite(got)) and np.all(got[0] == 0)
    model.eval()
    with flow.no_grad():
        last = model(flow.tensor(ids), flow.tensor(mask), flow.zeros_like(flow.tensor(ids))).last_hidden_state.numpy()
    np.testing.assert_allclose(got[1], last[1, 1], atol=2e-5)


def test_a_score_can_be_negative_and_the_teacher_reads_it(tmp_path):
    """An example pointing away from both prototypes gets a negative score (real data has some: the
    shared teacher gives 5 of the 6480 Amazon training rows down to -0.036); the teacher's and stage 1's
    reader accept it (weight >= -1), as the reference uses the score as is."""
    from metakd import cli

    emb = np.array([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.1],   # domain 0: the third points away
                    [1.0, 1.0], [1.0, 0.8]])               # domain 1
    dom = np.array([0, 0, 0, 1, 1])
    c0, c1 = emb[:3].mean(axis=0), emb[3:].mean(axis=0)
    e = emb[2]
    want = (e @ c0 / np.linalg.norm(e) / np.linalg.norm(c0) + e @ c1 / np.linalg.norm(e) / np.linalg.norm(c1)) / 2
    got = prototype_scores(emb, dom, 2)[2]
    assert got == pytest.approx(want, abs=1e-12) and got < 0
    proc = cli.processor("senti")
    path = tmp_path / "train_with_weights.tsv"
    path.write_text("guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n"
                    f"a\tgood\t\tpositive\tbooks\t{got!r}\nb\tbad\t\tnegative\tdvd\t0.3\n")
    df = cli.read_standard(path, proc, min_weight=cli.PROTOTYPE_SCORE_MIN)
    assert df["weight"].tolist() == [got, 0.3]
