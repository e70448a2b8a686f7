"""Stratified sampling: the dev/test splits and DATA_PORTION of the mnli and tsv tasks."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from metakd.infra.errors import UserError


def stratum_counts(n: int, fraction: float, at_least_one: bool = False) -> int:
    """Rows taken from a stratum of ``n``: ``floor(fraction * n + 0.5)`` (round half up), and at
    least 1 of a non-empty stratum when ``at_least_one``."""
    k = int(math.floor(fraction * n + 0.5))
    if at_least_one and n > 0:
        k = max(k, 1)
    return min(k, n)


def stratified_take(strata: Sequence, fraction: float, seed: int, at_least_one: bool = False) -> np.ndarray:
    """A boolean mask over the rows: in each stratum, ``stratum_counts(n, fraction)`` rows.

    The rows taken are the stratum's first ones in the order of one permutation of all rows,
    ``np.random.default_rng(seed).permutation(N)``. So the result depends only on the rows (in
    order), the strata, the fraction and the seed; and a smaller fraction takes a subset of what
    a larger one takes (the same seed).

    Args:
      strata: [N] hashable keys (e.g. ``(domain, label)`` tuples).
    """
    keys = list(strata)
    n = len(keys)
    order = np.random.default_rng(seed).permutation(n)
    sizes: Dict[object, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    quota = {k: stratum_counts(c, fraction, at_least_one) for k, c in sizes.items()}
    taken = np.zeros(n, dtype=bool)
    for i in order:
        k = keys[i]
        if quota[k] > 0:
            taken[i] = True
            quota[k] -= 1
    return taken


def stratified_partition(strata: Sequence, fractions: Sequence[float], seed: int) -> np.ndarray:
    """[N] part ids: in each stratum of ``n`` rows, part ``j`` (``j < len(fractions)``) gets
    ``stratum_counts(n, fractions[j])`` rows (fewer if the stratum runs out; earlier parts first)
    and part ``len(fractions)`` the rest. Rows are dealt in the order of
    ``np.random.default_rng(seed).permutation(N)``: each stratum's first rows in that order go to
    part 0, the next to part 1, and so on."""
    keys = list(strata)
    sizes: Dict[object, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    quotas: Dict[object, List[int]] = {}
    for k, n in sizes.items():
        left, q = n, []
        for f in fractions:
            q.append(min(stratum_counts(n, f), left))
            left -= q[-1]
        quotas[k] = q
    part = np.full(len(keys), len(fractions), dtype=np.int64)
    for i in np.random.default_rng(seed).permutation(len(keys)):
        q = quotas[keys[i]]
        j = next((j for j, left in enumerate(q) if left > 0), None)
        if j is not None:
            part[i] = j
            q[j] -= 1
    return part


def strata_of(df: pd.DataFrame) -> List[Tuple[str, str]]:
    return list(zip(df["domain"].tolist(), df["label"].tolist()))


def take_portion(df: pd.DataFrame, portion: float, seed: int) -> pd.DataFrame:
    """A stratified (domain x label) ``portion`` of ``df``'s rows, at least one row of every
    stratum, in ``df``'s order (``portion`` 1: ``df`` itself)."""
    if portion >= 1.0:
        return df
    mask = stratified_take(strata_of(df), portion, seed, at_least_one=True)
    return df[mask].reset_index(drop=True)


def check_portion(portion: float) -> None:
    if not (0.0 < portion <= 1.0):
        raise UserError(f"--data-portion must be in (0, 1], got {portion}")
