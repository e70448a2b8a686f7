"""Tests for metakd.features: input layouts, trimmed batches, deterministic and sharded batch orders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metakd.infra.errors import UserError
from metakd.features import Encoded, encode, epoch_order, inference_batches, to_tensors, train_batches
from metakd.runtime import flow
from metakd.tokenization import BertTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "none", "good", "bad", "book", "very", "dvd", "ok", "."]
ID = {t: i for i, t in enumerate(VOCAB)}
CLS, SEP, PAD = ID["[CLS]"], ID["[SEP]"], ID["[PAD]"]
LABELS, DOMAINS = ("positive", "negative"), ("books", "dvd")


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BertTokenizer:
    d = tmp_path_factory.mktemp("vocab")
    (d / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    return BertTokenizer.from_pretrained(d)


def _frame(text_b=("", "", "")) -> pd.DataFrame:
    return pd.DataFrame({
        "guid": ["g0", "g1", "g2"],
        "text_a": ["good book", "very bad dvd .", "ok"],
        "text_b": list(text_b),
        "label": ["positive", "negative", "positive"],
        "domain": ["books", "dvd", "dvd"],
        "weight": ["0.25", "-0.5", "1"],
    })


def _row(ids, types, width):
    ids = list(ids) + [PAD] * (width - len(ids))
    types = list(types) + [0] * (width - len(types))
    mask = [1] * len([i for i in ids if i != PAD]) + [0] * ids.count(PAD)
    return ids, types, mask


def _check(enc, rows, width):
    for r, (ids, types) in enumerate(rows):
        want_ids, want_types, want_mask = _row(ids, types, width)
        assert enc.input_ids[r].tolist() == want_ids, r
        assert enc.token_type_ids[r].tolist() == want_types, r
        assert enc.attention_mask[r].tolist() == want_mask, r


A = [[ID["good"], ID["book"]], [ID["very"], ID["bad"], ID["dvd"], ID["."]], [ID["ok"]]]


def test_encode_data_mode_single_sentences(tok):
    enc = encode(_frame(), tok, LABELS, DOMAINS, max_length=9)
    assert enc.input_ids.shape == (3, 9) and enc.input_ids.dtype == np.int64
    _check(enc, [([CLS] + a + [SEP], [0] * (len(a) + 2)) for a in A], 9)
    assert enc.labels.tolist() == [0, 1, 0] and enc.domains.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(enc.weights, np.array([0.25, -0.5, 1.0], np.float32))
    assert enc.weights.dtype == np.float32 and enc.guids == ["g0", "g1", "g2"]
    assert enc.lengths.tolist() == [4, 6, 3] and len(enc) == 3


def test_encode_data_mode_pairs_where_text_b_present(tok):
    enc = encode(_frame(("good", "", "bad book")), tok, LABELS, DOMAINS, max_length=9)
    rows = [
        ([CLS] + A[0] + [SEP, ID["good"], SEP], [0, 0, 0, 0, 1, 1]),
        ([CLS] + A[1] + [SEP], [0] * 6),
        ([CLS] + A[2] + [SEP, ID["bad"], ID["book"], SEP], [0, 0, 0, 1, 1, 1]),
    ]
    _check(enc, rows, 9)


def test_encode_none_pair_mode(tok):
    # EasyNLP's training rows: [CLS] a [SEP] none [SEP]; text_b "None" or empty both become "none"
    enc = encode(_frame(("None", "", "good")), tok, LABELS, DOMAINS, max_length=9, text_b_mode="none-pair")
    rows = [
        ([CLS] + A[0] + [SEP, ID["none"], SEP], [0, 0, 0, 0, 1, 1]),
        ([CLS] + A[1] + [SEP, ID["none"], SEP], [0] * 6 + [1, 1]),
        ([CLS] + A[2] + [SEP, ID["good"], SEP], [0, 0, 0, 1, 1]),
    ]
    _check(enc, rows, 9)


def test_encode_empty_pair_mode(tok):
    # EasyNLP's dev rows: [CLS] a [SEP] [SEP]
    enc = encode(_frame(("", "None", "good")), tok, LABELS, DOMAINS, max_length=9, text_b_mode="empty-pair")
    rows = [
        ([CLS] + A[0] + [SEP, SEP], [0, 0, 0, 0, 1]),
        ([CLS] + A[1] + [SEP, SEP], [0] * 6 + [1]),
        ([CLS] + A[2] + [SEP, ID["good"], SEP], [0, 0, 0, 1, 1]),
    ]
    _check(enc, rows, 9)


def test_encode_truncates(tok):
    enc = encode(_frame(), tok, LABELS, DOMAINS, max_length=4)
    assert enc.input_ids[1].tolist() == [CLS, ID["very"], ID["bad"], SEP]
    assert enc.attention_mask.sum(axis=1).tolist() == [4, 4, 3]


def test_encode_defaults_and_errors(tok):
    df = _frame().drop(columns=["weight", "guid"])
    enc = encode(df, tok, LABELS, DOMAINS, max_length=8)
    assert enc.weights.tolist() == [0.0, 0.0, 0.0] and enc.guids == ["0", "1", "2"]
    with pytest.raises(ValueError):
        encode(_frame(), tok, LABELS, DOMAINS, 8, text_b_mode="pair")
    with pytest.raises(UserError, match="no rows"):
        encode(_frame().iloc[:0], tok, LABELS, DOMAINS, 8)
    bad = _frame()
    bad.loc[1, "label"] = "neutral"
    with pytest.raises(UserError, match="neutral"):
        encode(bad, tok, LABELS, DOMAINS, 8)
    bad = _frame()
    bad.loc[2, "domain"] = "kitchen"
    with pytest.raises(UserError, match="kitchen"):
        encode(bad, tok, LABELS, DOMAINS, 8)


def _random_encoded(n=11, width=12, seed=0) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, width + 1, size=n)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 40, size=(n, width)) * mask
    types = rng.integers(0, 2, size=(n, width)) * mask
    return Encoded(ids, mask, types, rng.integers(0, 2, size=n), rng.integers(0, 3, size=n),
                   rng.normal(size=n).astype(np.float32), [f"g{i}" for i in range(n)])


def test_to_tensors_trims_to_longest_in_batch():
    enc = _random_encoded()
    idx = np.array([3, 0, 7])
    full = to_tensors(enc, idx, "cpu", trim=False)
    cut = to_tensors(enc, idx, "cpu")
    width = int(enc.attention_mask[idx].sum(axis=1).max())
    assert width < enc.input_ids.shape[1] or enc.attention_mask[idx].all()
    assert full["input_ids"].shape == (3, 12)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert cut[k].shape == (3, width) and cut[k].dtype == flow.int64
        np.testing.assert_array_equal(cut[k].numpy(), full[k].numpy()[:, :width])
        np.testing.assert_array_equal(full[k].numpy(), getattr(enc, k)[idx])
        assert full[k].numpy()[:, width:].sum() == 0  # only padding was cut
    assert cut["attention_mask"].numpy().sum() == enc.attention_mask[idx].sum()  # no real token lost
    np.testing.assert_array_equal(cut["labels"].numpy(), enc.labels[idx])
    np.testing.assert_array_equal(cut["domains"].numpy(), enc.domains[idx])
    np.testing.assert_array_equal(cut["weights"].numpy(), enc.weights[idx])
    assert cut["weights"].dtype == flow.float32
    np.testing.assert_array_equal(cut["row_index"].numpy(), idx)


def test_to_tensors_trim_width_example():
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], np.int64)
    enc = Encoded(mask * 7, mask, mask * 0, np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3, np.float32),
                  ["a", "b", "c"])
    assert to_tensors(enc, np.array([0, 1]), "cpu")["input_ids"].shape == (2, 3)
    assert to_tensors(enc, np.array([2, 1]), "cpu")["input_ids"].shape == (2, 5)


def test_epoch_order_deterministic():
    a = epoch_order(50, 42, 0)
    np.testing.assert_array_equal(a, epoch_order(50, 42, 0))
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, 42, 1))  # reshuffled every epoch
    assert not np.array_equal(a, epoch_order(50, 43, 0))


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (1, 5)])
def test_train_batches_single_process(n, bs):
    batches = train_batches(n, bs, seed=42, epoch=2)
    assert [len(b) for b in batches] == [min(bs, n - s) for s in range(0, n, bs)]  # last, smaller batch kept
    np.testing.assert_array_equal(np.concatenate(batches), epoch_order(n, 42, 2))
    again = train_batches(n, bs, seed=42, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("n,bs,ws", [(24, 2, 3), (23, 2, 3), (17, 4, 2)])
def test_train_batches_sharded_disjoint_and_covering(n, bs, ws, balanced):
    lengths = np.random.default_rng(n).integers(3, 128, size=n) if balanced else None
    per_rank = [train_batches(n, bs, seed=7, epoch=1, rank=r, world_size=ws, lengths=lengths) for r in range(ws)]
    steps = -(-n // (bs * ws))
    assert all(len(b) == steps for b in per_rank)  # every rank takes the same number of steps
    order = epoch_order(n, 7, 1)
    seen = []
    for s in range(steps):
        parts = [per_rank[r][s] for r in range(ws)]
        chunk = order[s * bs * ws:(s + 1) * bs * ws]
        flat = np.concatenate(parts)
        assert set(flat.tolist()) == set(chunk.tolist())  # the step covers its global batch
        if len(chunk) >= ws:  # all ranks have real rows: disjoint
            assert len(flat) == len(chunk)
        assert max(len(p) for p in parts) <= bs
        seen.extend(chunk.tolist())
    assert sorted(seen) == list(range(n))
    # without any padding rows, the shards are disjoint and cover the data exactly once
    if all(len(per_rank[r][-1]) > 0 for r in range(ws)) and n % (bs * ws) == 0:
        allrows = np.concatenate([np.concatenate(b) for b in per_rank])
        assert sorted(allrows.tolist()) == list(range(n))


def test_train_batches_balanced_by_tokens():
    """With lengths, each global batch is split into array_split's sizes with near-equal token sums
    (greedy longest-first: the gap is at most one example's length), in the chunk's order."""
    rng = np.random.default_rng(0)
    n, bs, ws = 640, 8, 2
    lengths = rng.integers(10, 129, size=n)
    per_rank = [train_batches(n, bs, seed=3, epoch=0, rank=r, world_size=ws, lengths=lengths) for r in range(ws)]
    plain = [train_batches(n, bs, seed=3, epoch=0, rank=r, world_size=ws) for r in range(ws)]
    order = epoch_order(n, 3, 0)
    gap_balanced, gap_plain = [], []
    for s in range(len(per_rank[0])):
        parts = [per_rank[r][s] for r in range(ws)]
        assert [len(p) for p in parts] == [len(p) for p in np.array_split(order[s * 16:(s + 1) * 16], ws)]
        pos = {int(i): k for k, i in enumerate(order)}
        assert all(list(p) == sorted(p, key=lambda i: pos[int(i)]) for p in parts)
        loads = [int(lengths[p].sum()) for p in parts]
        assert max(loads) - min(loads) <= lengths[np.concatenate(parts)].max()
        gap_balanced.append(max(loads) - min(loads))
        gap_plain.append(abs(int(lengths[plain[0][s]].sum()) - int(lengths[plain[1][s]].sum())))
    assert np.mean(gap_balanced) < 0.25 * np.mean(gap_plain)


def test_train_batches_short_rank_reuses_a_row():
    # 13 rows, global batch 6: the last step has 1 row; ranks 1 and 2 repeat it rather than skip the step
    per_rank = [train_batches(13, 2, seed=0, epoch=0, rank=r, world_size=3) for r in range(3)]
    last = epoch_order(13, 0, 0)[12:]
    for r in range(3):
        assert len(per_rank[r]) == 3
        np.testing.assert_array_equal(per_rank[r][-1], last)
    firsts = np.concatenate([per_rank[r][s] for r in range(3) for s in range(2)])
    assert sorted(firsts.tolist() + last.tolist()) == list(range(13))


@pytest.mark.parametrize("bs", [1, 3, 4, 20])
def test_inference_batches(bs):
    lengths = np.array([5, 2, 9, 2, 7, 5, 1, 9, 3, 2, 6])
    batches = inference_batches(lengths, bs)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
    assert all(1 <= len(b) <= bs for b in batches) and len(batches) == -(-len(lengths) // bs)
    assert np.all(np.diff(lengths[flat]) >= 0)  # bucketed by length
    for v in np.unique(lengths):  # stable: equal lengths keep row order
        rows = flat[lengths[flat] == v]
        assert np.all(np.diff(rows) > 0)


def test_encode_data_mode_reads_easynlps_none_placeholder_as_no_pair(tok):
    enc = encode(_frame(("None", "None", "None")), tok, LABELS, DOMAINS, max_length=9)
    single = encode(_frame(("", "", "")), tok, LABELS, DOMAINS, max_length=9)
    np.testing.assert_array_equal(enc.input_ids, single.input_ids)
    np.testing.assert_array_equal(enc.token_type_ids, single.token_type_ids)
    assert not enc.token_type_ids.any()
