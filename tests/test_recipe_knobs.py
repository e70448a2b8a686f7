"""The stage-2 recipe knobs and the student made from teacher layers (issue: distillation that
transfers), against the formula written out and the teacher's own tensors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from _tiny import SEQ, call_main, make_checkpoint, tiny
from metakd.losses import distillation_loss
from metakd.runtime import flow

ZS = np.array([[1.0, -0.5], [0.2, 0.4], [-1.0, 2.0]], np.float32)
ZT = np.array([[2.0, 0.0], [-0.3, 0.1], [0.5, 0.5]], np.float32)
Y = np.array([0, 1, 0])


def _by_hand(t, alpha, t_squared):
    soft = ce = 0.0
    for zs, zt, y in zip(ZS.astype(float), ZT.astype(float), Y):
        pt = [math.exp(v / t) for v in zt]
        pt = [v / sum(pt) for v in pt]
        log_ps = [v / t - math.log(sum(math.exp(u / t) for u in zs)) for v in zs]
        soft += -sum(p * lp for p, lp in zip(pt, log_ps))
        ce += -(zs[y] - math.log(sum(math.exp(u) for u in zs)))
    soft, ce = soft / 3, ce / 3
    return alpha * ce + (1 - alpha) * (t * t if t_squared else 1.0) * soft


@pytest.mark.parametrize("t,alpha,t_squared", [(2.0, 0.0, False), (2.0, 0.0, True), (4.0, 0.5, True),
                                                (1.0, 1.0, False), (3.0, 0.3, False)])
def test_distillation_loss_formula(t, alpha, t_squared):
    got = distillation_loss(flow.tensor(ZS), flow.tensor(ZT), flow.tensor(Y, dtype=flow.int64), t, alpha, t_squared)
    assert float(got.numpy()) == pytest.approx(_by_hand(t, alpha, t_squared), rel=1e-5)


def test_alpha_out_of_range_is_refused(tmp_path):
    t = tiny()
    teacher = make_checkpoint(tmp_path / "teacher")
    code, _, err = call_main("metakd.distill", ["--stage", "second", "--genre", "books", "--data-dir", t.data,
                                                "--teacher", teacher, "--student", t.student, "--out", tmp_path / "o",
                                                "--alpha", "1.5", "--device", "cpu"])
    assert code == 2 and "--alpha must be in [0, 1]" in err and not (tmp_path / "o").exists()


def test_stage1_without_attention_term(tmp_path):
    t = tiny()
    teacher = make_checkpoint(tmp_path / "teacher")
    code, out, err = call_main("metakd.distill", [
        "--stage", "first", "--genre", "books", "--data-dir", t.data, "--teacher", teacher, "--student", t.student,
        "--out", tmp_path / "s1", "--max-seq-length", SEQ, "--no-progress", "--device", "cpu", "--batch-size", "8",
        "--max-steps", "2", "--log-every", "1", "--save-every", "0", "--no-attention-term"])
    assert code == 0, err
    line = [ln for ln in out.splitlines() if "step 1/" in ln][0]
    assert " att " not in line and " rep " in line and " domain " in line
    assert json.loads((tmp_path / "s1" / "config.json").read_text())["metakd"]["attention_term"] is False


def _tensors(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("layers,expect", [(None, [1, 3]), ("0,2", [0, 2]), ("3", [3])])
def test_make_student_keeps_exactly_the_chosen_layers(tmp_path, layers, expect):
    from metakd.checkpoint import load_backbone

    src = tiny().teacher  # 4 layers, each with its own random weights
    assert json.loads((src / "config.json").read_text())["num_hidden_layers"] == 4
    args = ["--teacher", src, "--out", tmp_path / "student"]
    args += ["--layers", layers] if layers else ["--num-layers", "2"]
    code, out, err = call_main("metakd.make_student", args)
    assert code == 0, err
    student_cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert student_cfg["num_hidden_layers"] == len(expect) and student_cfg["metakd_made_from"]["layers"] == expect
    teacher_bb, _ = load_backbone(src, verbose=False)
    student_bb, report = load_backbone(tmp_path / "student", verbose=False)
    tw = {k: v.numpy() for k, v in teacher_bb.state_dict().items()}
    sw = {k: v.numpy() for k, v in student_bb.state_dict().items()}
    for k, v in sw.items():
        if k.startswith("encoder.layer."):
            j, rest = k[len("encoder.layer."):].split(".", 1)
            np.testing.assert_array_equal(v, tw[f"encoder.layer.{expect[int(j)]}.{rest}"])
        else:
            np.testing.assert_array_equal(v, tw[k])  # embeddings, pooler
    assert (tmp_path / "student" / "vocab.txt").read_text() == (src / "vocab.txt").read_text()


def test_make_student_refuses_bad_layers(tmp_path):
    t = tiny()
    for args, msg in [(["--layers", "1,0"], "increasing order"), (["--layers", "9"], "the teacher has layers"),
                      (["--num-layers", "0"], "--num-layers must be >= 1")]:
        code, _, err = call_main("metakd.make_student", ["--teacher", t.teacher, "--out", tmp_path / "s", *args])
        assert code == 2 and msg in err, err
        assert not (tmp_path / "s").exists()


def test_make_student_reuse_keeps_the_same_student_and_refuses_another(tmp_path):
    t = tiny()
    out = tmp_path / "s"
    args = ["--teacher", t.teacher, "--out", out, "--num-layers", "2"]
    assert call_main("metakd.make_student", args)[0] == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    code, text, err = call_main("metakd.make_student", [*args, "--reuse"])
    assert code == 0 and text.startswith("reusing the student of 2 layers (teacher layers 1, 3 of 4)"), err
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    code, _, err = call_main("metakd.make_student", ["--teacher", t.teacher, "--out", out, "--layers", "0,2", "--reuse"])
    assert code == 2 and f"{out}: already exists, made from {t.teacher} layers [1, 3], not {t.teacher} layers [0, 2]" in err
    code, _, err = call_main("metakd.make_student", [*args])  # without --reuse an existing folder is refused
    assert code == 2 and "already exists; choose a new folder or delete it" in err
    code, _, err = call_main("metakd.make_student", ["--teacher", t.teacher, "--out", t.student, "--num-layers", "2",
                                                     "--reuse"])
    assert code == 2 and "not a student make_student wrote" in err
