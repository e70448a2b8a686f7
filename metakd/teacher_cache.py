"""The frozen teacher's stage-1 targets, computed once and reused every epoch.

During distillation the teacher is in eval mode with no grad, so for a given example it gives the
same outputs every epoch. Stage 1 needs, per example, the mapped layers' attention scores
[P, A, l, l] and hidden states [Q, l, H] over its l real tokens (the default loss looks at real
positions only, so padding is not stored), its domain representation [H] and its logits [K].
They are computed once with length-bucketed, trimmed batches and kept in memory when they fit in
``budget_bytes``, else in a memory-mapped file in ``spill_dir`` (when given and there is room),
else not at all (the caller recomputes the teacher each step, as without a cache). Under the
launcher on one machine the processes build one shared memory-mapped cache in ``spill_dir``
together, each computing a share of the batches.

A batch read back is zero beyond each example's length; the default-mode losses ignore those
positions, so the loss equals the uncached one up to float rounding (a trimmed batch's matmuls
are blocked differently from the cache's). ``--compat easynlp`` never uses the cache: its
teacher runs in training mode (dropout) and its losses look at padding.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from metakd.features import Encoded, inference_batches, to_tensors
from metakd.runtime import all_reduce_sum_numpy, barrier, flow, rank, shard, single_node, world_size


@dataclass
class CacheLayout:
    """Where each example's blocks start in the flat float32 stores."""
    lengths: np.ndarray       # [N] real tokens
    att_offset: np.ndarray    # [N+1] into the attention store
    hid_offset: np.ndarray    # [N+1] into the hidden-state store
    att_pairs: int
    heads: int
    hid_pairs: int
    hidden: int

    @property
    def nbytes(self) -> int:
        return int(self.att_offset[-1] + self.hid_offset[-1]) * 4


def plan(lengths: np.ndarray, att_pairs: int, heads: int, hid_pairs: int, hidden: int) -> CacheLayout:
    lengths = np.asarray(lengths, dtype=np.int64)
    att = att_pairs * heads * lengths ** 2
    hid = hid_pairs * lengths * hidden
    zero = np.zeros(1, dtype=np.int64)
    return CacheLayout(lengths, np.concatenate([zero, np.cumsum(att)]), np.concatenate([zero, np.cumsum(hid)]),
                       att_pairs, heads, hid_pairs, hidden)


class Stage1TeacherCache:
    """Teacher targets for every row of ``data``; ``batch(idx, width)`` gives them for a batch."""

    def __init__(self, layout: CacheLayout, att: np.ndarray, hid: np.ndarray, domain: np.ndarray, logits: np.ndarray,
                 where: str, spill: Optional[Path] = None, shared: bool = False):
        self.layout, self.att, self.hid, self.domain, self.logits = layout, att, hid, domain, logits
        self.where = where  # "memory", "disk" or "a file shared by N processes"
        self._spill = spill
        self._shared = shared  # the spill file belongs to all processes; rank 0 removes it

    @classmethod
    def build(cls, compute: Callable[[Dict[str, flow.Tensor]], Tuple[List[flow.Tensor], List[flow.Tensor], flow.Tensor, flow.Tensor]],
              data: Encoded, att_pairs: int, heads: int, hid_pairs: int, hidden: int, num_labels: int,
              device, batch_size: int = 32, budget_bytes: int = 4 << 30, spill_dir: Optional[Path] = None,
              progress: bool = True) -> Optional["Stage1TeacherCache"]:
        """``compute(batch)`` -> (attention scores per pair [B,A,L,L], hidden states per pair [B,L,H],
        domain representation [B,H], logits [B,K]) of a trimmed batch. None when the cache fits
        neither the memory budget nor the spill folder's free space."""
        layout = plan(data.lengths, att_pairs, heads, hid_pairs, hidden)
        size = layout.nbytes
        n_att, n_hid = max(int(layout.att_offset[-1]), 1), max(int(layout.hid_offset[-1]), 1)
        shared = world_size() > 1 and single_node() and spill_dir is not None
        if world_size() > 1 and not shared and spill_dir is not None:
            spill_dir = Path(f"{spill_dir}.{rank()}")  # one private spill per process on a multi-machine run
        spill = None
        if shared:
            # The processes of one machine build one cache together, each computing its share of the
            # batches into a memory-mapped file they all map: the teacher runs once in all, and the
            # page cache holds one copy whatever NPROC is.
            fits = rank() != 0 or _has_room(spill_dir, size)
            if all_reduce_sum_numpy(np.array([0.0 if fits else 1.0], dtype=np.float32), device)[0] > 0:
                return None
            spill = Path(spill_dir)
            if rank() == 0:
                shutil.rmtree(spill, ignore_errors=True)
                spill.mkdir(parents=True)
                np.lib.format.open_memmap(spill / "attention.npy", mode="w+", dtype=np.float32, shape=(n_att,)).flush()
                np.lib.format.open_memmap(spill / "hidden.npy", mode="w+", dtype=np.float32, shape=(n_hid,)).flush()
            barrier()
            att = np.load(spill / "attention.npy", mmap_mode="r+")
            hid = np.load(spill / "hidden.npy", mmap_mode="r+")
            where = f"a file shared by {world_size()} processes"
        elif size <= budget_bytes:
            att = np.empty(int(layout.att_offset[-1]), dtype=np.float32)
            hid = np.empty(int(layout.hid_offset[-1]), dtype=np.float32)
            where = "memory"
        elif spill_dir is not None and _has_room(spill_dir, size):
            spill = Path(spill_dir)
            spill.mkdir(parents=True, exist_ok=True)
            att = np.lib.format.open_memmap(spill / "attention.npy", mode="w+", dtype=np.float32, shape=(n_att,))
            hid = np.lib.format.open_memmap(spill / "hidden.npy", mode="w+", dtype=np.float32, shape=(n_hid,))
            where = "disk"
        else:
            return None
        domain = np.zeros((len(data), hidden), dtype=np.float32)
        logits = np.zeros((len(data), num_labels), dtype=np.float32)
        batches = inference_batches(data.lengths, batch_size)
        if shared:
            batches = shard(batches)
        with flow.no_grad():
            for idx in tqdm(batches, desc="teacher targets",
                            disable=None if progress else True, leave=False):
                b = to_tensors(data, idx, device, trim=True)
                atts, hids, dom, lg = compute(b)
                a_np = np.stack([t.numpy() for t in atts], axis=1)   # [B,P,A,L,L]
                h_np = np.stack([t.numpy() for t in hids], axis=1)   # [B,Q,L,H]
                for r, row in enumerate(idx):
                    n = int(layout.lengths[row])
                    att[layout.att_offset[row]:layout.att_offset[row + 1]] = a_np[r, :, :, :n, :n].reshape(-1)
                    hid[layout.hid_offset[row]:layout.hid_offset[row + 1]] = h_np[r, :, :n, :].reshape(-1)
                domain[idx] = dom.numpy()
                logits[idx] = lg.numpy()
        if spill is not None:
            att.flush()
            hid.flush()
        if shared:
            domain = all_reduce_sum_numpy(domain, device)
            logits = all_reduce_sum_numpy(logits, device)
            barrier()  # every share is in the file before anyone reads it
        return cls(layout, att, hid, domain, logits, where, spill, shared)

    def batch(self, idx: np.ndarray, width: int, device) -> Tuple[List[flow.Tensor], List[flow.Tensor], flow.Tensor, flow.Tensor]:
        """The targets of rows ``idx`` padded (with zeros) to ``width`` tokens, as tensors on ``device``."""
        lay = self.layout
        # Pair-major, so that each pair's [B,...] block is contiguous and reaches OneFlow without a copy on CPU.
        a = np.zeros((lay.att_pairs, len(idx), lay.heads, width, width), dtype=np.float32)
        h = np.zeros((lay.hid_pairs, len(idx), width, lay.hidden), dtype=np.float32)
        for r, row in enumerate(idx):
            n = int(lay.lengths[row])
            a[:, r, :, :n, :n] = self.att[lay.att_offset[row]:lay.att_offset[row + 1]].reshape(lay.att_pairs, lay.heads, n, n)
            h[:, r, :n, :] = self.hid[lay.hid_offset[row]:lay.hid_offset[row + 1]].reshape(lay.hid_pairs, n, lay.hidden)
        cpu = str(device).startswith("cpu")
        t = lambda x: flow.from_numpy(np.ascontiguousarray(x)) if cpu else flow.tensor(x, device=device)
        return ([t(a[p]) for p in range(lay.att_pairs)], [t(h[q]) for q in range(lay.hid_pairs)],
                t(self.domain[idx]), t(self.logits[idx]))

    def close(self) -> None:
        """Drop the arrays and any spill files (a process still mapping a shared file keeps reading
        it: Linux frees an unlinked file only when its last mapping goes)."""
        self.att = self.hid = None
        if self._spill is not None and (rank() == 0 or not self._shared):
            shutil.rmtree(self._spill, ignore_errors=True)


def _has_room(spill_dir: Path, size: int) -> bool:
    """The disk under ``spill_dir`` holds ``size`` bytes with 1 GiB to spare."""
    return shutil.disk_usage(_existing_parent(spill_dir)).free > size + (1 << 30)


def _existing_parent(path: Path) -> Path:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def describe(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
