"""The plain OneFlow BERT (metakd.bert) against Hugging Face's numbers (fixture) and against the formulas in numpy."""
from __future__ import annotations


import numpy as np
import pytest

import _np_bert as np_bert
from conftest import ROOT, STUDENT_DIR, TEACHER_DIR, needs_models, tiny_config
from metakd.bert import BertConfig, BertModel, LayerNorm
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
    from metakd.infra.errors import UserError

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
    from metakd.bert import Unpadding
    assert Unpadding.of(flow.ones(2, 3, dtype=flow.int64)) is None
