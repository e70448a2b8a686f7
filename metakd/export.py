"""Export a trained classifier for use outside metakd.

    python -m metakd.export --model out/books/meta_student_finetune --out export/books-student

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
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from metakd import cli
from metakd.errors import UserError, cli_main

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
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a Hugging Face BertForSequenceClassification folder")
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
    from safetensors.numpy import save_file

    from metakd.checkpoint import CONFIG, VOCAB, WEIGHTS, check_model_folder, read_metakd_info, read_state_dict
    from metakd.fileio import atomic_dir, read_json_object

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


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    done = export_hf(a.model, a.out)
    print(f"wrote {a.out}: {done['tensors']} tensors in Hugging Face names; left out the training-only heads "
          f"({', '.join(sorted({k.split('.')[0] for k in done['dropped']})) or 'none'})")
    return 0


if __name__ == "__main__":
    main()
