"""The OneFlow BERT against Hugging Face's numbers (fixture) and against the formulas in numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

import _np_bert as np_bert
from conftest import ROOT, STUDENT_DIR, TEACHER_DIR, needs_models, tiny_config
from metakd.modeling import BertConfig, BertModel, LayerNorm
from metakd.runtime import flow

FIXTURE = ROOT / "tests" / "fixtures" / "hf_bert.npz"
TOL = 1e-4


@needs_models
@pytest.mark.parametrize("role,folder", [("teacher", TEACHER_DIR), ("student", STUDENT_DIR)])
def test_matches_huggingface_bert(role, folder):
    fx = np.load(FIXTURE)
    model = BertModel.from_pretrained(folder, verbose=False)
    assert not model.training  # from_pretrained returns eval mode
    if role == "student":  # the checkpoint has no pooler; the fixture stores the one HF used
        model.pooler.dense.weight.copy_(flow.tensor(fx["student.pooler.dense.weight"]))
        model.pooler.dense.bias.copy_(flow.tensor(fx["student.pooler.dense.bias"]))
    mask = fx["attention_mask"]
    assert mask.min() == 0 and fx["token_type_ids"].max() == 1  # padding and both segments covered
    with flow.no_grad():
        out = model(flow.tensor(fx["input_ids"]), flow.tensor(mask), flow.tensor(fx["token_type_ids"]),
                    output_hidden_states=True, output_attentions=True, output_attention_scores=True)
    n_layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == n_layers + 1 and len(out.attentions) == n_layers
    for i, h in enumerate(out.hidden_states):
        np.testing.assert_allclose(h.numpy(), fx[f"{role}.hidden_states.{i}"], atol=TOL, rtol=0, err_msg=f"hidden {i}")
    for i, a in enumerate(out.attentions):
        np.testing.assert_allclose(a.numpy(), fx[f"{role}.attentions.{i}"], atol=TOL, rtol=0, err_msg=f"attention {i}")
    np.testing.assert_allclose(out.pooler_output.numpy(), fx[f"{role}.pooler_output"], atol=TOL, rtol=0)
    np.testing.assert_array_equal(out.last_hidden_state.numpy(), out.hidden_states[-1].numpy())
    # Pre-softmax scores: softmax(scores + mask) is HF's attention map.
    for s, a_ref in zip(out.attention_scores, (fx[f"{role}.attentions.{i}"] for i in range(n_layers))):
        z = s.numpy() + (1.0 - mask[:, None, None, :]) * -10000.0
        p = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(p / p.sum(-1, keepdims=True), a_ref, atol=TOL, rtol=0)
    # Logits-only inference computes the last layer for [CLS] alone: the same pooler output as HF.
    with flow.no_grad():
        cls = model(flow.tensor(fx["input_ids"]), flow.tensor(mask), flow.tensor(fx["token_type_ids"]), cls_only=True)
    np.testing.assert_allclose(cls.pooler_output.numpy(), fx[f"{role}.pooler_output"], atol=TOL, rtol=0)
    np.testing.assert_allclose(cls.last_hidden_state.numpy()[:, 0], fx[f"{role}.hidden_states.{n_layers}"][:, 0],
                               atol=TOL, rtol=0)
    # Unpadded (dense layers on real tokens only): HF's numbers at every real position, zeros at padding.
    with flow.no_grad():
        up = model(flow.tensor(fx["input_ids"]), flow.tensor(mask), flow.tensor(fx["token_type_ids"]), unpad=True,
                   output_hidden_states=True, output_attention_scores=True)
        up_cls = model(flow.tensor(fx["input_ids"]), flow.tensor(mask), flow.tensor(fx["token_type_ids"]), unpad=True,
                       cls_only=True)
    real = mask.astype(bool)
    for i, h in enumerate(up.hidden_states):
        np.testing.assert_allclose(h.numpy()[real], fx[f"{role}.hidden_states.{i}"][real], atol=TOL, rtol=0)
        assert not h.numpy()[~real].any()
    for s_up, s_full in zip(up.attention_scores, out.attention_scores):
        both = real[:, None, :, None] & real[:, None, None, :]
        both = np.broadcast_to(both, s_up.shape)
        np.testing.assert_allclose(s_up.numpy()[both], s_full.numpy()[both], atol=TOL, rtol=0)
    np.testing.assert_allclose(up.pooler_output.numpy(), fx[f"{role}.pooler_output"], atol=TOL, rtol=0)
    np.testing.assert_allclose(up_cls.pooler_output.numpy(), fx[f"{role}.pooler_output"], atol=TOL, rtol=0)


_np_layer_norm = np_bert.layer_norm


def test_layer_norm_matches_formula_and_oneflow():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(3, 5, 16)).astype(np.float32)
    ln = LayerNorm(16, eps=1e-12)
    ln.weight.copy_(flow.tensor(rng.normal(size=16).astype(np.float32)))
    ln.bias.copy_(flow.tensor(rng.normal(size=16).astype(np.float32)))
    y = ln(flow.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, _np_layer_norm(x, ln.weight.numpy(), ln.bias.numpy(), 1e-12), atol=2e-5)
    ref = flow.nn.functional.layer_norm(flow.tensor(x), (16,), ln.weight, ln.bias, 1e-12).detach().numpy()
    np.testing.assert_allclose(y, ref, atol=2e-5)


def test_layer_norm_gradients_match_oneflow_kernel():
    rng = np.random.default_rng(1)
    x_np = rng.normal(size=(2, 3, 8)).astype(np.float32)
    g_np = rng.normal(size=(2, 3, 8)).astype(np.float32)
    grads = []
    for fast in (True, False):
        ln = LayerNorm(8, eps=1e-5)
        x = flow.tensor(x_np, requires_grad=True)
        y = ln(x) if fast else flow.nn.functional.layer_norm(x, (8,), ln.weight, ln.bias, 1e-5)
        (y * flow.tensor(g_np)).sum().backward()
        grads.append((x.grad.numpy(), ln.weight.grad.numpy(), ln.bias.grad.numpy()))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiny_bert_matches_numpy_forward():
    """An independent numpy BERT (written from the paper's formulas) on random weights."""
    flow.manual_seed(0)
    cfg = tiny_config()
    model = BertModel(cfg).eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, size=(2, 7))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    types = np.array([[0] * 4 + [1] * 3, [0] * 7])
    with flow.no_grad():
        out = model(flow.tensor(ids), flow.tensor(mask), flow.tensor(types), output_hidden_states=True)

    hidden, pooled = np_bert.forward(sd, cfg.to_dict(), ids, mask, types)
    np.testing.assert_allclose(out.hidden_states[0].numpy(), hidden[0], atol=1e-5)
    for i in range(cfg.num_hidden_layers):
        np.testing.assert_allclose(out.hidden_states[i + 1].numpy(), hidden[i + 1], atol=1e-4)
    np.testing.assert_allclose(out.pooler_output.numpy(), pooled, atol=1e-5)


def test_dropout_only_in_train_mode():
    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    ids = flow.tensor(np.arange(1, 11).reshape(2, 5))
    model.eval()
    with flow.no_grad():
        a, b = model(ids).last_hidden_state.numpy(), model(ids).last_hidden_state.numpy()
    np.testing.assert_array_equal(a, b)
    model.train()
    with flow.no_grad():
        c, d = model(ids).last_hidden_state.numpy(), model(ids).last_hidden_state.numpy()
    assert np.abs(c - d).max() > 1e-3 and np.abs(c - a).max() > 1e-3


def test_outputs_are_optional_and_shaped():
    cfg = tiny_config()
    model = BertModel(cfg).eval()
    ids = flow.tensor(np.ones((3, 6), dtype=np.int64))
    out = model(ids)
    assert out.hidden_states is None and out.attentions is None and out.attention_scores is None
    assert tuple(out.last_hidden_state.shape) == (3, 6, 16) and tuple(out.pooler_output.shape) == (3, 16)
    out = model(ids, output_attentions=True, output_attention_scores=True)
    assert all(tuple(t.shape) == (3, 4, 6, 6) for t in out.attentions + out.attention_scores)


def test_config_round_trip_keeps_extra_keys(tmp_path):
    cfg = BertConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4, "architectures": ["BertModel"], "foo": 1})
    d = cfg.to_dict()
    assert d["hidden_size"] == 32 and d["foo"] == 1 and d["architectures"] == ["BertModel"]


def test_config_errors(tmp_path):
    from metakd.errors import UserError

    with pytest.raises(UserError, match="not a multiple"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        BertConfig.from_json_file(bad)


def test_cls_only_gives_the_same_logits_and_gradients():
    """Training with logits_only (stage 2) is the same function of every weight as the full model."""
    from metakd.meta_model import MetaBert

    flow.manual_seed(0)
    model = MetaBert(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), num_labels=2, num_domains=3)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 50, size=(4, 9))
    mask = (np.arange(9)[None] < np.array([[9], [4], [6], [2]])).astype(np.int64)
    args = (flow.tensor(ids * mask), flow.tensor(mask), flow.tensor(np.zeros_like(ids)))
    grads = []
    for logits_only in (False, True):
        model.zero_grad()
        out = model(*args, logits_only=logits_only)
        assert (out.content is None) == logits_only
        (out.logits * flow.tensor([[1.0, -2.0]])).sum().backward()
        grads.append({k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None})
        if logits_only:
            assert tuple(out.backbone.last_hidden_state.shape) == (4, 1, 16)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-5, err_msg=k)
    with pytest.raises(ValueError):
        model.backbone(args[0], cls_only=True, output_hidden_states=True)


def test_unpadded_layers_give_the_same_real_outputs_and_gradients():
    """Training on packed real tokens is the same function of every weight on real positions."""
    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    rng = np.random.default_rng(2)
    B, L = 5, 9
    mask = (np.arange(L)[None] < np.array([[9], [4], [6], [2], [7]])).astype(np.int64)
    ids = flow.tensor(rng.integers(5, 50, size=(B, L)) * mask)
    w_hidden = flow.tensor(rng.normal(size=(B, L, 16)).astype(np.float32) * mask[:, :, None].astype(np.float32))
    w_pool = flow.tensor(rng.normal(size=(B, 16)).astype(np.float32))
    grads, outs = [], []
    for unpad in (False, True):
        model.zero_grad()
        out = model(ids, flow.tensor(mask), unpad=unpad, output_hidden_states=True)
        loss = sum((h * w_hidden).sum() for h in out.hidden_states) + (out.pooler_output * w_pool).sum()
        loss.backward()
        outs.append(out.last_hidden_state.numpy() * mask[:, :, None])
        grads.append({k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None})
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-4, err_msg=k)
    # No padding: nothing to pack, the plain path runs.
    from metakd.modeling import Unpadding
    assert Unpadding.of(flow.ones(2, 3, dtype=flow.int64)) is None


def test_blas_linear_matches_formula():
    """_BlasLinear (METAKD_CPU_MATMUL=blas) against y = x W^T + b and its gradients written out."""
    from metakd.modeling import _BlasLinear

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    g = rng.normal(size=(2, 3, 4)).astype(np.float32)
    xt, wt, bt = (flow.tensor(a, requires_grad=True) for a in (x, w, b))
    y = _BlasLinear.apply(xt, wt, bt)
    (y * flow.tensor(g)).sum().backward()
    np.testing.assert_allclose(y.numpy(), np.einsum("bti,oi->bto", x, w) + b, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), np.einsum("bto,oi->bti", g, w), atol=1e-5)
    np.testing.assert_allclose(wt.grad.numpy(), np.einsum("bto,bti->oi", g, x), atol=1e-5)
    np.testing.assert_allclose(bt.grad.numpy(), g.sum(axis=(0, 1)), atol=1e-5)


def _kernel_runs(monkeypatch, seed: int, unpad: bool, cls_only: bool = False, scope: bool = False,
                 stage1_terms: bool = False):
    """A tiny BERT (no dropout) run once with OneFlow's CPU kernels and once with the numpy paths
    on (``_BLAS_MIN_MACS`` 0, as a tiny model's products are below it): [(pooler output,
    {parameter: gradient})] for each. The loss is a random projection of the pooler output, plus
    with ``stage1_terms`` squared attention scores and hidden states over real tokens (what
    stage 1 takes); ``scope``: inside numpy_scope(), as the trainer runs a step."""
    import contextlib

    import metakd.modeling as modeling

    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    rng = np.random.default_rng(seed)
    mask = (np.arange(9)[None] < np.array([[9], [4], [6]])).astype(np.int64)
    ids = flow.tensor(rng.integers(5, 50, size=(3, 9)) * mask)
    w_pool = flow.tensor(rng.normal(size=(3, 16)).astype(np.float32))
    runs = []
    for how in ("oneflow", "blas"):
        monkeypatch.setattr(modeling, "_CPU_MATMUL", how)
        monkeypatch.setattr(modeling, "_BLAS_MIN_MACS", 0)
        model.zero_grad(set_to_none=True)
        with modeling.numpy_scope() if scope else contextlib.nullcontext():
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
    """_gelu_numpy (the CPU feed-forward's GELU) against x Phi(x) with math.erf in float64, and its
    derivative against Phi(x) + x phi(x) and a central difference."""
    from metakd.modeling import _gelu_numpy

    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(scale=3, size=300_000)]).astype(np.float32)
    y, dy = _gelu_numpy(x)
    y_only, none = _gelu_numpy(x, derivative=False)  # inference skips the derivative
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
    from metakd.modeling import _blas_attention

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
            ctx, scores = _blas_attention(heads, scale).apply(qt, kt, vt, flow.tensor(mask), flow.tensor(keep))
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
        ctx0, _ = _blas_attention(heads, scale).apply(flow.tensor(q), flow.tensor(k), flow.tensor(v), flow.tensor(mask), flow.zeros(0))
    s = (q.reshape(b, lq, heads, d).transpose(0, 2, 1, 3) * scale) @ k.reshape(b, l, heads, d).transpose(0, 2, 3, 1) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ v.reshape(b, l, heads, d).transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3).reshape(b, lq, h)
    np.testing.assert_allclose(ctx0.numpy(), ref, atol=1e-5)


def test_numpy_embedding_gradient_sums_repeated_rows():
    """_NumpyEmbedding: rows looked up, and the gradient summed per id (np.add.at), zero elsewhere."""
    from metakd.modeling import _NumpyEmbedding

    rng = np.random.default_rng(6)
    w = rng.normal(size=(11, 4)).astype(np.float32)
    ids = np.array([[3, 5, 3, 0], [10, 3, 5, 7]])
    g = rng.normal(size=(2, 4, 4)).astype(np.float32)
    wt = flow.tensor(w, requires_grad=True)
    y = _NumpyEmbedding.apply(wt, flow.tensor(ids))
    (y * flow.tensor(g)).sum().backward()
    np.testing.assert_array_equal(y.numpy(), w[ids])
    ref = np.zeros_like(w)
    np.add.at(ref, ids.reshape(-1), g.reshape(-1, 4))
    np.testing.assert_allclose(wt.grad.numpy(), ref, atol=1e-6)


def test_numpy_dropout_masks():
    """metakd's Dropout on CPU: keeps about 1-p, scales kept values by 1/(1-p), and a re-seed gives
    the same mask again (the trainer re-seeds every step); off in eval mode."""
    from metakd.modeling import Dropout

    drop = Dropout(0.25).train()
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
    from metakd.modeling import _PARAMS, _view, parameter_views, sync

    p, q = flow.nn.Parameter(flow.ones(4)), flow.nn.Parameter(flow.ones(2))
    with parameter_views([p]):
        first = _view(p)
        with flow.no_grad():
            p.mul_(3.0)
        sync()
        assert _view(p) is first
        np.testing.assert_array_equal(first, np.full(4, 3.0, np.float32))
        with parameter_views([p, q]):
            assert id(q) in _PARAMS and _view(p) is first
        assert id(p) in _PARAMS and id(q) not in _PARAMS
    assert not _PARAMS


@pytest.mark.parametrize("unpad", [True, False])
def test_numpy_layer_matches_module_by_module_with_dropout(monkeypatch, unpad):
    """A whole BertLayer as one numpy Function (``_numpy_layer``) against the same numpy pieces run
    module by module, dropout on (both draw the same masks from the same generators): outputs,
    attention scores, hidden states and every gradient, in a training step and in inference."""
    import metakd.modeling as modeling

    monkeypatch.setattr(modeling, "_BLAS_MIN_MACS", 0)
    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)).train()
    rng = np.random.default_rng(11)
    mask = (np.arange(9)[None] < np.array([[9], [4], [6]])).astype(np.int64)
    ids = flow.tensor(rng.integers(5, 50, size=(3, 9)) * mask)
    w_pool = flow.tensor(rng.normal(size=(3, 16)).astype(np.float32))
    m = flow.tensor(mask.astype(np.float32))
    gens = [mod.numpy_generator for mod in model.modules() if isinstance(mod, modeling.Dropout)]
    runs, calls = [], []
    real_fn = modeling._numpy_layer_forward
    monkeypatch.setattr(modeling, "_numpy_layer_forward", lambda *a, **k: calls.append(1) or real_fn(*a, **k))
    for fused in (False, True):
        monkeypatch.setattr(modeling, "_FUSE_LAYERS", fused)
        for i, g in enumerate(gens):
            g.manual_seed(100 + i)
        model.zero_grad(set_to_none=True)
        with modeling.numpy_scope():
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
    import copy

    import metakd.modeling as modeling

    monkeypatch.setattr(modeling, "_BLAS_MIN_MACS", 0)
    flow.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    ids = flow.tensor(np.random.default_rng(2).integers(5, 50, size=(2, 7)))
    model(ids).pooler_output.sum().backward()
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, modeling.Dropout):
            m.p = 0.9
    a = model(ids).last_hidden_state.numpy()
    b = twin(ids).last_hidden_state.numpy()
    assert twin.encoder.layer[0].__dict__["_numpy_fn"].layer is twin.encoder.layer[0]
    np.testing.assert_array_equal(model(ids).last_hidden_state.numpy(), a)  # no dropout in the original
    assert not np.allclose(a, b)  # the copy's own dropout
