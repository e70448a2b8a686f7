"""The stage objectives (metakd.objectives) against their formulas written out in numpy, and each
shortcut (the teacher cache, precomputed logits) against the teacher run live."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from metakd.bench import synthetic_batch
from metakd.features import to_tensors
from metakd.meta_model import MetaBert
from metakd.objectives import Stage1Objective, Stage2Objective, TeacherObjective
from metakd.runtime import flow

DEVICE = flow.device("cpu")


def _pair():
    flow.manual_seed(0)
    teacher = MetaBert(tiny_config(num_hidden_layers=4), 2, 4).eval()
    student = MetaBert(tiny_config(num_hidden_layers=2, hidden_size=8, num_attention_heads=4, intermediate_size=16),
                       2, 4, fit_size=16).eval()  # eval: no dropout, so two calls give the same numbers
    for p in teacher.parameters():
        p.requires_grad = False
    return teacher, student


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _batch(n=6, seed=1):
    enc = synthetic_batch(50, n, 12, "reviews", seed)
    return enc, to_tensors(enc, np.arange(n), DEVICE, trim=True)


def test_teacher_objective_is_the_weighted_formula():
    """mean_i w_i (CE(y_i) + lambda CE(domain logits_i, shuffled domain_i)), the shuffle drawn from
    (seed, step) alone, written out from the model's own logits."""
    teacher, _ = _pair()
    enc, b = _batch()
    obj = TeacherObjective(teacher, DEVICE, seed=5, domain_loss_weight=0.3)
    loss, parts = obj(b, step=3)
    out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    logits = out.logits.numpy()
    dom_logits = teacher.domain_logits(out.content, b["domains"]).numpy()
    perm = np.random.default_rng([5, 3, 7]).permutation(len(enc.labels))
    shuffled = enc.domains[perm]
    ce = -_log_softmax(logits)[np.arange(6), enc.labels]
    dce = -_log_softmax(dom_logits)[np.arange(6), shuffled]
    want = np.mean(enc.weights * (ce + 0.3 * dce))
    assert float(loss.numpy()) == pytest.approx(want, rel=1e-5)
    assert float(parts["domain_ce"].numpy()) == pytest.approx(dce.mean(), rel=1e-5)
    np.testing.assert_array_equal(obj.corrupted_domains(b["domains"], 3).numpy(), shuffled)
    # another step draws another shuffle; the same step the same one
    assert not np.array_equal(obj.corrupted_domains(b["domains"], 4).numpy(), shuffled) or len(set(enc.domains)) == 1
    off = TeacherObjective(teacher, DEVICE, seed=5, sample_weights=False, domain_loss=False)
    assert float(off(b, 3)[0].numpy()) == pytest.approx(ce.mean(), rel=1e-5)


@pytest.mark.parametrize("alpha,t_squared", [(0.0, False), (0.4, True)])
def test_stage2_objective_is_the_kd_formula_and_cached_logits_change_nothing(alpha, t_squared):
    """alpha CE(y) + (1 - alpha) [T^2] sum_k -softmax(t/T)_k log softmax(s/T)_k, averaged; the same
    loss from precomputed teacher logits as from the teacher run live."""
    teacher, student = _pair()
    enc, b = _batch()
    live = Stage2Objective(teacher, student, DEVICE, temperature=2.0, alpha=alpha, t_squared=t_squared)
    loss_live = float(live(b, 0)[0].numpy())
    cached = Stage2Objective(teacher, student, DEVICE, temperature=2.0, alpha=alpha, t_squared=t_squared)
    logits, _ = cached.precompute_teacher_logits(enc, batch_size=4, progress=False)
    assert logits.shape == (6, 2)
    assert float(cached(b, 0)[0].numpy()) == pytest.approx(loss_live, rel=1e-6)
    with flow.no_grad():
        s = student(b["input_ids"], b["attention_mask"], b["token_type_ids"], logits_only=True).logits.numpy()
    soft = -(np.exp(_log_softmax(logits / 2.0)) * _log_softmax(s / 2.0)).sum(-1).mean() * (4.0 if t_squared else 1.0)
    hard = -_log_softmax(s)[np.arange(6), enc.labels].mean()
    assert loss_live == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-5)


def test_stage1_objective_cache_gives_the_live_teacher_loss_and_terms_switch_off():
    """The loss from the cached teacher targets equals the loss with the teacher run every step,
    term by term; switching the attention and domain terms off removes exactly those terms."""
    teacher, student = _pair()
    enc, b = _batch()
    live = Stage1Objective(teacher, student, DEVICE, domain_loss_weight=0.5)
    loss_live, parts_live = live(b, 0)
    cached = Stage1Objective(teacher, student, DEVICE, domain_loss_weight=0.5)
    with flow.no_grad():
        assert cached.build_cache(enc, 1 << 30, None, progress=False) is not None
    loss_cached, parts_cached = cached(b, 0)
    assert float(loss_cached.numpy()) == pytest.approx(float(loss_live.numpy()), rel=1e-5)
    assert parts_live.keys() == parts_cached.keys()
    for k in parts_live:
        assert float(parts_cached[k].numpy()) == pytest.approx(float(parts_live[k].numpy()), rel=1e-5, abs=1e-7), k
    cached.cache.close()
    bare = Stage1Objective(teacher, student, DEVICE, domain_term=False, attention_term=False)
    _, parts_bare = bare(b, 0)
    assert set(parts_live) == {"att", "rep", "domain"} and set(parts_bare) == {"rep"}
    assert float(parts_bare["rep"].numpy()) == pytest.approx(float(parts_live["rep"].numpy()), rel=1e-5)


def test_marks_name_each_part_of_a_step():
    teacher, student = _pair()
    _, b = _batch()
    seen = []
    obj = Stage2Objective(teacher, student, DEVICE)
    obj.mark = seen.append
    obj(b, 0)
    assert seen == ["student forward", "teacher forward (no grad)", "distillation loss"]
