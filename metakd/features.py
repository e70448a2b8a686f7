"""Rows of a standard TSV -> token id arrays -> batches of tensors (InputExample -> InputFeatures).

Everything is tokenised once, up front, into numpy arrays. Training batches come from a
permutation that depends only on (seed, epoch), so a resumed run sees the same batches; each
batch is trimmed to its longest real sequence (padding beyond it changes nothing in the
default numerics, and costs quadratic attention time). Inference batches are length-bucketed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from metakd.infra.errors import UserError
from metakd.runtime import flow

# How text_b becomes model input (docs/design.md section 3, "input layout").
TEXT_B_MODES = ("data", "none-pair", "empty-pair")


@dataclass
class Encoded:
    """A tokenised split. Arrays have N rows; ids are padded to ``max_length``."""

    input_ids: np.ndarray       # [N,L] int64
    attention_mask: np.ndarray  # [N,L] int64
    token_type_ids: np.ndarray  # [N,L] int64
    labels: np.ndarray          # [N] int64
    domains: np.ndarray         # [N] int64
    weights: np.ndarray         # [N] float32 (prototype score; 0 where not computed)
    guids: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    def subset(self, idx: np.ndarray) -> "Encoded":
        return Encoded(self.input_ids[idx], self.attention_mask[idx], self.token_type_ids[idx], self.labels[idx],
                       self.domains[idx], self.weights[idx], [self.guids[i] for i in idx])


def _index(values: pd.Series, allowed: Sequence[str], what: str, source: str) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(allowed)}
    bad = sorted(set(values) - set(lookup))
    if bad:
        raise UserError(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}", source)
    return values.map(lookup).to_numpy(dtype=np.int64)


def encode(df: pd.DataFrame, tokenizer, labels: Sequence[str], domains: Sequence[str], max_length: int,
           text_b_mode: str = "data", source: str = "<data>") -> Encoded:
    """Tokenise a standard-schema frame (guid, text_a, text_b, label, domain, weight).

    ``text_b_mode``: ``data`` = a pair only where text_b is non-empty (``[CLS] a [SEP]`` for the
    sentiment task); ``none-pair`` = EasyNLP's training input ``[CLS] a [SEP] none [SEP]``;
    ``empty-pair`` = EasyNLP's dev input ``[CLS] a [SEP] [SEP]``.
    """
    if text_b_mode not in TEXT_B_MODES:
        raise ValueError(text_b_mode)
    if len(df) == 0:
        raise UserError("no rows to encode (empty split or genre filter left nothing)", source)
    texts_a = df["text_a"].tolist()
    if text_b_mode == "data":
        # "None" is EasyNLP's placeholder for "no second text" (its train_with_weights.tsv): its files
        # are read as the single sentences they stand for.
        texts_b = [b if b and b != "None" else None for b in df["text_b"].tolist()]
        texts_b = texts_b if any(b is not None for b in texts_b) else None
    elif text_b_mode == "none-pair":
        texts_b = [b if b and b != "None" else "None" for b in df["text_b"].tolist()]
    else:
        texts_b = [b if b and b != "None" else "" for b in df["text_b"].tolist()]
    enc = tokenizer(texts_a, texts_b, max_length=max_length)
    return Encoded(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"],
        labels=_index(df["label"], labels, "label", source), domains=_index(df["domain"], domains, "domain", source),
        weights=df["weight"].to_numpy(dtype=np.float32) if "weight" in df else np.zeros(len(df), np.float32),
        guids=df["guid"].tolist() if "guid" in df else [str(i) for i in range(len(df))],
    )


def to_tensors(enc: Encoded, idx: np.ndarray, device, trim: bool = True) -> Dict[str, flow.Tensor]:
    """Batch ``idx`` of ``enc`` as tensors on ``device``; ``trim`` cuts padding beyond the longest row."""
    width = int(enc.attention_mask[idx].sum(axis=1).max()) if trim else enc.input_ids.shape[1]
    t = lambda a, dtype: flow.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
    return {
        "input_ids": t(enc.input_ids[idx, :width], flow.int64),
        "attention_mask": t(enc.attention_mask[idx, :width], flow.int64),
        "token_type_ids": t(enc.token_type_ids[idx, :width], flow.int64),
        "labels": t(enc.labels[idx], flow.int64),
        "domains": t(enc.domains[idx], flow.int64),
        "weights": t(enc.weights[idx], flow.float32),
        "row_index": t(idx, flow.int64),  # rows of ``enc``: for per-example caches (teacher outputs)
    }


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  lengths: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """Index batches of one epoch for process ``rank`` of ``world_size``.

    The global batch is ``batch_size * world_size`` consecutive examples of the epoch's order,
    split evenly across processes; the last, smaller global batch is kept (never dropped), and
    every process gets the same number of steps (short ranks reuse their batch's first rows so
    the collective all-reduce never waits on a missing step).

    ``lengths`` (real tokens per example): the global batch is split so that every process gets
    about as many tokens (longest first, each to the least loaded process with room), instead of
    in order. The gradient is the same (each global batch is the same set, each process still
    holds its share of the examples); a step waits for its slowest process, so this cuts the wait.
    """
    order = epoch_order(n, seed, epoch)
    global_bs = batch_size * world_size
    batches = []
    for start in range(0, n, global_bs):
        chunk = order[start:start + global_bs]
        if lengths is not None and world_size > 1:
            part = _balanced_split(chunk, lengths, world_size)[rank]
        else:
            part = np.array_split(chunk, world_size)[rank]
        if len(part) == 0:
            part = chunk[:1]
        batches.append(part)
    return batches


def _balanced_split(chunk: np.ndarray, lengths: np.ndarray, parts: int) -> List[np.ndarray]:
    """``chunk`` in ``parts`` of ``np.array_split``'s sizes with near-equal sums of ``lengths``;
    each part keeps the chunk's order."""
    sizes = [len(p) for p in np.array_split(chunk, parts)]
    load, members = [0] * parts, [[] for _ in range(parts)]
    for pos in np.argsort(-np.asarray(lengths)[chunk], kind="stable"):
        r = min((r for r in range(parts) if len(members[r]) < sizes[r]), key=lambda r: (load[r], r))
        members[r].append(pos)
        load[r] += int(lengths[chunk[pos]])
    return [chunk[np.sort(np.array(m, dtype=np.int64))] for m in members]


def inference_batches(lengths: np.ndarray, batch_size: int) -> List[np.ndarray]:
    """Length-bucketed batches (stable sort by length): similar lengths share a batch, so trimming
    removes most padding. Callers put results back with the returned indices."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
