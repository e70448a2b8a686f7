"""Export a trained classifier for use outside metakd.

    python -m metakd.export --model out/books/meta_student_finetune --out export/books-student

    python -m metakd.export --model out/books/meta_student_finetune --out export/books-onnx --format onnx

``--format hf`` (the default) writes a Hugging Face folder that
``transformers.BertForSequenceClassification.from_pretrained`` loads as is: ``bert.*`` and
``classifier.*`` tensors in ``model.safetensors``, ``config.json`` with ``architectures``,
``num_labels``, ``id2label``/``label2id``, the vocabulary and tokenizer config. Meta-KD's other heads
(domain embedding, corrupt/domain classifiers, ``fit_dense``) are training-only and left out.

One difference no standard class expresses: metakd's classifier reads ``ReLU(pooler_output)``
(as the Meta-KD reference does), Hugging Face's reads ``pooler_output``. The folder therefore
carries ``modeling_metakd.py``, a ``BertForSequenceClassification`` subclass with the ReLU, named in
``config.json``'s ``auto_map``: ``AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)`` gives metakd's logits exactly; the plain class loads the same weights
but its logits differ.

``--format onnx`` writes ``model.onnx`` (inputs ``input_ids``, ``attention_mask``,
``token_type_ids``, int64 [batch, seq] -> ``logits``), traced by OneFlow's converter (oneflow-onnx)
at a fixed shape (``--batch``, ``--seq``; see metakd/onnx_export.py for why it cannot be dynamic),
with ``config.json`` (labels, the shape), the vocabulary and tokenizer config. The export runs the
graph in onnxruntime on a few encoded texts and compares with metakd's own logits; it fails if they
differ by more than 1e-4.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError

REMOTE_CODE = '''"""metakd's classifier head for transformers: logits = classifier(ReLU(pooler_output))."""
import torch
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput


class MetaKDBertForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification with the ReLU metakd (and the Meta-KD reference) puts before
    the classifier; same weights and names."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        logits = self.classifier(self.dropout(torch.relu(out.pooler_output)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
'''

BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
             "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
             "initializer_range", "layer_norm_eps", "pad_token_id")


def build_parser():
    p = cli.parser("python -m metakd.export", __doc__)
    p.add_argument("--model", type=Path, required=True, help="a metakd model folder (e.g. a stage-2 student)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    p.add_argument("--format", choices=["hf", "onnx"], default="hf",
                   help="hf: a Hugging Face BertForSequenceClassification folder; onnx: model.onnx + config")
    p.add_argument("--batch", type=int, default=8, help="onnx: the graph's (fixed) batch size")
    p.add_argument("--seq", type=int, default=None, help="onnx: the graph's (fixed) length (default: the model's "
                                                          "max_seq_length)")
    return p


def hf_arrays(arrays: dict) -> dict:
    """metakd checkpoint tensors -> BertForSequenceClassification names (other heads dropped)."""
    out = {}
    for key, value in arrays.items():
        if key.startswith("backbone."):
            if not key.endswith(".position_ids"):
                out["bert." + key[len("backbone."):]] = value
        elif key in ("classifier.weight", "classifier.bias"):
            out[key] = value
    return out


def hf_config(bert: dict, labels, info: dict) -> dict:
    cfg = {k: bert[k] for k in BERT_KEYS if k in bert}
    cfg.update({
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "num_labels": len(labels), "id2label": {str(i): lab for i, lab in enumerate(labels)},
        "label2id": {lab: i for i, lab in enumerate(labels)}, "problem_type": "single_label_classification",
        "auto_map": {"AutoModelForSequenceClassification": "modeling_metakd.MetaKDBertForSequenceClassification"},
        "metakd_export": {"head": "logits = classifier(ReLU(pooler_output)); BertForSequenceClassification omits "
                                  "the ReLU: load with trust_remote_code=True for these logits",
                          "role": info.get("role"), "genre": info.get("genre"), "task": info.get("task"),
                          "weights_sha256_of_source": info.get("weights_sha256"),
                          "max_seq_length": info.get("max_seq_length"), "compat": info.get("compat", "none")},
    })
    return cfg


def export_hf(model: Path, out: Path) -> dict:
    from metakd.infra.fileio import save_safetensors as save_file  # a full disk: an OSError naming the file

    from metakd.checkpoint import CONFIG, VOCAB, WEIGHTS, check_model_folder, read_metakd_info, read_state_dict
    from metakd.infra.fileio import atomic_dir, read_json_object

    check_model_folder(model, metakd=True)
    info = read_metakd_info(model)
    labels = [str(x) for x in info.get("labels", [])]
    if len(labels) < 2:
        raise UserError("the checkpoint names no labels; it is not a classifier written by metakd", model)
    if out.exists():
        raise UserError("already exists; choose a new folder or delete it", out)
    arrays, _ = read_state_dict(model)
    tensors = hf_arrays(arrays)
    if "classifier.weight" not in tensors:
        raise UserError("the checkpoint has no classifier; it is damaged", model)
    bert = read_json_object(model / CONFIG)
    cfg = hf_config(bert, labels, info)
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": cli.load_tokenizer(model).do_lower_case,
               "model_max_length": int(info.get("max_seq_length", 512))}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(model / VOCAB, tmp / VOCAB)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
        if (model / "special_tokens_map.json").exists():
            shutil.copyfile(model / "special_tokens_map.json", tmp / "special_tokens_map.json")
        (tmp / "modeling_metakd.py").write_text(REMOTE_CODE, encoding="utf-8")
    return {"tensors": len(tensors), "dropped": sorted(k for k in arrays if k not in tensors and
                                                       "bert." + k[len("backbone."):] not in tensors)}


CHECK_TEXTS = ["a wonderful book , i loved every page of it", "terrible . it broke after two days", "ok",
               "not what i expected , but the second half is good"]


def export_onnx(model: Path, out: Path, batch: int, seq) -> float:
    """model.onnx + config.json + vocabulary in ``out``; returns the largest logit difference
    between onnxruntime and metakd on CHECK_TEXTS."""
    import numpy as np

    from metakd.checkpoint import CONFIG, VOCAB, check_model_folder, read_metakd_info
    from metakd.infra.fileio import atomic_dir, read_json_object
    from metakd.meta_model import load_meta_checkpoint
    from metakd.onnx_export import export_logits, run_padded
    from metakd.runtime import flow

    check_model_folder(model, metakd=True)
    info = read_metakd_info(model)
    labels = [str(x) for x in info.get("labels", [])]
    if len(labels) < 2:
        raise UserError("the checkpoint names no labels; it is not a classifier written by metakd", model)
    max_len = int(info.get("max_seq_length", 128))
    seq = max_len if seq is None else seq
    bert = read_json_object(model / CONFIG)
    if not 1 <= batch <= 4096:
        raise UserError(f"--batch must be in [1, 4096], got {batch}")
    if not 3 <= seq <= int(bert.get("max_position_embeddings", 512)):
        raise UserError(f"--seq must be in [3, the model's max_position_embeddings], got {seq}")
    if out.exists():
        raise UserError("already exists; choose a new folder or delete it", out)
    import onnxruntime as ort

    tok = cli.load_tokenizer(model)
    reference, _ = load_meta_checkpoint(model, verbose=False)
    enc = tok(CHECK_TEXTS, None, max_length=min(seq, max_len))
    with flow.no_grad():  # metakd's own eval path (CPU numpy kernels, unpadded)
        want = reference.eval()(*(flow.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
                                logits_only=True).logits.numpy()
    traced, _ = load_meta_checkpoint(model, verbose=False)  # a fresh copy: tracing changes it
    cfg = hf_config(bert, labels, info)
    for k in ("architectures", "auto_map"):
        cfg.pop(k)
    cfg["onnx"] = {"file": "model.onnx", "batch": batch, "seq": seq, "inputs": ["input_ids", "attention_mask",
                   "token_type_ids"], "outputs": ["logits"], "head": "logits = classifier(ReLU(pooler_output))",
                   "exporter": "oneflow-onnx (OneFlow's converter), fixed shapes"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        export_logits(traced, tmp / "model.onnx", batch, seq)
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        got = run_padded(session, enc)
        diff = float(np.abs(got - want).max())
        if not diff <= 1e-4:
            raise UserError(f"the ONNX graph's logits differ from metakd's by {diff:.3g} (> 1e-4); not written", model)
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(model / VOCAB, tmp / VOCAB)
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": tok.do_lower_case, "model_max_length": seq},
            indent=2) + "\n", encoding="utf-8")
    return diff


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.format == "onnx":
        diff = export_onnx(a.model, a.out, a.batch, a.seq)
        shape = json.loads((a.out / "config.json").read_text(encoding="utf-8"))["onnx"]
        print(f"wrote {a.out / 'model.onnx'}: fixed shape [{shape['batch']}, {shape['seq']}]; onnxruntime vs metakd "
              f"on {len(CHECK_TEXTS)} texts: max |logit difference| {diff:.2g}")
        return 0
    done = export_hf(a.model, a.out)
    print(f"wrote {a.out}: {done['tensors']} tensors in Hugging Face names; left out the training-only heads "
          f"({', '.join(sorted({k.split('.')[0] for k in done['dropped']})) or 'none'})")
    return 0


if __name__ == "__main__":
    main()
