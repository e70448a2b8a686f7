"""Reading and writing model folders.

Read (docs/design.md section 4):
  * a Hugging Face BERT folder: ``config.json`` + ``model.safetensors`` (keys with or without a
    ``bert.`` prefix);
  * the older OneFlow port's layout: ``parameters.json`` + ``weights/`` written by ``flow.save``;
  * metakd's own checkpoints: ``config.json`` (with a ``metakd`` section) + ``model.safetensors``
    holding ``backbone.*`` and the Meta-KD heads, and optionally ``training_state/``.
Write: metakd's own format, into a temporary folder that is renamed when complete.

Missing and unexpected keys are reported, ``embeddings.position_ids`` is ignored, a missing
pooler is freshly initialised (and said so), and a shape mismatch is an error.

Integrity: a metakd checkpoint records the sha256 of its ``model.safetensors`` in config.json
(``metakd.weights_sha256``), verified on every load; any safetensors file is also checked for a
readable header and a size that matches it (a truncated copy). Either failure is a UserError
naming the file and saying what to re-run (the stage that wrote it, or the download).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_dir, read_json_object
from metakd import cpu
from metakd.bert import BertConfig, BertModel
from metakd.runtime import flow

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.txt"
TRAINING_STATE = "training_state"
FORMAT_VERSION = 1
IGNORED_KEYS = ("embeddings.position_ids",)
BACKBONE_PREFIXES = ("bert.", "backbone.")

# parameters.json of the older OneFlow port (constructor arguments of its ``Bert``) -> HF names.
_LEGACY_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "type_vocab_size": "type_vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "nheads": "num_attention_heads",
    "activation": "hidden_act",
    "pad_token_id": "pad_token_id",
    "layer_norm_eps": "layer_norm_eps",
    "attn_dropout": "attention_probs_dropout_prob",
    "hidden_dropout": "hidden_dropout_prob",
}


@dataclass
class LoadReport:
    """What a load did: keys it could not fill and keys it did not use."""

    path: str
    layout: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.layout} weights from {self.path}"]
        if self.initialised:
            parts.append(f"freshly initialised (not in the checkpoint): {_short(self.initialised)}")
        if self.missing:
            parts.append(f"missing: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"unused: {_short(self.unexpected)}")
        return "; ".join(parts)


def _short(keys: List[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Layout detection and raw state dicts (numpy)
# ---------------------------------------------------------------------------------------------

def detect_layout(folder: Path) -> str:
    """'metakd', 'huggingface' or 'oneflow-legacy'; a clear error for anything else."""
    if not folder.exists():
        raise UserError("model folder not found; check the path (TEACHER_MODEL / STUDENT_MODEL in the scripts), or get "
                        "the models first (FETCH_MODELS=1 bash 1_get_data.sh)", folder)
    if not folder.is_dir():
        raise UserError("expected a model folder (config.json, vocab.txt, model.safetensors), got a file", folder)
    if (folder / "parameters.json").exists() and (folder / "weights").exists():
        return "oneflow-legacy"
    if (folder / CONFIG).exists() and (folder / WEIGHTS).exists():
        cfg = read_json_object(folder / CONFIG)
        return "metakd" if "metakd" in cfg else "huggingface"
    if (folder / "pytorch_model.bin").exists():
        raise UserError(
            "only pytorch_model.bin found, which needs PyTorch to read (not a dependency of metakd); "
            "convert it once where torch is installed: python -c \"import torch, safetensors.torch as s; "
            "s.save_file({k: v.contiguous() for k, v in torch.load('pytorch_model.bin').items()}, 'model.safetensors')\"",
            folder,
        )
    if (folder / CONFIG).exists():
        raise UserError(f"no {WEIGHTS} next to config.json; the folder is incomplete (copy the weights again)", folder)
    raise UserError(
        "not a model folder: expected config.json + model.safetensors (Hugging Face / metakd) "
        "or parameters.json + weights/ (older OneFlow port)",
        folder,
    )


# Which pipeline step writes a metakd checkpoint of each role: named in "re-run ..." messages.
STAGE_OF_ROLE = {
    "meta_teacher": "3_train_teacher.sh (python -m metakd.train_teacher)",
    "fine_tuned": "3_train_teacher.sh or STUDENT_ALONE=1 5_student_second.sh (python -m metakd.train_teacher)",
    "student_first": "4_student_first.sh (python -m metakd.distill --stage first)",
    "student_second": "5_student_second.sh (python -m metakd.distill --stage second)",
}


def remedy(folder: Path) -> str:
    """How to get an intact copy of a model folder: re-run the stage that wrote it, or copy it again."""
    try:
        role = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8")).get("metakd", {}).get("role")
    except (OSError, ValueError, AttributeError):
        role = None
    if role in STAGE_OF_ROLE:
        return f"re-run {STAGE_OF_ROLE[role]}, which wrote it"
    if role is not None:
        return "re-run the stage that wrote it"
    return "download or copy the model folder again (1_get_data.sh fetches models)"


def check_safetensors(path: Path, fix: Optional[str] = None) -> None:
    """Cheap structural check of a safetensors file: readable header, size that matches it.

    Catches a truncated or overwritten file (a copy that stopped, a full disk) without reading
    the tensors. A bit flipped inside a tensor needs the checksum (:func:`read_safetensors`).
    """
    path = Path(path)
    fix = fix or remedy(path.parent)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, 100 << 20):
                raise UserError(f"the weights file is truncated or corrupted: not a safetensors header (length field {n}, "
                                f"file {size} bytes); {fix}", path)
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"weights file not found; {fix}", path) from None
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}", path) from None
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"the weights file is truncated or corrupted: its header is not JSON; {fix}", path) from None
    if not isinstance(header, dict):
        raise UserError(f"the weights file is truncated or corrupted: its header is not a JSON object; {fix}", path)
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = entry["data_offsets"]
            end = max(end, int(hi))
        except (TypeError, KeyError, ValueError):
            raise UserError(f"the weights file is truncated or corrupted: bad header entry for tensor {key[:60]!r}; {fix}", path) from None
    if size != 8 + n + end:
        raise UserError(f"the weights file is truncated or corrupted: it has {size} bytes, its header says "
                        f"{8 + n + end}; {fix}", path)


def read_safetensors(path: Path, expected_sha256: Optional[str] = None, fix: Optional[str] = None) -> Dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays; damage is a clear error.

    ``expected_sha256`` (metakd checkpoints record it in config.json) catches any change to the
    bytes; without it a truncated file or a damaged header is still caught.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    fix = fix or remedy(path.parent)
    check_safetensors(path, fix)
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise UserError(
            f"checksum mismatch: the weights file is corrupted or was changed after saving; {fix}",
            path,
        )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncation/garbage
        raise UserError(f"cannot read weights ({type(e).__name__}: {e}); the file is truncated or corrupted; {fix}", path) from None


def read_config(folder: Path) -> BertConfig:
    """The BertConfig of any supported layout."""
    layout = detect_layout(folder)
    if layout == "oneflow-legacy":
        params = read_json_object(folder / "parameters.json")
        d = {hf: params[k] for k, hf in _LEGACY_CONFIG_KEYS.items() if k in params}
        return BertConfig.from_dict(d)
    return BertConfig.from_json_file(folder / CONFIG)


def read_state_dict(folder: Path) -> Tuple[Dict[str, np.ndarray], str]:
    """(state dict as numpy arrays, layout name) of a model folder."""
    layout = detect_layout(folder)
    if layout == "oneflow-legacy":
        try:
            sd = flow.load(str(folder / "weights"))
        except Exception as e:
            raise UserError(f"cannot read the flow.save weights ({type(e).__name__}: {e}); the folder is damaged", folder / "weights") from None
        return {k: v.numpy() for k, v in sd.items()}, layout
    expected = None
    if layout == "metakd":
        info = read_json_object(folder / CONFIG)["metakd"]
        expected = info.get("weights_sha256") if isinstance(info, dict) else None
        if not isinstance(expected, str):
            raise UserError(f"config.json's metakd section has no weights_sha256, so the weights cannot be verified; "
                            f"the file was damaged or edited: {remedy(folder)}", folder / CONFIG)
    return read_safetensors(folder / WEIGHTS, expected), layout


def check_model_folder(folder: "str | Path", need_vocab: bool = True, metakd: Optional[bool] = None) -> str:
    """Before any work: the folder is a complete model (config, weights that look whole, vocab).

    ``metakd=True`` requires a checkpoint written by metakd, ``False`` accepts any layout.
    Returns the layout. The weights' checksum is verified later, when they are loaded.
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    if metakd and layout != "metakd":
        raise UserError("not a metakd checkpoint (config.json has no 'metakd' section); pass a folder written by metakd", folder)
    if layout in ("metakd", "huggingface"):
        if layout == "metakd" and not isinstance(read_json_object(folder / CONFIG)["metakd"], dict):
            raise UserError(f"config.json's metakd section is damaged; {remedy(folder)}", folder / CONFIG)
        read_config(folder)
        check_safetensors(folder / WEIGHTS)
    if need_vocab and not (folder / VOCAB).is_file():
        raise UserError(f"no {VOCAB} in the model folder; it is incomplete: {remedy(folder)}", folder)
    if need_vocab:
        check_vocab_size(folder, read_config(folder).vocab_size)
    return layout


def check_vocab_size(folder: Path, vocab_size: int) -> None:
    """A vocab.txt longer than the embedding table gives ids past its end, which OneFlow's CPU
    embedding reads as zero vectors instead of failing: refuse it. A shorter one only leaves
    rows unused (some checkpoints pad the table)."""
    with open(folder / VOCAB, "rb") as f:
        entries = sum(1 for line in f if line.strip())
    if entries > vocab_size:
        raise UserError(f"{VOCAB} has {entries} entries but config.json's vocab_size is {vocab_size}: token ids "
                        f"past {vocab_size - 1} would read no embedding; use the {VOCAB} that came with these weights",
                        folder / VOCAB)


# ---------------------------------------------------------------------------------------------
# Loading into modules
# ---------------------------------------------------------------------------------------------

def _strip_prefix(key: str, prefixes: Iterable[str]) -> Optional[str]:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return None


def assign_state_dict(
    module: flow.nn.Module, arrays: Dict[str, np.ndarray], source: Path, layout: str
) -> LoadReport:
    """Copy ``arrays`` into ``module``'s parameters by name; report what did not match."""
    own = module.state_dict()
    report = LoadReport(str(source), layout)
    updates = {}
    for key, value in arrays.items():
        if key in IGNORED_KEYS or key.endswith(".position_ids"):
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        if tuple(own[key].shape) != tuple(value.shape):
            raise UserError(
                f"tensor {key} has shape {tuple(value.shape)} in the checkpoint but the model expects "
                f"{tuple(own[key].shape)}; config.json does not match the weights",
                source,
            )
        updates[key] = flow.tensor(np.ascontiguousarray(value), dtype=own[key].dtype)
    report.missing = [k for k in own if k not in updates]
    module.load_state_dict(updates, strict=False)
    return report


def load_backbone(path: "str | Path", verbose: bool = True) -> Tuple[BertModel, LoadReport]:
    """A BertModel with the weights of any supported folder (heads of a metakd checkpoint ignored).

    A checkpoint without a pooler (common for sentence-embedding models) gets BERT's
    initialisation for it, and the report says so. Other missing tensors are an error: a
    backbone with random layers would silently train badly.
    """
    folder = Path(path)
    config = read_config(folder)
    arrays, layout = read_state_dict(folder)
    backbone_arrays = {}
    unused = []
    for key, value in arrays.items():
        stripped = _strip_prefix(key, BACKBONE_PREFIXES)
        if stripped is not None:
            backbone_arrays[stripped] = value
        elif layout == "metakd":
            unused.append(key)  # Meta-KD heads: not part of the backbone
        else:
            backbone_arrays[key] = value
    model = cpu.install(BertModel(config))
    report = assign_state_dict(model, backbone_arrays, folder, layout)
    report.unexpected += unused
    report.initialised = [k for k in report.missing if k.startswith("pooler.")]
    report.missing = [k for k in report.missing if not k.startswith("pooler.")]
    if report.missing:
        raise UserError(
            f"the checkpoint lacks {len(report.missing)} backbone tensors ({_short(report.missing)}); "
            "it is not a BERT checkpoint or it is incomplete",
            folder,
        )
    if verbose:
        print(report.summary())
    return model, report


# ---------------------------------------------------------------------------------------------
# Saving metakd checkpoints
# ---------------------------------------------------------------------------------------------

def state_dict_numpy(module: flow.nn.Module) -> Dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()}


def save_checkpoint(
    folder: "str | Path",
    module: flow.nn.Module,
    config: BertConfig,
    metakd_info: dict,
    vocab_from: Optional["str | Path"] = None,
    training_state: Optional[dict] = None,
    extra_files: Optional[Dict[str, str]] = None,
) -> Path:
    """Write a metakd checkpoint folder atomically.

    ``config.json`` = the BERT config + ``metakd`` (role, task, labels, domains, the weights'
    sha256, ...); ``model.safetensors`` = the whole model (``backbone.*`` + heads) so it opens
    without OneFlow; ``vocab.txt`` (+ tokenizer_config.json) copied from ``vocab_from``;
    ``training_state/`` (optimizer, scheduler, RNG, data order) when given, for resuming.
    """
    from metakd.infra.fileio import save_safetensors as save_file  # a full disk: an OSError naming the file

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        # One metadata entry only: safetensors writes a map of several in random order, which would
        # make identical weights give different bytes (and checksums) from run to run.
        save_file(state_dict_numpy(module), str(tmp / WEIGHTS), metadata={"format": "metakd"})
        info = {"format_version": FORMAT_VERSION, **metakd_info, "weights_sha256": sha256_file(tmp / WEIGHTS)}
        cfg = config.to_dict()
        cfg.pop("metakd", None)
        cfg["metakd"] = info
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if vocab_from is not None:
            src = Path(vocab_from)
            for name in (VOCAB, "tokenizer_config.json", "special_tokens_map.json"):
                if (src / name).exists():
                    shutil.copyfile(src / name, tmp / name)
        if training_state is not None:
            flow.save(training_state, str(tmp / TRAINING_STATE))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return folder


def read_metakd_info(folder: "str | Path") -> dict:
    folder = Path(folder)
    if detect_layout(folder) != "metakd":
        raise UserError("not a metakd checkpoint (config.json has no 'metakd' section); pass a folder written by metakd", folder)
    info = read_json_object(folder / CONFIG)["metakd"]
    if not isinstance(info, dict):
        raise UserError(f"config.json's metakd section is damaged; {remedy(folder)}", folder / CONFIG)
    return info


def load_training_state(folder: "str | Path") -> Optional[dict]:
    path = Path(folder) / TRAINING_STATE
    if not path.exists():
        return None
    try:
        return flow.load(str(path))
    except Exception as e:
        raise UserError(f"cannot read the saved training state ({type(e).__name__}); delete it to start over", path) from None


def load_flow_state(path: Path, what: str, fix: str):
    """``flow.load`` of a state written by ``flow.save``, any damage a UserError."""
    if not Path(path).exists():
        raise UserError(f"{what} is missing; {fix}", path)
    try:
        return flow.load(str(path))
    except Exception as e:
        raise UserError(f"cannot read {what} ({type(e).__name__}); it is damaged; {fix}", path) from None
