"""Batched inference and classification metrics (accuracy, macro-F1) for any MetaBert."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from metakd.features import Encoded, inference_batches, to_tensors
from metakd.cpu import parameter_views
from metakd.runtime import all_reduce_sum_numpy, flow, shard


def predict_logits(model, enc: Encoded, batch_size: int, device, compat: str = "none", progress: bool = False,
                   desc: str = "predict") -> np.ndarray:
    """Logits [N,K] in the original row order. Length-bucketed and trimmed batches, except in
    ``easynlp`` compat (its content vector depends on the padded length, so inputs stay padded).

    Under the launcher the batches are split between the processes and the logits summed back,
    so every process must call it and every process gets all N rows."""
    trim = compat != "easynlp"
    batches = inference_batches(enc.lengths, batch_size) if trim else [np.arange(i, min(i + batch_size, len(enc))) for i in range(0, len(enc), batch_size)]
    batches = shard(batches)
    out = np.zeros((len(enc), model.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    with flow.no_grad(), parameter_views(model.parameters()):  # frozen while predicting
        for idx in tqdm(batches, desc=desc, disable=None if progress else True, leave=False):
            b = to_tensors(enc, idx, device, trim=trim)
            out[idx] = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], compat=compat,
                            logits_only=True).logits.numpy()
    model.train(was_training)
    return all_reduce_sum_numpy(out, device)


def classification_metrics(labels: np.ndarray, logits: np.ndarray, label_names: Sequence[str]) -> Dict[str, float]:
    """accuracy, macro-F1 (over all labels, present or not), mean cross-entropy, n; with two labels
    also ``binary_f1``, the F1 of label id 1, which is what EasyNLP reports as F1."""
    preds = logits.argmax(axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=list(range(len(label_names))), average="macro", zero_division=0)),
        "loss": float(-logp[np.arange(len(labels)), labels].mean()),
        "n": int(len(labels)),
    }
    if len(label_names) == 2:
        out["binary_f1"] = float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))
    return out


def evaluate(model, enc: Encoded, label_names: Sequence[str], batch_size: int, device, compat: str = "none",
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    logits = predict_logits(model, enc, batch_size, device, compat=compat, progress=progress, desc=desc)
    return classification_metrics(enc.labels, logits, label_names)
