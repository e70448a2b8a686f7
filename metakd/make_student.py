"""A student BERT made from some of a teacher's own layers (as DistilBERT initialises its student).

    python -m metakd.make_student --teacher models/bert-base-uncased --num-layers 4 --out models/bert-4L-from-teacher
    STUDENT_MODEL=models/bert-4L-from-teacher bash 4_student_first.sh

The student keeps the teacher's embeddings, pooler and the chosen encoder layers, renumbered 0..k-1,
with the teacher's width, heads and vocabulary: a pair that shares one representation space, as
TinyBERT General shares BERT's. Default layers: the last of each block of m = n/k teacher layers
(m-1, 2m-1, ..., n-1; 1,3,5 of 6), the ones stage 1 compares each student layer's attention with. The teacher may be any supported folder (Hugging Face, a metakd checkpoint: its heads are
left out). Writes a Hugging Face folder: config.json, model.safetensors, vocab.txt.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError


def build_parser():
    p = cli.parser("python -m metakd.make_student", __doc__)
    p.add_argument("--teacher", type=Path, required=True, help="the teacher BERT folder to take layers from")
    p.add_argument("--out", type=Path, required=True, help="the student folder to write (must not exist)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-layers", type=int, default=None,
                   help="student layers k (a divisor of the teacher's); the last layer of each block is taken")
    g.add_argument("--layers", default=None, help="comma-separated 0-based teacher layers, in order (e.g. 0,2,4)")
    p.add_argument("--reuse", action="store_true",
                   help="if --out exists and was made from the same teacher folder and layers, keep it "
                        "(STUDENT_FROM_TEACHER in the scripts); made otherwise is an error")
    return p


def default_layers(teacher_layers: int, student_layers: int) -> List[int]:
    """The teacher layers stage 1 pairs with each student layer: ``j*m + m - 1`` for m = n/k."""
    from metakd.losses import attention_pairs

    return [t for _, t in attention_pairs(teacher_layers, student_layers)]


def parse_layers(text: str, teacher_layers: int) -> List[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--layers must be comma-separated integers, got {text!r}") from None
    if not layers:
        raise UserError("--layers is empty; give e.g. 0,2,4")
    if any(not 0 <= l < teacher_layers for l in layers):
        raise UserError(f"--layers {text}: the teacher has layers 0..{teacher_layers - 1}")
    if sorted(set(layers)) != layers:
        raise UserError(f"--layers {text}: give each layer once, in increasing order")
    return layers


def student_arrays(backbone: dict, layers: Sequence[int]) -> dict:
    """The backbone's tensors (BertModel names) with only ``layers`` kept, renumbered 0..k-1."""
    out = {}
    for key, value in backbone.items():
        if key.startswith("encoder.layer."):
            idx, rest = key[len("encoder.layer."):].split(".", 1)
            if int(idx) in layers:
                out[f"encoder.layer.{layers.index(int(idx))}.{rest}"] = value
        else:
            out[key] = value
    return out


def made_from(folder: Path) -> Optional[dict]:
    """What ``folder`` was made of: ``{"teacher": path, "layers": [...]}``, or None if make_student did not make it."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("metakd_made_from")
    except (OSError, ValueError):
        return None


def make_student(teacher: Path, out: Path, layers: Optional[Sequence[int]] = None,
                 num_layers: Optional[int] = None, reuse: bool = False) -> List[int]:
    """Writes the student folder ``out``; with ``reuse``, an ``out`` made from the same teacher folder
    (the same path, resolved) and layers is kept as it is. Returns the teacher layers used."""
    from metakd.infra.fileio import save_safetensors as save_file  # a full disk: an OSError naming the file

    from metakd.checkpoint import CONFIG, VOCAB, WEIGHTS, check_model_folder, load_backbone, read_config, state_dict_numpy
    from metakd.infra.fileio import atomic_dir

    check_model_folder(teacher)
    cfg = read_config(teacher)
    n = cfg.num_hidden_layers
    if layers is None:
        k = num_layers if num_layers is not None else max(1, n // 2)
        if k < 1 or n % k:
            raise UserError(f"--num-layers {k}: it must divide the teacher's {n} layers (stage 1 maps blocks of "
                            "teacher layers to student layers); or pick them with --layers")
        layers = default_layers(n, k)
    layers = list(layers)
    if out.exists():
        if not reuse:
            raise UserError("already exists; choose a new folder or delete it", out)
        have = made_from(out)
        if have is not None and Path(have.get("teacher", "")).resolve() == teacher.resolve() \
                and have.get("layers") == layers:
            return layers
        what = (f"made from {have.get('teacher')} layers {have.get('layers')}" if have is not None
                else "not a student make_student wrote")
        raise UserError(f"already exists, {what}, not {teacher} layers {layers}; delete it or choose another "
                        "folder", out)
    backbone, _ = load_backbone(teacher, verbose=False)
    arrays = student_arrays(state_dict_numpy(backbone), layers)
    config = cfg.to_dict()
    config.pop("metakd", None)
    config["num_hidden_layers"] = len(layers)
    config["metakd_made_from"] = {"teacher": str(teacher), "layers": layers}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        save_file(arrays, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in (VOCAB, "tokenizer_config.json", "special_tokens_map.json"):
            if (teacher / name).exists():
                shutil.copyfile(teacher / name, tmp / name)
    return layers


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from metakd.checkpoint import check_model_folder, read_config

    check_model_folder(a.teacher)
    n = read_config(a.teacher).num_hidden_layers
    layers = parse_layers(a.layers, n) if a.layers is not None else None
    if a.num_layers is not None and a.num_layers < 1:
        raise UserError(f"--num-layers must be >= 1, got {a.num_layers}")
    existed = a.out.exists()
    used = make_student(a.teacher, a.out, layers, a.num_layers, reuse=a.reuse)
    what = f"student of {len(used)} layers (teacher layers {', '.join(map(str, used))} of {n})"
    print(f"reusing the {what} in {a.out}" if existed else f"{what} written to {a.out}")
    return 0


if __name__ == "__main__":
    main()
