"""Golden tests for metakd.optim: the LR schedule written out, BERT's weight-decay groups, AdamW steps."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from metakd.meta_model import MetaBert
from metakd.optim import make_optimizer, param_groups, warmup_linear
from metakd.runtime import flow


def expected_multiplier(step: int, total: int, warmup: int) -> float:
    """design.md: linear warm-up over the first ``warmup`` updates (the first update already has lr > 0,
    reaching 1 on update warmup-1), then linear decay to base/(total-warmup) on the last update."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / (total - warmup))


@pytest.mark.parametrize("total,warmup", [(10, 1), (10, 3), (20, 2), (7, 0), (5, 5), (1, 0), (100, 10)])
def test_warmup_linear_formula(total, warmup):
    f = warmup_linear(total, warmup)
    got = [f(s) for s in range(total + 3)]
    if warmup == total:  # no decay phase: after warm-up the denominator would be 0
        want = [(s + 1) / warmup for s in range(warmup)]
        assert got[:warmup] == pytest.approx(want)
    else:
        want = [expected_multiplier(s, total, warmup) for s in range(total + 3)]
        assert got == pytest.approx(want)
        assert got[total - 1] == pytest.approx(1.0 / (total - warmup))
        assert got[total] == 0.0 and got[total + 2] == 0.0  # never negative past the end
    assert all(m > 0 for m in got[:total])  # every real update has lr > 0 (unlike the reference)
    assert max(got) == pytest.approx(1.0)


def test_warmup_linear_ten_percent_example():
    # 100 updates, 10 % warm-up: 0.1, 0.2, ..., 1.0, then 90/90, 89/90, ..., 1/90
    f = warmup_linear(100, 10)
    np.testing.assert_allclose([f(s) for s in range(10)], np.arange(1, 11) / 10)
    np.testing.assert_allclose([f(s) for s in range(10, 100)], np.arange(90, 0, -1) / 90)


def test_warmup_linear_clamps_arguments():
    f = warmup_linear(0, 0)  # a run with no updates still gets a well-defined schedule
    assert f(0) == 1.0
    g = warmup_linear(4, 9)  # warm-up longer than the run: clamped to the run
    assert [g(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    h = warmup_linear(4, -3)
    assert [h(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


@pytest.fixture(scope="module")
def model():
    flow.manual_seed(0)
    return MetaBert(tiny_config(), num_labels=2, num_domains=3, fit_size=8)


def _names_by_group(model, groups):
    ids = {id(p): n for n, p in model.named_parameters()}
    return [[ids[id(p)] for p in g["params"]] for g in groups]


def test_param_groups_names(model):
    groups = param_groups(model, 1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    decay, no_decay = _names_by_group(model, groups)
    all_names = [n for n, _ in model.named_parameters()]
    assert sorted(decay + no_decay) == sorted(all_names) and not set(decay) & set(no_decay)
    for n in no_decay:
        assert n.endswith(".bias") or n.endswith("LayerNorm.weight"), n
    for n in decay:
        assert not n.endswith("bias") and "LayerNorm" not in n, n
    # the ones that matter, by name
    for n in ("backbone.embeddings.LayerNorm.weight", "backbone.embeddings.LayerNorm.bias",
              "backbone.encoder.layer.0.attention.output.LayerNorm.weight", "backbone.encoder.layer.1.output.LayerNorm.weight",
              "backbone.encoder.layer.0.attention.self.query.bias", "classifier.bias", "fit_dense.bias", "backbone.pooler.dense.bias"):
        assert n in no_decay, n
    for n in ("backbone.embeddings.word_embeddings.weight", "backbone.encoder.layer.0.attention.self.query.weight",
              "backbone.encoder.layer.1.intermediate.dense.weight", "classifier.weight", "domain_embedding.weight",
              "corrupt_dense.weight", "fit_dense.weight"):
        assert n in decay, n


def test_param_groups_skip_frozen():
    flow.manual_seed(0)
    m = MetaBert(tiny_config(), num_labels=2, num_domains=2)
    for p in m.backbone.embeddings.parameters():
        p.requires_grad = False
    decay, no_decay = _names_by_group(m, param_groups(m, 0.01))
    assert not any(n.startswith("backbone.embeddings.") for n in decay + no_decay)


def test_make_optimizer_settings_and_lr_per_update(model):
    total, wp = 20, 0.1
    opt, sched = make_optimizer(model, lr=3e-5, weight_decay=1e-4, total_steps=total, warmup_proportion=wp)
    assert len(opt.param_groups) == 2
    for g in opt.param_groups:
        assert g["eps"] == 1e-6 and tuple(g["betas"]) == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])  # the lr the next opt.step() uses
        assert opt.param_groups[1]["lr"] == seen[-1]
        sched.step()
    want = [3e-5 * expected_multiplier(s, total, int(wp * total)) for s in range(total)]
    np.testing.assert_allclose(seen, want, rtol=1e-9, atol=0)
    assert seen[0] > 0


def test_adamw_step_golden():
    """One AdamW update written out: p -= lr * (m_hat / (sqrt(v_hat) + eps)) + lr * wd * p (decoupled),
    with m_hat = g, v_hat = g^2 after bias correction on step 1; no decay on biases."""
    flow.manual_seed(1)
    m = flow.nn.Linear(3, 2)
    lr, wd, total, wp = 0.1, 0.05, 10, 0.2
    w0, b0 = m.weight.numpy().copy(), m.bias.numpy().copy()
    opt, sched = make_optimizer(m, lr=lr, weight_decay=wd, total_steps=total, warmup_proportion=wp)
    x = np.array([[1.0, -2.0, 0.0], [0.5, 1.0, 0.0]], np.float32)  # input 3 is always 0 -> zero gradient
    m(flow.tensor(x)).sum().backward()
    gw, gb = m.weight.grad.numpy().copy(), m.bias.grad.numpy().copy()
    opt.step()
    sched.step()
    lr0 = lr * expected_multiplier(0, total, int(wp * total))
    eps = 1e-6
    want_w = w0 - lr0 * gw / (np.abs(gw) + eps) - lr0 * wd * w0
    want_b = b0 - lr0 * gb / (np.abs(gb) + eps)  # no weight decay on the bias
    np.testing.assert_allclose(m.weight.numpy(), want_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.bias.numpy(), want_b, rtol=1e-5, atol=1e-7)
    # zero-gradient column: only the decay moves it
    np.testing.assert_allclose(m.weight.numpy()[:, 2], w0[:, 2] * (1 - lr0 * wd), rtol=1e-6)


def test_make_optimizer_steps_change_params(model):
    flow.manual_seed(2)
    opt, sched = make_optimizer(model, lr=1e-3, weight_decay=1e-4, total_steps=5, warmup_proportion=0.1)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    ids = flow.tensor(np.array([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]]), dtype=flow.int64)
    mask = (ids != 0).to(flow.int64)
    out = model(ids, mask, flow.zeros_like(ids))
    loss = flow.nn.functional.cross_entropy(out.logits, flow.tensor(np.array([0, 1]), dtype=flow.int64))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    changed = [n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), before[n])]
    assert "classifier.weight" in changed and "backbone.encoder.layer.0.attention.self.query.weight" in changed
    assert "backbone.embeddings.LayerNorm.weight" in changed
