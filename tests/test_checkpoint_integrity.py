"""Damaged checkpoints are detected on load, and outputs are only ever replaced whole.

* metakd checkpoints record the sha256 of ``model.safetensors`` in config.json's ``metakd``
  section; any changed byte is a "checksum mismatch" naming the file and the stage to re-run;
* a truncated file or a damaged safetensors header is caught structurally, for any layout;
* the entry points check every model folder before work starts (exit code 2, one line);
* fileio: files and folders are replaced atomically, a failed write leaves the old one intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from _tiny import SEQ, call_main, make_checkpoint, tiny
from metakd.infra import fileio
from metakd.checkpoint import (WEIGHTS, check_model_folder, check_safetensors, read_state_dict, save_checkpoint,
                               sha256_file)
from metakd.infra.errors import UserError
from metakd.meta_model import load_meta_checkpoint


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "meta_teacher", "meta_teacher")


@pytest.fixture
def ckpt(teacher_ckpt, tmp_path) -> Path:
    """A private copy of the teacher checkpoint, free to damage."""
    return Path(shutil.copytree(teacher_ckpt, tmp_path / "meta_teacher"))


def one_line_naming(err: UserError, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ------------------------------------------------------------------------------ checksum

def test_checksum_recorded_and_deterministic(ckpt, tmp_path):
    info = json.loads((ckpt / "config.json").read_text())["metakd"]
    assert info["weights_sha256"] == sha256_file(ckpt / WEIGHTS)
    model, _ = load_meta_checkpoint(ckpt, verbose=False)
    again = save_checkpoint(tmp_path / "again", model, model.config, {k: v for k, v in info.items() if k != "weights_sha256"})
    assert (again / WEIGHTS).read_bytes() == (ckpt / WEIGHTS).read_bytes(), "same weights, same bytes"


@pytest.mark.parametrize("where", [-1, -100, 0.5])
def test_changed_byte_is_a_checksum_mismatch_naming_the_stage(ckpt, where):
    path = ckpt / WEIGHTS
    data = bytearray(path.read_bytes())
    i = int(len(data) * where) if isinstance(where, float) else where
    data[i] ^= 0x01  # one flipped bit inside the tensors: same size, valid header
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch") as e:
        load_meta_checkpoint(ckpt, verbose=False)
    msg = one_line_naming(e.value, path)
    assert "re-run 3_train_teacher.sh" in msg
    check_model_folder(ckpt)  # structure is fine: only the checksum can tell


def test_missing_checksum_is_an_error(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["metakd"]["weights_sha256"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="no weights_sha256"):
        read_state_dict(ckpt)


# ------------------------------------------------------------------------------ truncation, bad header

def _header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("cut", ["empty", "4 bytes", "8 bytes", "mid-header", "header only", "mid-tensor", "last byte"])
def test_truncated_weights_are_detected(ckpt, cut):
    path = ckpt / WEIGHTS
    data = path.read_bytes()
    n = _header_len(path)
    keep = {"empty": 0, "4 bytes": 4, "8 bytes": 8, "mid-header": 8 + n // 2, "header only": 8 + n,
            "mid-tensor": len(data) // 2, "last byte": len(data) - 1}[cut]
    path.write_bytes(data[:keep])
    for check in (lambda: check_model_folder(ckpt), lambda: load_meta_checkpoint(ckpt, verbose=False)):
        with pytest.raises(UserError, match="truncated or corrupted") as e:
            check()
        assert "re-run 3_train_teacher.sh" in one_line_naming(e.value, path)


@pytest.mark.parametrize("damage", ["garbage header", "huge length", "not an object", "bad offsets", "appended"])
def test_damaged_header_is_detected(ckpt, damage):
    path = ckpt / WEIGHTS
    data = path.read_bytes()
    n = _header_len(path)
    if damage == "garbage header":
        data = data[:8] + b"\xff" * n + data[8 + n:]
    elif damage == "huge length":
        data = (2**62).to_bytes(8, "little") + data[8:]
    elif damage == "not an object":
        data = data[:8] + b"[1]".ljust(n) + data[8 + n:]
    elif damage == "bad offsets":
        data = data[:8] + data[8:8 + n].replace(b'"data_offsets":[', b'"data_offsets":[1e9,', 1) + data[8 + n:]
    else:
        data = data + b"\0" * 16
    path.write_bytes(data)
    with pytest.raises(UserError, match="truncated or corrupted") as e:
        load_meta_checkpoint(ckpt, verbose=False)
    one_line_naming(e.value, path)


def test_damaged_config_is_detected(ckpt):
    cfg = ckpt / "config.json"
    cfg.write_text(cfg.read_text()[:40])
    with pytest.raises(UserError, match="not valid JSON") as e:
        load_meta_checkpoint(ckpt, verbose=False)
    one_line_naming(e.value, cfg)


def test_truncated_pretrained_model_says_to_fetch_it_again(tmp_path):
    hf = Path(shutil.copytree(tiny().teacher, tmp_path / "bert"))
    (hf / WEIGHTS).write_bytes((hf / WEIGHTS).read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupted.*download or copy the model folder again") as e:
        check_safetensors(hf / WEIGHTS)
    one_line_naming(e.value, hf / WEIGHTS)


def test_incomplete_folders(ckpt, tmp_path):
    (ckpt / "vocab.txt").unlink()
    with pytest.raises(UserError, match="no vocab.txt.*re-run 3_train_teacher.sh"):
        check_model_folder(ckpt)
    with pytest.raises(UserError, match="not a metakd checkpoint"):
        check_model_folder(tiny().teacher, metakd=True)
    (ckpt / WEIGHTS).unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        check_model_folder(ckpt)


# ------------------------------------------------------------------------------ through the entry points

def test_distill_with_a_corrupted_teacher_exits_2_before_training(ckpt, tmp_path):
    path = ckpt / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    out = tmp_path / "books" / "first"
    code, stdout, stderr = call_main("metakd.distill", [
        "--stage", "first", "--genre", "books", "--data-dir", tiny().data, "--teacher", ckpt, "--student",
        tiny().student, "--out", out, "--max-seq-length", SEQ, "--no-progress", "--device", "cpu"])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: checksum mismatch") and "3_train_teacher.sh" in lines[0]
    assert not out.exists() and not (tmp_path / "books" / "first.resume").exists()


def test_evaluate_with_a_truncated_student_exits_2_naming_stage_5(tmp_path):
    student = make_checkpoint(tmp_path / "books" / "meta_student_finetune", "student_second", genre="books")
    args = ["--genre", "books", "--data-dir", tiny().data, "--student", student, "--no-teacher", "--out-root", tmp_path,
            "--no-progress", "--device", "cpu"]
    code, stdout, stderr = call_main("metakd.evaluate", args)
    assert code == 0, stderr  # intact: it works
    (student / WEIGHTS).write_bytes((student / WEIGHTS).read_bytes()[:-3])
    code, stdout, stderr = call_main("metakd.evaluate", args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(student / WEIGHTS) in lines[0] and "5_student_second.sh" in lines[0], stderr


# ------------------------------------------------------------------------------ fileio

def test_atomic_open_failure_leaves_old_file(tmp_path):
    path = tmp_path / "r.json"
    fileio.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(path) as f:
            f.write("{half")
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "ck"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(out) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "1"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_folder_moved_aside_by_a_killed_run_is_recovered(tmp_path):
    """Without renameat2 the old folder is moved aside first; a run killed right then loses nothing."""
    out = tmp_path / "ck"
    aside = tmp_path / ".ck.old.12345"
    aside.mkdir()
    (aside / "model.safetensors").write_text("old")
    (tmp_path / ".ck.xyz12345.tmp").mkdir()  # the half-written new one
    fileio.recover(out)
    assert (out / "model.safetensors").read_text() == "old"
    fileio.remove_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_checkpoint_save_leaves_the_old_one(ckpt, monkeypatch):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir()}
    model, info = load_meta_checkpoint(ckpt, verbose=False)
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, model, model.config, info)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["meta_teacher"]
