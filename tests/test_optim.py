"""Golden tests for metakd.optim: the LR schedule written out, BERT's weight-decay groups, AdamW steps."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from metakd.meta_model import MetaBert
from metakd.optim import make_optimizer, param_groups, warmup_linear
from metakd.runtime import flow


def expected_multiplier(step: int, total: int, warmup: int) -> float:
    """docs/design.md section 3.2: linear warm-up over the first ``warmup`` updates (the first update already has lr > 0,
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


# -- the step-ending update: numpy on CPU against OneFlow's own AdamW + clip_grad_norm_ ------------

def _twin_models(seed: int = 3):
    flow.manual_seed(seed)
    a = MetaBert(tiny_config(), num_labels=2, num_domains=3, fit_size=8)
    b = MetaBert(tiny_config(), num_labels=2, num_domains=3, fit_size=8)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()  # no dropout: the same gradients in both


def _loss(model, step: int, scale: float):
    rng = np.random.default_rng(step)
    ids = flow.tensor(rng.integers(1, 50, size=(3, 6)), dtype=flow.int64)
    out = model(ids, flow.ones_like(ids), flow.zeros_like(ids))
    labels = flow.tensor(rng.integers(0, 2, size=3), dtype=flow.int64)
    return flow.nn.functional.cross_entropy(out.logits, labels) * scale


@pytest.mark.parametrize("max_norm,scale", [(1.0, 1.0), (0.05, 10.0)])  # second: every step clipped
def test_numpy_update_matches_oneflow_adamw_and_clip(max_norm, scale):
    from metakd.cpu.adamw import NumpyUpdate
    from metakd.optim import FlowUpdate

    a, b = _twin_models()
    kw = dict(lr=5e-3, weight_decay=0.01, total_steps=6, warmup_proportion=0.34, eps=1e-6, max_grad_norm=max_norm)
    ua, ub = FlowUpdate(a, **kw), NumpyUpdate(b, **kw)
    for step in range(5):
        assert ub.lr == pytest.approx(ua.lr, rel=1e-12)
        _loss(a, step, scale).backward()
        _loss(b, step, scale).backward()
        na, nb = ua.gradients(), ub.gradients()
        assert nb == pytest.approx(na, rel=1e-4)
        if max_norm < 1:
            assert na > max_norm  # the clipping path is exercised
        ua.apply()
        ub.apply()
        assert all(p.grad is None for p in b.parameters())
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_allclose(pb.numpy(), pa.numpy(), rtol=1e-4, atol=2e-6, err_msg=name)


def test_numpy_update_one_step_written_out():
    """Step 1 with clipping: g' = g * c, c = max_norm / (|g| + 1e-6); m_hat = g', v_hat = g'^2, so
    p -= lr * g' / (|g'| + eps) + lr * wd * p; no decay on the bias."""
    from metakd.cpu.adamw import NumpyUpdate

    flow.manual_seed(1)
    m = flow.nn.Linear(3, 2)
    w0, b0 = m.weight.numpy().copy(), m.bias.numpy().copy()
    lr, wd, max_norm = 0.1, 0.05, 0.5
    up = NumpyUpdate(m, lr=lr, weight_decay=wd, total_steps=1, warmup_proportion=0.0, max_grad_norm=max_norm)
    x = np.array([[1.0, -2.0, 0.0], [0.5, 1.0, 0.0]], np.float32)
    (m(flow.tensor(x)).sum() * 3).backward()
    gw, gb = m.weight.grad.numpy().copy(), m.bias.grad.numpy().copy()
    norm = np.sqrt((gw.astype(np.float64) ** 2).sum() + (gb.astype(np.float64) ** 2).sum())
    assert up.gradients() == pytest.approx(norm, rel=1e-6)
    c = max_norm / (norm + 1e-6)
    up.apply()
    eps = 1e-6
    np.testing.assert_allclose(m.weight.numpy(), w0 - lr * gw * c / (np.abs(gw * c) + eps) - lr * wd * w0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.bias.numpy(), b0 - lr * gb * c / (np.abs(gb * c) + eps), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.weight.numpy()[:, 2], w0[:, 2] * (1 - lr * wd), rtol=1e-6)  # zero gradient: decay only


def test_numpy_update_parameter_without_gradient_decays():
    from metakd.cpu.adamw import NumpyUpdate

    used, unused = flow.nn.Linear(2, 1), flow.nn.Linear(2, 1)
    model = flow.nn.ModuleList([used, unused])
    before = unused.weight.numpy().copy()
    up = NumpyUpdate(model, lr=0.1, weight_decay=0.5, total_steps=10, warmup_proportion=0.0)
    used(flow.ones(3, 2)).sum().backward()
    assert unused.weight.grad is None
    up.gradients()
    up.apply()
    np.testing.assert_allclose(unused.weight.numpy(), before * (1 - 0.1 * 0.5), rtol=1e-6)


def test_numpy_update_state_round_trip(tmp_path):
    """Saved after 2 steps and loaded into a fresh update, the next steps are those of a run that
    never stopped; a state for other parameters is refused."""
    from metakd.cpu.adamw import NumpyUpdate

    a, b = _twin_models(5)
    kw = dict(lr=5e-3, weight_decay=0.01, total_steps=6, warmup_proportion=0.34)
    ua, ub = NumpyUpdate(a, **kw), NumpyUpdate(b, **kw)
    for step in range(2):
        for model, up in ((a, ua), (b, ub)):
            _loss(model, step, 1.0).backward()
            up.gradients()
            up.apply()
    flow.save(ub.state_dict(), str(tmp_path / "optim"))
    ub = NumpyUpdate(b, **kw)
    ub.load_state_dict(flow.load(str(tmp_path / "optim")))
    assert ub.lr == ua.lr
    for step in range(2, 4):
        for model, up in ((a, ua), (b, ub)):
            _loss(model, step, 1.0).backward()
            up.gradients()
            up.apply()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pb.numpy(), pa.numpy())
    with pytest.raises(ValueError):
        NumpyUpdate(flow.nn.Linear(2, 2), **kw).load_state_dict(ua.state_dict())


def test_make_update_numpy_on_cpu_oneflow_on_request(monkeypatch):
    from metakd.cpu import state
    from metakd.cpu.adamw import NumpyUpdate
    from metakd.optim import FlowUpdate, make_update

    m = flow.nn.Linear(2, 2)
    assert type(make_update(m, 1e-3, 0.0, 10, 0.1)) is NumpyUpdate
    monkeypatch.setattr(state, "_kernels", "oneflow")
    assert type(make_update(m, 1e-3, 0.0, 10, 0.1)) is FlowUpdate


# ------------------------------------------------------------------ EasyNLP's (Hugging Face's) AdamW


def _hf_adamw_by_hand(w0, grads, lr_of_step, wd, eps=1e-6, b1=0.9, b2=0.999):
    """transformers.AdamW (correct_bias=True) written out in float64, one parameter; a None
    gradient skips the step for this parameter (its own step count does not advance)."""
    w, m, v, t = np.array(w0, np.float64), 0.0, 0.0, 0
    for s, g in enumerate(grads):
        if g is None:
            continue
        g = np.asarray(g, np.float64)
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr = lr_of_step(s)
        w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        w = w - lr * wd * w
    return w


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["numpy", "oneflow"])
def test_huggingface_adamw_against_the_formula(kind, wd):
    """Five steps, the second one without a gradient for the bias; no clipping (norm below 1)."""
    from metakd.cpu.adamw import NumpyUpdate
    from metakd.optim import FlowUpdate

    flow.manual_seed(0)
    lin = flow.nn.Linear(3, 1)
    w0, b0 = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    cls = NumpyUpdate if kind == "numpy" else FlowUpdate
    up = cls(lin, lr=0.05, weight_decay=wd, total_steps=5, warmup_proportion=0.0, max_grad_norm=1e9,
             variant="huggingface")
    rng = np.random.default_rng(1)
    gw = [rng.normal(scale=1e-3 * (s + 1), size=(1, 3)).astype(np.float32) for s in range(5)]
    gb = [rng.normal(scale=1e-5, size=(1,)).astype(np.float32) if s != 1 else None for s in range(5)]
    lrs = [up.lr]
    for s in range(5):
        lin.weight.grad = flow.tensor(gw[s])
        lin.bias.grad = None if gb[s] is None else flow.tensor(gb[s])
        up.gradients()
        up.apply()
        lrs.append(up.lr)
    lr_of = lambda s: 0.05 * (5 - s) / 5  # warmup_linear(5, 0)
    assert lrs[:5] == pytest.approx([lr_of(s) for s in range(5)])
    np.testing.assert_allclose(lin.weight.numpy(), _hf_adamw_by_hand(w0, gw, lr_of, wd), rtol=1e-5, atol=1e-7)
    # bias: "bias" is in BERT's no-decay group, and its skipped step moves nothing
    np.testing.assert_allclose(lin.bias.numpy(), _hf_adamw_by_hand(b0, gb, lr_of, 0.0), rtol=1e-5, atol=1e-7)


def test_huggingface_and_pytorch_adamw_differ_as_described():
    """A tiny gradient (1e-5) at step 1, eps 1e-6: EasyNLP's update is about lr * 0.24 (its eps acts
    as 3.2e-5), PyTorch's about lr * 0.91."""
    from metakd.cpu.adamw import NumpyUpdate

    moves = {}
    for variant in ("huggingface", "pytorch"):
        lin = flow.nn.Linear(1, 1, bias=False)
        before = float(lin.weight.numpy()[0, 0])
        up = NumpyUpdate(lin, lr=1.0, weight_decay=0.0, total_steps=1, warmup_proportion=0.0, variant=variant)
        lin.weight.grad = flow.tensor([[1e-5]])
        up.gradients()
        up.apply()
        moves[variant] = before - float(lin.weight.numpy()[0, 0])
    assert moves["huggingface"] == pytest.approx(1e-5 / (1e-5 + 1e-6 / np.sqrt(1e-3)), rel=1e-4)  # 0.240
    assert moves["pytorch"] == pytest.approx(1e-5 / (1e-5 + 1e-6), rel=1e-4)                      # 0.909


def test_huggingface_adamw_state_round_trip():
    from metakd.cpu.adamw import NumpyUpdate

    def run(steps, state=None):
        flow.manual_seed(0)
        lin = flow.nn.Linear(2, 2)
        up = NumpyUpdate(lin, lr=0.1, weight_decay=0.01, total_steps=6, warmup_proportion=0.0, variant="huggingface")
        if state is not None:
            up.load_state_dict(state[0])
            lin.load_state_dict(state[1])
        for s in steps:
            lin.weight.grad = flow.full((2, 2), 0.01 * (s + 1))
            lin.bias.grad = None if s == 1 else flow.full((2,), 0.02)
            up.gradients()
            up.apply()
        return lin, up

    whole, _ = run(range(4))
    first, up = run(range(2))
    assert up.param_steps == [2, 1]  # the bias skipped step 1
    resumed, _ = run(range(2, 4), state=(up.state_dict(), {k: v.clone() for k, v in first.state_dict().items()}))
    np.testing.assert_array_equal(resumed.weight.numpy(), whole.weight.numpy())
    np.testing.assert_array_equal(resumed.bias.numpy(), whole.bias.numpy())
