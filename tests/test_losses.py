"""Golden tests for metakd.losses: each loss against the formula written out in numpy
(docs/reference.md section 5, docs/design.md section 3), for the default numerics and compat="easynlp"."""
from __future__ import annotations

import math

import numpy as np
import pytest

from metakd.infra.errors import UserError
from metakd.losses import (Stage1Inputs, attention_mse, attention_pairs, cross_entropy_per_example, domain_mse,
                           expertise_weights, hidden_mse, hidden_pairs, layer_map, soft_cross_entropy, stage1_loss,
                           teacher_loss)
from metakd.runtime import flow

COMPATS = ("none", "easynlp")
ATOL = 1e-5


def T(a, dtype=None):
    a = np.asarray(a)
    if dtype is None:
        dtype = flow.int64 if a.dtype.kind in "iu" else flow.float32
    return flow.tensor(np.ascontiguousarray(a), dtype=dtype)


def N(t) -> np.ndarray:
    return t.detach().numpy()


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def np_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[label], one loop iteration per example."""
    out = []
    for z, y in zip(logits.astype(np.float64), labels):
        out.append(-(z[y] - math.log(sum(math.exp(v) for v in z))))
    return np.array(out)


def _mask(lengths, width):
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


# ------------------------------------------------------------------ cross-entropy and the teacher loss


def test_cross_entropy_per_example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32) * 3
    labels = np.array([0, 2, 1, 1, 0])
    got = N(cross_entropy_per_example(T(logits), T(labels)))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, np_ce(logits, labels), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("with_domain", [False, True])
@pytest.mark.parametrize("with_weights", [False, True])
def test_teacher_loss(with_domain, with_weights):
    rng = np.random.default_rng(1)
    b, k, d = 6, 2, 4
    logits = rng.normal(size=(b, k)).astype(np.float32)
    labels = rng.integers(0, k, size=b)
    dom_logits = rng.normal(size=(b, d)).astype(np.float32)
    shuffled = rng.permutation(rng.integers(0, d, size=b))
    w = rng.uniform(-0.5, 1.0, size=b).astype(np.float32)  # prototype scores may be negative
    lam = 0.5

    loss, parts = teacher_loss(T(logits), T(labels),
                               domain_logits=T(dom_logits) if with_domain else None,
                               corrupted_domains=T(shuffled) if with_domain else None,
                               sample_weights=T(w) if with_weights else None, domain_loss_weight=lam)

    ce = np_ce(logits, labels)
    dce = np_ce(dom_logits, shuffled)
    per = ce + (lam * dce if with_domain else 0.0)
    want = np.mean(per * (w if with_weights else 1.0))  # w itself, not 1 + w
    assert loss.ndim == 0
    np.testing.assert_allclose(float(N(loss)), want, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(float(N(parts["ce"])), ce.mean(), atol=ATOL, rtol=1e-5)
    if with_domain:
        np.testing.assert_allclose(float(N(parts["domain_ce"])), dce.mean(), atol=ATOL, rtol=1e-5)
    else:
        assert "domain_ce" not in parts


def test_teacher_loss_domain_weight_scales_domain_term():
    rng = np.random.default_rng(2)
    logits, dom = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    labels, shuffled = np.array([0, 1, 1, 0]), np.array([2, 0, 1, 2])
    got = float(N(teacher_loss(T(logits), T(labels), T(dom), T(shuffled), domain_loss_weight=2.0)[0]))
    np.testing.assert_allclose(got, np.mean(np_ce(logits, labels) + 2.0 * np_ce(dom, shuffled)), atol=ATOL)


# ------------------------------------------------------------------ domain-expertise weights


def test_expertise_weights_formula():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 3)).astype(np.float32) * 2
    labels = rng.integers(0, 3, size=7)
    got = N(expertise_weights(T(logits), T(labels)))
    z = logits.astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.eye(3)[labels]
    # The reference's spelling: 1 / (exp(sum_c ((p_c - y_c) * y_c)^2) + 1)
    want = 1.0 / (np.exp((((p - y) * y) ** 2).sum(axis=1)) + 1.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_expertise_weights_range():
    logits = np.array([[30.0, -30.0], [-30.0, 30.0]], np.float32)
    got = N(expertise_weights(T(logits), T(np.array([0, 0]))))
    np.testing.assert_allclose(got, [0.5, 1.0 / (1.0 + math.e)], atol=1e-6)


# ------------------------------------------------------------------ layer mapping


@pytest.mark.parametrize("t,s,k", [(12, 4, 3), (6, 3, 2), (4, 4, 1), (12, 1, 12), (6, 2, 3)])
def test_layer_map(t, s, k):
    assert layer_map(t, s) == k


@pytest.mark.parametrize("t,s", [(12, 5), (6, 4), (3, 4), (12, 0), (7, 2)])
def test_layer_map_rejects_non_multiples(t, s):
    with pytest.raises(UserError, match="multiple"):
        layer_map(t, s)
    with pytest.raises(UserError):
        attention_pairs(t, s)
    with pytest.raises(UserError):
        hidden_pairs(t, s)


def test_layer_pairs():
    # Reference: student attention j <-> teacher j*k + k - 1 (teacher layers 3, 6, 9, 12, 1-based);
    # student hidden j <-> teacher hidden j*k (0 = embeddings).
    assert attention_pairs(12, 4) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert hidden_pairs(12, 4) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert attention_pairs(6, 3) == [(0, 1), (1, 3), (2, 5)]
    assert hidden_pairs(6, 3) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert attention_pairs(2, 2) == [(0, 0), (1, 1)]
    assert hidden_pairs(2, 2) == [(0, 0), (1, 1), (2, 2)]


# ------------------------------------------------------------------ the per-pair MSEs


def np_attention_mse(s, t, mask, compat):
    if compat == "easynlp":
        s = np.where(s <= -100, 0.0, s)
        t = np.where(t <= -100, 0.0, t)
        return np.mean((s.astype(np.float64) - t) ** 2)
    b, a, l, _ = s.shape
    out = np.zeros(b)
    for i in range(b):
        real = np.flatnonzero(mask[i])
        total = 0.0
        for h in range(a):
            for q in real:
                for k in real:
                    total += (float(s[i, h, q, k]) - float(t[i, h, q, k])) ** 2
        out[i] = total / (a * len(real) ** 2)
    return out


def np_hidden_mse(s, t, mask, compat):
    if compat == "easynlp":
        return np.mean((s.astype(np.float64) - t) ** 2)
    out = np.zeros(s.shape[0])
    for i in range(s.shape[0]):
        real = np.flatnonzero(mask[i])
        out[i] = np.mean((s[i, real].astype(np.float64) - t[i, real]) ** 2)
    return out


def np_domain_mse(s, t, compat):
    d = (s.astype(np.float64) - t) ** 2
    return d.mean() if compat == "easynlp" else d.mean(axis=1)


def _attn_inputs(rng, b=3, a=2, l=5, lengths=(5, 3, 2)):
    s = rng.normal(size=(b, a, l, l)).astype(np.float32)
    t = rng.normal(size=(b, a, l, l)).astype(np.float32)
    return s, t, _mask(lengths, l)


@pytest.mark.parametrize("compat", COMPATS)
def test_attention_mse(compat):
    rng = np.random.default_rng(4)
    s, t, mask = _attn_inputs(rng)
    if compat == "easynlp":  # entries <= -100 are zeroed on both sides before the MSE
        s[0, 0, 1, 2], t[1, 1, 0, 0], s[2, 0, 4, 4], t[2, 0, 4, 4] = -150.0, -1e4, -100.0, 0.3
    got = N(attention_mse(T(s), T(t), T(mask), compat))
    want = np_attention_mse(s, t, mask, compat)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("compat", COMPATS)
def test_hidden_mse(compat):
    rng = np.random.default_rng(5)
    mask = _mask([6, 2, 1], 6)
    s, t = rng.normal(size=(3, 6, 4)).astype(np.float32), rng.normal(size=(3, 6, 4)).astype(np.float32)
    got = N(hidden_mse(T(s), T(t), T(mask), compat))
    want = np_hidden_mse(s, t, mask, compat)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("compat", COMPATS)
def test_domain_mse(compat):
    rng = np.random.default_rng(6)
    s, t = rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
    got = N(domain_mse(T(s), T(t), compat))
    want = np_domain_mse(s, t, compat)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("compat", COMPATS)
def test_padding_affects_losses_only_in_compat(compat):
    rng = np.random.default_rng(7)
    s, t, mask = _attn_inputs(rng)
    hs, ht = rng.normal(size=(3, 5, 4)).astype(np.float32), rng.normal(size=(3, 5, 4)).astype(np.float32)
    pad_pair = (mask[:, :, None] * mask[:, None, :]) == 0  # [B,L,L]: query or key padded
    s2 = s.copy()
    s2[np.broadcast_to(pad_pair[:, None], s.shape)] += 7.0
    hs2 = hs.copy()
    hs2[mask == 0] -= 5.0
    a1, a2 = N(attention_mse(T(s), T(t), T(mask), compat)), N(attention_mse(T(s2), T(t), T(mask), compat))
    h1, h2 = N(hidden_mse(T(hs), T(ht), T(mask), compat)), N(hidden_mse(T(hs2), T(ht), T(mask), compat))
    if compat == "easynlp":
        assert not np.allclose(a1, a2) and not np.allclose(h1, h2)
        np.testing.assert_allclose(a2, np_attention_mse(s2, t, mask, compat), atol=ATOL, rtol=1e-5)
    else:
        np.testing.assert_allclose(a1, a2, atol=1e-6)
        np.testing.assert_allclose(h1, h2, atol=1e-6)


def test_default_gradient_is_zero_at_padding():
    rng = np.random.default_rng(8)
    s, t, mask = _attn_inputs(rng)
    hs, ht = rng.normal(size=(3, 5, 4)).astype(np.float32), rng.normal(size=(3, 5, 4)).astype(np.float32)
    s_t, hs_t = T(s).requires_grad_(), T(hs).requires_grad_()
    (attention_mse(s_t, T(t), T(mask), "none").sum() + hidden_mse(hs_t, T(ht), T(mask), "none").sum()).backward()
    pad_pair = (mask[:, :, None] * mask[:, None, :]) == 0
    gs, gh = s_t.grad.numpy(), hs_t.grad.numpy()
    assert np.all(gs[np.broadcast_to(pad_pair[:, None], s.shape)] == 0) and np.any(gs != 0)
    assert np.all(gh[mask == 0] == 0) and np.any(gh != 0)


# ------------------------------------------------------------------ stage 1


def _stage1_arrays(rng, b=3, a=2, l=5, f=4, n_attn=2, lengths=(5, 3, 2)):
    mask = _mask(lengths, l)
    return dict(
        sa=[rng.normal(size=(b, a, l, l)).astype(np.float32) for _ in range(n_attn)],
        ta=[rng.normal(size=(b, a, l, l)).astype(np.float32) for _ in range(n_attn)],
        sh=[rng.normal(size=(b, l, f)).astype(np.float32) for _ in range(n_attn + 1)],
        th=[rng.normal(size=(b, l, f)).astype(np.float32) for _ in range(n_attn + 1)],
        sd=rng.normal(size=(b, f)).astype(np.float32), td=rng.normal(size=(b, f)).astype(np.float32),
        mask=mask, w=rng.uniform(0.3, 1.0, size=b).astype(np.float32),
    )


def _stage1_inputs(x) -> Stage1Inputs:
    return Stage1Inputs(student_attn=[T(a) for a in x["sa"]], teacher_attn=[T(a) for a in x["ta"]],
                        student_hidden=[T(h) for h in x["sh"]], teacher_hidden=[T(h) for h in x["th"]],
                        student_domain=T(x["sd"]), teacher_domain=T(x["td"]), attention_mask=T(x["mask"]),
                        weights=T(x["w"]))


def np_stage1(x, lam, compat):
    att = sum(np_attention_mse(s, t, x["mask"], compat) for s, t in zip(x["sa"], x["ta"]))
    rep = sum(np_hidden_mse(s, t, x["mask"], compat) for s, t in zip(x["sh"], x["th"]))
    dom = np_domain_mse(x["sd"], x["td"], compat)
    w = x["w"].astype(np.float64)
    if compat == "easynlp":
        return (att + rep + lam * dom) * w.mean(), (att, rep, dom)
    return np.mean(w * (att + rep + lam * dom)), (att.mean(), rep.mean(), dom.mean())


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("lam", [0.5, 1.5])
def test_stage1_loss(compat, lam):
    x = _stage1_arrays(np.random.default_rng(9))
    loss, parts = stage1_loss(_stage1_inputs(x), domain_loss_weight=lam, compat=compat)
    want, (att, rep, dom) = np_stage1(x, lam, compat)
    assert loss.ndim == 0
    np.testing.assert_allclose(float(N(loss)), want, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(float(N(parts["att"])), att, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(float(N(parts["rep"])), rep, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(float(N(parts["domain"])), dom, atol=ATOL, rtol=1e-5)


def _two_example_batch(w):
    """Batch of 2 with very different per-example errors (example 0 near-perfect, example 1 far off)."""
    b, a, l, f = 2, 1, 3, 2
    mask = np.ones((b, l), np.int64)
    ta = np.zeros((b, a, l, l), np.float32)
    sa = ta.copy()
    sa[0] += 0.1
    sa[1] += 1.0
    th = np.zeros((b, l, f), np.float32)
    sh = th.copy()
    sh[0] += 0.2
    sh[1] += 2.0
    td = np.zeros((b, f), np.float32)
    sd = td.copy()
    sd[0] += 0.5
    sd[1] += 1.0
    return dict(sa=[sa], ta=[ta], sh=[sh, sh], th=[th, th], sd=sd, td=td, mask=mask, w=np.asarray(w, np.float32))


def test_per_example_weighting_matters_in_default_only():
    lam = 0.5
    # Per-example errors written out: att_i = a_i^2, rep_i = 2 * h_i^2 (two hidden pairs), dom_i = d_i^2.
    err = np.array([0.1 ** 2 + 2 * 0.2 ** 2 + lam * 0.5 ** 2, 1.0 ** 2 + 2 * 2.0 ** 2 + lam * 1.0 ** 2])
    batch_err = err.mean()  # batch MSE = mean of per-example MSEs when every example has the same size
    losses = {}
    for w in ([0.2, 1.0], [1.0, 0.2], [0.6, 0.6]):  # same mean 0.6
        x = _two_example_batch(w)
        for compat in COMPATS:
            losses[compat, tuple(w)] = float(N(stage1_loss(_stage1_inputs(x), lam, compat)[0]))
        np.testing.assert_allclose(losses["none", tuple(w)], np.mean(np.asarray(w) * err), rtol=1e-5)
        np.testing.assert_allclose(losses["easynlp", tuple(w)], np.mean(w) * batch_err, rtol=1e-5)
    # default: moving weight onto the badly-fit example raises the loss; compat: only the mean counts.
    d = [losses["none", w] for w in ((0.2, 1.0), (1.0, 0.2), (0.6, 0.6))]
    c = [losses["easynlp", w] for w in ((0.2, 1.0), (1.0, 0.2), (0.6, 0.6))]
    assert d[0] > d[2] > d[1] and abs(d[0] - d[1]) > 0.5
    np.testing.assert_allclose(c, [c[2]] * 3, rtol=1e-6)
    assert abs(losses["none", (0.2, 1.0)] - losses["easynlp", (0.2, 1.0)]) > 0.5


def test_stage1_padding_ignored_in_default_only():
    rng = np.random.default_rng(10)
    x = _stage1_arrays(rng)
    y = {k: ([a.copy() for a in v] if isinstance(v, list) else v.copy()) for k, v in x.items()}
    pad_pair = (x["mask"][:, :, None] * x["mask"][:, None, :]) == 0
    for a in y["sa"]:
        a[np.broadcast_to(pad_pair[:, None], a.shape)] = 3.0
    for h in y["sh"]:
        h[x["mask"] == 0] = -4.0
    for compat in COMPATS:
        l1 = float(N(stage1_loss(_stage1_inputs(x), compat=compat)[0]))
        l2 = float(N(stage1_loss(_stage1_inputs(y), compat=compat)[0]))
        if compat == "none":
            np.testing.assert_allclose(l1, l2, rtol=1e-6)
        else:
            assert abs(l1 - l2) > 1e-2


# ------------------------------------------------------------------ stage 2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 2.5, 0.5])
def test_soft_cross_entropy(temperature):
    rng = np.random.default_rng(11)
    zs, zt = rng.normal(size=(5, 3)).astype(np.float32) * 2, rng.normal(size=(5, 3)).astype(np.float32) * 2
    got = float(N(soft_cross_entropy(T(zs), T(zt), temperature)))
    pt = np.exp(np_log_softmax(zt / temperature))
    want = np.mean([-sum(pt[i, c] * np_log_softmax(zs / temperature)[i, c] for c in range(3)) for i in range(5)])
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


def test_soft_cross_entropy_default_temperature_and_float_t():
    rng = np.random.default_rng(12)
    zs, zt = T(rng.normal(size=(4, 2)).astype(np.float32)), T(rng.normal(size=(4, 2)).astype(np.float32))
    assert float(N(soft_cross_entropy(zs, zt))) == pytest.approx(float(N(soft_cross_entropy(zs, zt, 2.0))))
    # T is a float: 2.5 is not truncated to 2 (the reference's int() cast)
    assert float(N(soft_cross_entropy(zs, zt, 2.5))) != pytest.approx(float(N(soft_cross_entropy(zs, zt, 2.0))))
    # minimised (equal to the teacher's entropy) when the student matches the teacher
    same = float(N(soft_cross_entropy(zt, zt, 2.0)))
    p = np.exp(np_log_softmax(N(zt) / 2.0))
    np.testing.assert_allclose(same, np.mean(-(p * np.log(p)).sum(axis=1)), atol=ATOL)


@pytest.mark.parametrize("kind", ["attention", "hidden"])
def test_masked_mse_gradients_numpy_and_oneflow_agree_with_formula(monkeypatch, kind):
    """Default numerics: the CPU numpy Function and OneFlow's ops give the same per-example MSE and
    the gradient 2 w_i (s - t) m / count_i written out, zero at padded entries."""
    rng = np.random.default_rng(9)
    if kind == "attention":
        s, t, mask = _attn_inputs(rng)
        fn, pair = attention_mse, mask[:, None, :, None] * mask[:, None, None, :]
        count = mask.sum(1) ** 2 * s.shape[1]
    else:
        mask = _mask([6, 2, 1], 6)
        s, t = rng.normal(size=(3, 6, 4)).astype(np.float32), rng.normal(size=(3, 6, 4)).astype(np.float32)
        fn, pair = hidden_mse, mask[:, :, None]
        count = mask.sum(1) * s.shape[-1]
    w = rng.normal(size=3).astype(np.float32)
    want = 2 * w.reshape((-1,) + (1,) * (s.ndim - 1)) * (s - t) * pair / count.reshape((-1,) + (1,) * (s.ndim - 1))
    from metakd.cpu import state

    for how in ("numpy", "oneflow"):
        monkeypatch.setattr(state, "_kernels", how)
        st = flow.tensor(s, requires_grad=True)
        out = fn(st, T(t), T(mask), "none")
        (out * T(w)).sum().backward()
        np.testing.assert_allclose(N(out), (want * (s - t) / 2 / w.reshape((-1,) + (1,) * (s.ndim - 1))).reshape(3, -1).sum(1),
                                   atol=ATOL, rtol=1e-5, err_msg=how)
        np.testing.assert_allclose(st.grad.numpy(), want, atol=1e-6, rtol=1e-5, err_msg=how)
