"""Prototype scores: how typical each training example is of its own domain and of the others.

score_i = (cos(e_i, c_d) + cos(e_i, mean of the other domains' centroids)) / 2, where e_i is the
pretrained teacher's mean token embedding of example i and c_d the mean embedding of domain d
(both labels together), as in the reference (docs/reference.md section 2.3).
:func:`class_prototype_scores` is the per-class variant (``--prototypes class``).
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from metakd.infra.errors import UserError
from metakd.features import Encoded, inference_batches, to_tensors
from metakd.meta_model import content_vector
from metakd.cpu import parameter_views
from metakd.runtime import all_reduce_sum_numpy, flow, shard


def mean_embeddings(backbone, enc: Encoded, batch_size: int, device, compat: str = "none", progress: bool = True) -> np.ndarray:
    """[N,H] content vectors (float32) of a BertModel, in row order; no grad, eval mode.

    Default: mean over real tokens without [CLS], length-bucketed trimmed batches. ``easynlp``:
    mean over positions 1..L-1 of full-length (padded) inputs, as the reference. Under the
    launcher the processes share the batches (collective: all must call it; all get all rows).
    """
    trim = compat != "easynlp"
    batches = inference_batches(enc.lengths, batch_size) if trim else \
        [np.arange(i, min(i + batch_size, len(enc))) for i in range(0, len(enc), batch_size)]
    batches = shard(batches)
    out = np.zeros((len(enc), backbone.config.hidden_size), dtype=np.float32)
    backbone.eval()
    with flow.no_grad(), parameter_views(backbone.parameters()):  # frozen while embedding
        for idx in tqdm(batches, desc="embeddings", disable=None if progress else True, leave=False):
            b = to_tensors(enc, idx, device, trim=trim)
            h = backbone(b["input_ids"], b["attention_mask"], b["token_type_ids"], unpad=trim).last_hidden_state
            out[idx] = content_vector(h, b["attention_mask"], compat).numpy()
    return all_reduce_sum_numpy(out, device)


def _cos(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    denom = np.linalg.norm(x, axis=1) * np.linalg.norm(c)
    return (x @ c) / np.maximum(denom, 1e-12)


def _two_or_more_domains(domains: np.ndarray) -> list:
    """The sorted domain ids present; a score compares each domain with the others, so at least two."""
    present = sorted(set(domains.tolist()))
    if len(present) < 2:
        raise UserError("prototype scores compare each domain with the others: the training data has only "
                        f"{len(present)} domain; give it at least two")
    return present


def prototype_scores(embeddings: np.ndarray, domains: np.ndarray, num_domains: int) -> np.ndarray:
    """[N,H] embeddings, [N] domain ids -> [N] float64 scores in [-1, 1]."""
    emb = embeddings.astype(np.float64)
    present = _two_or_more_domains(domains)
    centroids = {d: emb[domains == d].mean(axis=0) for d in present}
    scores = np.zeros(len(emb))
    for d in present:
        rows = domains == d
        outside = np.mean([centroids[o] for o in present if o != d], axis=0)
        scores[rows] = (_cos(emb[rows], centroids[d]) + _cos(emb[rows], outside)) / 2.0
    return scores


def class_prototype_scores(embeddings: np.ndarray, domains: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N,H] embeddings, [N] domain ids, [N] label ids -> [N] float64 scores in [-1, 1], with
    class prototypes (the paper's; OF-B's variant, docs/reference.md section 2.3):

        c_{d,y} = mean embedding of domain d's training rows with label y
        o_{d,y} = mean of c_{d',y} over the other domains d' that have label y
                  (none has it: the mean of the other domains' pooled centroids c_{d'})
        score_i = (cos(e_i, c_{d_i,y_i}) + cos(e_i, o_{d_i,y_i})) / 2

    An example is compared with the prototype of its own class: how typical it is of its label in
    its domain, and of that label elsewhere.
    """
    emb = embeddings.astype(np.float64)
    present = _two_or_more_domains(domains)
    pooled = {d: emb[domains == d].mean(axis=0) for d in present}
    centroids = {(d, y): emb[(domains == d) & (labels == y)].mean(axis=0)
                 for d, y in sorted(set(zip(domains.tolist(), labels.tolist())))}
    scores = np.zeros(len(emb))
    for (d, y), c in centroids.items():
        rows = (domains == d) & (labels == y)
        others = [centroids[(o, y)] for o in present if o != d and (o, y) in centroids]
        outside = np.mean(others if others else [pooled[o] for o in present if o != d], axis=0)
        scores[rows] = (_cos(emb[rows], c) + _cos(emb[rows], outside)) / 2.0
    return scores
