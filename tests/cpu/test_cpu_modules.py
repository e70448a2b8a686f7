"""The CPU numpy kernels (metakd.cpu): each Function against the formula written out or OneFlow's own
ops, and a whole installed BERT against the plain one, outputs and gradients."""
from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest

from conftest import tiny_config
from metakd import cpu
from metakd.bert import BertModel
from metakd.cpu import functions as fn
from metakd.cpu import kernels as K
from metakd.cpu import modules as cm
from metakd.cpu import state
from metakd.cpu.views import _PARAMS, parameter_views, sync, view
from metakd.runtime import flow


def test_blas_linear_matches_formula():
    """functions.BlasLinear against y = x W^T + b and its gradients written out."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    g = rng.normal(size=(2, 3, 4)).astype(np.float32)
    xt, wt, bt = (flow.tensor(a, requires_grad=True) for a in (x, w, b))
    y = fn.BlasLinear.apply(xt, wt, bt)
    (y * flow.tensor(g)).sum().backward()
    np.testing.assert_allclose(y.numpy(), np.einsum("bti,oi->bto", x, w) + b, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), np.einsum("bto,oi->bti", g, w), atol=1e-5)
    np.testing.assert_allclose(wt.grad.numpy(), np.einsum("bto,bti->oi", g, x), atol=1e-5)
    np.testing.assert_allclose(bt.grad.numpy(), g.sum(axis=(0, 1)), atol=1e-5)


def _kernel_runs(monkeypatch, seed: int, unpad: bool, cls_only: bool = False, scope: bool = False,
                 stage1_terms: bool = False):
    """A tiny BERT (no dropout) run once with OneFlow's CPU kernels and once with the numpy paths
    on (``BLAS_MIN_MACS`` 0, as a tiny model's products are below it): [(pooler output,
    {parameter: gradient})] for each. The loss is a random projection of the pooler output, plus
    with ``stage1_terms`` squared attention scores and hidden states over real tokens (what
    stage 1 takes); ``scope``: inside numpy_scope(), as the trainer runs a step."""
    flow.manual_seed(0)
    model = cpu.install(BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    rng = np.random.default_rng(seed)
    mask = (np.arange(9)[None] < np.array([[9], [4], [6]])).astype(np.int64)
    ids = flow.tensor(rng.integers(5, 50, size=(3, 9)) * mask)
    w_pool = flow.tensor(rng.normal(size=(3, 16)).astype(np.float32))
    runs = []
    for how in ("oneflow", "numpy"):
        monkeypatch.setattr(state, "_kernels", how)
        monkeypatch.setattr(cm, "BLAS_MIN_MACS", 0)
        model.zero_grad(set_to_none=True)
        with cpu.numpy_scope() if scope else contextlib.nullcontext():
            out = model(ids, flow.tensor(mask), unpad=unpad, cls_only=cls_only, output_hidden_states=stage1_terms,
                        output_attention_scores=stage1_terms)
            loss = (out.pooler_output * w_pool).sum()
            if stage1_terms:
                m = flow.tensor(mask.astype(np.float32))
                loss = loss + sum((s * s * m.view(3, 1, 1, 9)).sum() for s in out.attention_scores) * 0.01 \
                    + sum((hs * hs * m.unsqueeze(-1)).sum() for hs in out.hidden_states) * 0.01
            loss.backward()
        runs.append((out.pooler_output.numpy(), {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}))
    assert runs[0][1].keys() == runs[1][1].keys() and len(runs[0][1]) > 20
    return runs


def test_blas_matmul_bert_matches_oneflow_matmul(monkeypatch):
    """The whole (unpadded) BERT with its dense layers in numpy's BLAS: same outputs and gradients."""
    runs = _kernel_runs(monkeypatch, seed=4, unpad=True)
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=1e-5)
    for k in runs[0][1]:
        np.testing.assert_allclose(runs[1][1][k], runs[0][1][k], atol=1e-5, rtol=1e-4, err_msg=k)


def test_numpy_gelu_matches_erf_form_and_its_derivative():
    """kernels.gelu (the CPU feed-forward's GELU) against x Phi(x) with math.erf in float64, and its
    derivative against Phi(x) + x phi(x) and a central difference."""
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(scale=3, size=300_000)]).astype(np.float32)
    y, dy = K.gelu(x)
    y_only, none = K.gelu(x, derivative=False)  # inference skips the derivative
    assert none is None
    np.testing.assert_array_equal(y_only, y)
    x64 = x.astype(np.float64)
    erf = np.vectorize(math.erf)(x64 / math.sqrt(2.0))
    ref = 0.5 * x64 * (1.0 + erf)
    dref = 0.5 * (1.0 + erf) + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    assert y.dtype == np.float32 and dy.dtype == np.float32
    # float32 rounding of values up to |x|: a few 1e-7 relative to max(1, |x|)
    assert np.max(np.abs(y - ref) / np.maximum(1.0, np.abs(x64))) < 5e-7
    assert np.max(np.abs(dy - dref)) < 5e-7
    h = 1e-4
    g = lambda t: 0.5 * t * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))
    fd = (g(x64[:4001] + h) - g(x64[:4001] - h)) / (2 * h)
    np.testing.assert_allclose(dy[:4001], fd, atol=1e-6)


def test_blas_attention_matches_oneflow_autograd():
    """The numpy attention core (mask, softmax, dropout mask, both products) against the same
    function composed of OneFlow's own ops, forward and gradients, with a loss on the context and
    on the pre-softmax scores (stage 1 distils those)."""
    rng = np.random.default_rng(5)
    b, lq, l, heads, d = 3, 6, 6, 4, 5
    h, scale = heads * d, 1.0 / math.sqrt(d)
    q, k, v = (rng.normal(size=(b, n, h)).astype(np.float32) for n in (lq, l, l))
    lengths = np.array([6, 4, 2])
    mask = ((np.arange(l)[None] >= lengths[:, None]) * -10000.0).astype(np.float32).reshape(b, 1, 1, l)
    keep = (rng.random((b, heads, lq, l)) > 0.2).astype(np.float32) / 0.8
    g_ctx = rng.normal(size=(b, lq, h)).astype(np.float32)
    g_sc = rng.normal(size=(b, heads, lq, l)).astype(np.float32)
    results = []
    for how in ("numpy", "oneflow"):
        qt, kt, vt = (flow.tensor(a, requires_grad=True) for a in (q, k, v))
        if how == "numpy":
            ctx, scores = fn.attention(heads, scale).apply(qt, kt, vt, flow.tensor(mask), flow.tensor(keep))
        else:
            split = lambda t: t.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
            scores = flow.matmul(split(qt) * scale, split(kt).transpose(-1, -2))
            probs = flow.softmax(scores + flow.tensor(mask), dim=-1) * flow.tensor(keep)
            ctx = flow.matmul(probs, split(vt)).permute(0, 2, 1, 3).reshape(b, lq, h)
        ((ctx * flow.tensor(g_ctx)).sum() + (scores * flow.tensor(g_sc)).sum()).backward()
        results.append([ctx.numpy(), scores.numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()])
    for name, a, o in zip(["context", "scores", "dq", "dk", "dv"], *results):
        np.testing.assert_allclose(a, o, atol=2e-5, rtol=1e-4, err_msg=name)
    # no dropout: an empty mask
    with flow.no_grad():
        ctx0, _ = fn.attention(heads, scale).apply(flow.tensor(q), flow.tensor(k), flow.tensor(v), flow.tensor(mask), flow.zeros(0))
    s = (q.reshape(b, lq, heads, d).transpose(0, 2, 1, 3) * scale) @ k.reshape(b, l, heads, d).transpose(0, 2, 3, 1) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ v.reshape(b, l, heads, d).transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3).reshape(b, lq, h)
    np.testing.assert_allclose(ctx0.numpy(), ref, atol=1e-5)


def test_numpy_embedding_gradient_sums_repeated_rows():
    """functions.EmbeddingLookup: rows looked up, and the gradient summed per id (np.add.at), zero elsewhere."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(11, 4)).astype(np.float32)
    ids = np.array([[3, 5, 3, 0], [10, 3, 5, 7]])
    g = rng.normal(size=(2, 4, 4)).astype(np.float32)
    wt = flow.tensor(w, requires_grad=True)
    y = fn.EmbeddingLookup.apply(wt, flow.tensor(ids))
    (y * flow.tensor(g)).sum().backward()
    np.testing.assert_array_equal(y.numpy(), w[ids])
    ref = np.zeros_like(w)
    np.add.at(ref, ids.reshape(-1), g.reshape(-1, 4))
    np.testing.assert_allclose(wt.grad.numpy(), ref, atol=1e-6)


def test_numpy_dropout_masks():
    """The numpy dropout sibling on CPU: keeps about 1-p, scales kept values by 1/(1-p), and a re-seed gives
    the same mask again (the trainer re-seeds every step); off in eval mode."""
    drop = cpu.install(flow.nn.Dropout(0.25)).train()
    x = flow.ones(200, 500)
    drop.numpy_generator.manual_seed(11)
    a = drop(x).numpy()
    assert set(np.unique(a).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.01
    drop.numpy_generator.manual_seed(11)
    np.testing.assert_array_equal(drop(x).numpy(), a)
    assert not np.array_equal(drop(x).numpy(), a)
    np.testing.assert_array_equal(drop.eval()(x).numpy(), x.numpy())


@pytest.mark.parametrize("scope", [False, True])
@pytest.mark.parametrize("unpad,cls_only", [(False, False), (True, False), (False, True), (True, True)])
def test_numpy_kernels_bert_matches_oneflow_kernels(monkeypatch, unpad, cls_only, scope):
    """The whole BERT with every CPU numpy path on (dense layers, GELU, attention core, word
    embeddings) against OneFlow's kernels: same outputs and gradients, including a loss on the
    attention scores and hidden states, as stage 1 takes them; with ``scope``, inside
    numpy_scope() (tensors read once), as the trainer runs a step."""
    runs = _kernel_runs(monkeypatch, seed=7, unpad=unpad, cls_only=cls_only, scope=scope, stage1_terms=not cls_only)
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=1e-5)
    for k in runs[0][1]:
        scale = max(1.0, np.abs(runs[0][1][k]).max())
        np.testing.assert_allclose(runs[1][1][k] / scale, runs[0][1][k] / scale, atol=2e-5, err_msg=k)


def test_parameter_views_are_views_kept_across_steps_and_nest():
    """parameter_views: a parameter is read once; after an in-place update and sync() the cached
    view shows the new values (it is the parameter's memory); a nested use keeps the outer views."""
    p, q = flow.nn.Parameter(flow.ones(4)), flow.nn.Parameter(flow.ones(2))
    with parameter_views([p]):
        first = view(p)
        with flow.no_grad():
            p.mul_(3.0)
        sync()
        assert view(p) is first
        np.testing.assert_array_equal(first, np.full(4, 3.0, np.float32))
        with parameter_views([p, q]):
            assert id(q) in _PARAMS and view(p) is first
        assert id(p) in _PARAMS and id(q) not in _PARAMS
    assert not _PARAMS


@pytest.mark.parametrize("unpad", [True, False])
def test_numpy_layer_matches_module_by_module_with_dropout(monkeypatch, unpad):
    """A whole BertLayer as one numpy Function (``functions.fused_layer``) against the same numpy pieces run
    module by module, dropout on (both draw the same masks from the same generators): outputs,
    attention scores, hidden states and every gradient, in a training step and in inference."""
    monkeypatch.setattr(cm, "BLAS_MIN_MACS", 0)
    flow.manual_seed(0)
    model = cpu.install(BertModel(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3))).train()
    rng = np.random.default_rng(11)
    mask = (np.arange(9)[None] < np.array([[9], [4], [6]])).astype(np.int64)
    ids = flow.tensor(rng.integers(5, 50, size=(3, 9)) * mask)
    w_pool = flow.tensor(rng.normal(size=(3, 16)).astype(np.float32))
    m = flow.tensor(mask.astype(np.float32))
    gens = [mod.numpy_generator for mod in model.modules() if isinstance(mod, cm.NumpyDropout)]
    runs, calls = [], []
    real_fn = K.layer_forward
    monkeypatch.setattr(K, "layer_forward", lambda *a, **k: calls.append(1) or real_fn(*a, **k))
    for fused in (False, True):
        monkeypatch.setattr(cm, "FUSE_LAYERS", fused)
        for i, g in enumerate(gens):
            g.manual_seed(100 + i)
        model.zero_grad(set_to_none=True)
        with cpu.numpy_scope():
            out = model(ids, flow.tensor(mask), unpad=unpad, output_hidden_states=True, output_attention_scores=True)
            loss = (out.pooler_output * w_pool).sum() \
                + sum((s * s * m.view(3, 1, 1, 9)).sum() for s in out.attention_scores) * 0.01 \
                + sum((hs * hs * m.unsqueeze(-1)).sum() for hs in out.hidden_states) * 0.01
            loss.backward()
        with flow.no_grad():
            model.eval()
            infer = model(ids, flow.tensor(mask), unpad=unpad).last_hidden_state.numpy()
            model.train()
        runs.append(([t.numpy() for t in (out.pooler_output, *out.attention_scores, *out.hidden_states)], infer,
                     {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}))
    assert len(calls) == 2 * len(model.encoder.layer)  # the fused run's training step and inference
    (outs0, inf0, g0), (outs1, inf1, g1) = runs
    assert g0.keys() == g1.keys() and len(g0) > 20
    for a, b in zip(outs0, outs1):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(inf1 * mask[..., None], inf0 * mask[..., None], atol=2e-5, rtol=1e-5)
    for k in g0:
        scale = max(1.0, np.abs(g0[k]).max())
        np.testing.assert_allclose(g1[k] / scale, g0[k] / scale, atol=2e-5, err_msg=k)


def test_numpy_layer_of_a_copied_model_uses_its_own_modules(monkeypatch):
    """The layer Function closes over its module; a deep copy gets its own (another dropout rate here)."""
    monkeypatch.setattr(cm, "BLAS_MIN_MACS", 0)
    flow.manual_seed(0)
    model = cpu.install(BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))).train()
    ids = flow.tensor(np.random.default_rng(2).integers(5, 50, size=(2, 7)))
    model(ids).pooler_output.sum().backward()
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, cm.NumpyDropout):
            m.p = 0.9
    a = model(ids).last_hidden_state.numpy()
    b = twin(ids).last_hidden_state.numpy()
    assert twin.encoder.layer[0].__dict__["_fused"].owner is twin.encoder.layer[0]
    np.testing.assert_array_equal(model(ids).last_hidden_state.numpy(), a)  # no dropout in the original
    assert not np.allclose(a, b)  # the copy's own dropout
