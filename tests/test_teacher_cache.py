"""Stage 1's teacher cache: same targets as running the teacher, same training result."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from _tiny import SEQ, make_checkpoint, random_encoded, run_cli, tiny
from conftest import tiny_config


def _teacher_and_data():
    from metakd.meta_model import MetaBert
    from metakd.runtime import flow

    flow.manual_seed(3)
    model = MetaBert(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), num_labels=2, num_domains=3)
    model.eval()
    return model, random_encoded(11, 12, vocab=50)


def _targets(model):
    def compute(b):
        t = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_hidden_states=True,
                  output_attention_scores=True)
        return ([t.backbone.attention_scores[1]], [t.backbone.hidden_states[0], t.backbone.hidden_states[2]],
                model.domain_representation(t.content, b["domains"]), t.logits)
    return compute


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_targets_equal_the_teachers_on_real_positions(where, tmp_path):
    from metakd.features import to_tensors
    from metakd.runtime import flow
    from metakd.teacher_cache import Stage1TeacherCache

    model, enc = _teacher_and_data()
    compute = _targets(model)
    cache = Stage1TeacherCache.build(compute, enc, 1, 4, 2, 16, 2, flow.device("cpu"), batch_size=4,
                                     budget_bytes=1 << 30 if where == "memory" else 0, spill_dir=tmp_path / "spill",
                                     progress=False)
    assert cache.where == where
    idx = np.array([7, 0, 3, 10])
    b = to_tensors(enc, idx, flow.device("cpu"), trim=True)
    width = b["input_ids"].shape[1]
    with flow.no_grad():
        want = compute(b)
    got = cache.batch(idx, width, flow.device("cpu"))
    lengths = enc.attention_mask[idx].sum(1)
    for r, n in enumerate(lengths):
        np.testing.assert_allclose(got[0][0].numpy()[r, :, :n, :n], want[0][0].numpy()[r, :, :n, :n], atol=1e-5)
        assert not got[0][0].numpy()[r, :, n:, :].any() and not got[0][0].numpy()[r, :, :, n:].any()
        for q in range(2):
            np.testing.assert_allclose(got[1][q].numpy()[r, :n], want[1][q].numpy()[r, :n], atol=1e-5)
            assert not got[1][q].numpy()[r, n:].any()
    np.testing.assert_allclose(got[2].numpy(), want[2].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[3].numpy(), want[3].numpy(), atol=1e-5)
    cache.close()
    assert not (tmp_path / "spill").exists()


def test_no_room_means_no_cache():
    from metakd.runtime import flow
    from metakd.teacher_cache import Stage1TeacherCache, plan

    model, enc = _teacher_and_data()
    assert Stage1TeacherCache.build(_targets(model), enc, 1, 4, 2, 16, 2, flow.device("cpu"), budget_bytes=0,
                                    spill_dir=None, progress=False) is None
    lay = plan(np.array([3, 5]), 2, 4, 3, 16)
    assert lay.nbytes == 4 * (2 * 4 * (9 + 25) + 3 * 16 * (3 + 5))


def test_stage_one_with_and_without_cache_trains_the_same(tmp_path):
    t = tiny()
    teacher = make_checkpoint(tmp_path / "teacher")
    outs = {}
    for name, gb in (("cached", "4"), ("live", "0")):
        out = tmp_path / name
        p = run_cli("metakd.distill", ["--stage", "first", "--genre", "books", "--data-dir", t.data, "--teacher", teacher,
                                       "--student", t.student, "--out", out, "--epochs", "2", "--max-seq-length", SEQ,
                                       "--no-progress", "--device", "cpu", "--teacher-cache-gb", gb])
        assert p.returncode == 0, p.stderr[-2000:]
        assert ("cached once" in p.stdout) == (name == "cached")
        outs[name] = (load_file(str(out / "model.safetensors")), json.loads((out / "results.json").read_text()))
    (wc, rc), (wl, rl) = outs["cached"], outs["live"]
    # Same data order, same dropout: only float rounding of differently shaped teacher batches differs.
    assert max(float(np.abs(wc[k] - wl[k]).max()) for k in wl) < 1e-4
    assert rc["steps"] == rl["steps"]
    assert not list(tmp_path.glob(".*teacher-cache*"))


def test_stage_two_reuses_the_teacher_logits_of_stage_one(tmp_path):
    import shutil

    t = tiny()
    teacher = make_checkpoint(tmp_path / "teacher")
    first = tmp_path / "first"
    common = ["--genre", "books", "--data-dir", t.data, "--teacher", teacher, "--max-seq-length", SEQ,
              "--no-progress", "--device", "cpu", "--epochs", "1"]
    p = run_cli("metakd.distill", ["--stage", "first", "--student", t.student, "--out", first, *common])
    assert p.returncode == 0, p.stderr[-2000:]
    assert (first / "teacher_logits.npz").is_file()
    # The same stage-first output without the file: stage second computes the logits itself.
    bare = tmp_path / "first_bare"
    shutil.copytree(first, bare)
    (bare / "teacher_logits.npz").unlink()
    results = {}
    for name, student in (("reused", first), ("computed", bare)):
        out = tmp_path / f"second_{name}"
        p = run_cli("metakd.distill", ["--stage", "second", "--student", student, "--out", out, *common])
        assert p.returncode == 0, p.stderr[-2000:]
        assert ("teacher logits from stage first" in p.stdout) == (name == "reused")
        assert ("teacher logits computed once" in p.stdout) == (name == "computed")
        results[name] = load_file(str(out / "model.safetensors"))
    # Cache batches and inference batches differ in shape only: the same training up to float rounding.
    assert max(float(np.abs(results["reused"][k] - results["computed"][k]).max()) for k in results["computed"]) < 1e-4

    # Logits of another teacher are not reused.
    other = make_checkpoint(tmp_path / "teacher2")
    from metakd.checkpoint import read_metakd_info
    from metakd.distill import load_teacher_logits

    with np.load(first / "teacher_logits.npz") as z:
        import json as _json
        key = _json.loads(str(z["key"]))
        n = z["logits"].shape[0]
    assert load_teacher_logits(first, key, n) is not None
    assert load_teacher_logits(first, dict(key, teacher_weights_sha256=read_metakd_info(other)["weights_sha256"] + "x"), n) is None
    assert load_teacher_logits(first, dict(key, data="0" * 16), n) is None
    assert load_teacher_logits(first, key, n + 1) is None
