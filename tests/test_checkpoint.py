"""Loading the three folder layouts, saving metakd checkpoints, and every load error."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import TEACHER_DIR, needs_models, tiny_config
from metakd.checkpoint import load_backbone, read_state_dict, save_checkpoint
from metakd.infra.errors import UserError
from metakd.meta_model import MetaBert, load_meta_checkpoint
from metakd.bert import BertModel
from metakd.runtime import flow


def _hf_folder(path, model, prefix="", drop=(), extra=None):
    path.mkdir(parents=True, exist_ok=True)
    sd = {prefix + k: v.numpy() for k, v in model.state_dict().items() if not any(k.startswith(d) for d in drop)}
    sd.update(extra or {})
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(model.config.to_dict()))
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]) + "\n")
    return path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k].numpy(), sb[k].numpy(), err_msg=k)


@pytest.fixture
def tiny():
    flow.manual_seed(3)
    return BertModel(tiny_config())


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_huggingface_layout_with_and_without_prefix(tmp_path, tiny, prefix):
    extra = {prefix + "embeddings.position_ids": np.arange(24, dtype=np.int64)[None],
             "cls.predictions.bias": np.zeros(50, np.float32)}
    folder = _hf_folder(tmp_path / "hf", tiny, prefix, extra=extra)
    loaded, report = load_backbone(folder, verbose=False)
    _same_weights(tiny, loaded)
    assert report.layout == "huggingface" and not report.missing and not report.initialised
    assert report.unexpected == ["cls.predictions.bias"]  # position_ids silently ignored


def test_missing_pooler_is_created_and_reported(tmp_path, tiny, capsys):
    folder = _hf_folder(tmp_path / "nopool", tiny, drop=("pooler.",))
    loaded, report = load_backbone(folder)
    assert report.initialised == ["pooler.dense.weight", "pooler.dense.bias"]
    assert "freshly initialised" in capsys.readouterr().out
    assert np.abs(loaded.pooler.dense.bias.numpy()).max() == 0.0  # BERT init: zero bias


def test_missing_encoder_tensor_is_an_error(tmp_path, tiny):
    folder = _hf_folder(tmp_path / "broken", tiny, drop=("encoder.layer.1.output.dense.weight",))
    with pytest.raises(UserError, match="lacks 1 backbone tensors"):
        load_backbone(folder, verbose=False)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, tiny):
    folder = _hf_folder(tmp_path / "shape", tiny)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"tensor encoder.layer.0.intermediate.dense.(weight|bias) has shape \(32(, 16)?,?\).*expects \(64(, 16)?,?\)"):
        load_backbone(folder, verbose=False)


def test_oneflow_legacy_layout(tmp_path, tiny):
    folder = tmp_path / "legacy"
    folder.mkdir()
    flow.save(tiny.state_dict(), str(folder / "weights"))
    c = tiny.config
    (folder / "parameters.json").write_text(json.dumps({
        "vocab_size": c.vocab_size, "type_vocab_size": 2, "max_position_embeddings": c.max_position_embeddings,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_layers": c.num_hidden_layers,
        "nheads": c.num_attention_heads, "activation": "gelu", "pad_token_id": 0, "layer_norm_eps": 1e-12,
        "attn_dropout": 0.1, "hidden_dropout": 0.1}))
    loaded, report = load_backbone(folder, verbose=False)
    assert report.layout == "oneflow-legacy"
    _same_weights(tiny, loaded)


def test_metakd_round_trip_is_bit_exact(tmp_path):
    flow.manual_seed(5)
    model = MetaBert(tiny_config(), num_labels=2, num_domains=4, fit_size=24)
    info = model.metakd_info("student", ["positive", "negative"], ["books", "dvd", "electronics", "kitchen"], "senti")
    out = save_checkpoint(tmp_path / "ckpt", model, model.config, info)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    keys = load_file(str(out / "model.safetensors")).keys()
    assert "backbone.encoder.layer.0.attention.self.query.weight" in keys and "fit_dense.weight" in keys
    loaded, info2 = load_meta_checkpoint(out, verbose=False)
    _same_weights(model, loaded)
    assert info2["labels"] == ["positive", "negative"] and info2["fit_size"] == 24
    backbone, report = load_backbone(out, verbose=False)  # the backbone alone, heads reported unused
    _same_weights(model.backbone, backbone)
    assert "classifier.weight" in report.unexpected


def test_save_replaces_existing_checkpoint_atomically(tmp_path):
    model = MetaBert(tiny_config(), 2, 4)
    info = model.metakd_info("teacher", ["a", "b"], ["x", "y", "z", "w"], "senti")
    save_checkpoint(tmp_path / "c", model, model.config, info)
    (tmp_path / "c" / "stale.txt").write_text("old")
    save_checkpoint(tmp_path / "c", model, model.config, info)
    assert not (tmp_path / "c" / "stale.txt").exists()


def test_failed_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    import metakd.checkpoint as ck

    model = MetaBert(tiny_config(), 2, 4)
    info = model.metakd_info("teacher", ["a", "b"], ["x", "y", "z", "w"], "senti")
    save_checkpoint(tmp_path / "c", model, model.config, info)
    before = (tmp_path / "c" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "sha256_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", model, model.config, info)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_truncated_and_corrupted_weights_are_detected(tmp_path):
    model = MetaBert(tiny_config(), 2, 4)
    info = model.metakd_info("teacher", ["a", "b"], ["x", "y", "z", "w"], "senti")
    folder = save_checkpoint(tmp_path / "c", model, model.config, info)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit inside a tensor: only the checksum can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_meta_checkpoint(folder, verbose=False)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UserError, match="checksum mismatch|truncated"):
        load_meta_checkpoint(folder, verbose=False)
    # A Hugging Face folder has no checksum: truncation is still caught by the reader.
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(model.config.to_dict()))
    (hf / "model.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UserError, match="truncated or corrupted"):
        read_state_dict(hf)


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        load_backbone(tmp_path / "nope")
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "config.json").write_text("{}")
    (tmp_path / "torch" / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(UserError, match="needs PyTorch.*convert"):
        load_backbone(tmp_path / "torch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no model.safetensors"):
        load_backbone(tmp_path / "cfgonly")


@needs_models
def test_real_teacher_loads_with_position_ids_ignored():
    model, report = load_backbone(TEACHER_DIR, verbose=False)
    assert report.unexpected == [] and report.missing == [] and report.initialised == []
    assert model.config.num_hidden_layers == 6
