"""Seeded pair and batch samplers over identity labels.

:func:`sample_pairs` is the one pair sampler used by training, validation,
calibration and evaluation; ``is_same`` is derived from identities with
:func:`siamsearch.core.distance.is_same_pairs`.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Sampler

from ..core.distance import is_same_pairs
from ..core.errors import SiamsearchError

Labels = Union[Sequence[int], np.ndarray]


class _Groups:
    """Samples grouped by identity: ``order`` sorts samples by identity, group ``g``
    occupies ``order[start[g]:start[g] + count[g]]``; ``group_of[i]`` is sample i's group."""

    def __init__(self, identities: Labels):
        ids = np.asarray(identities).reshape(-1)
        _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        self.ids = ids
        self.group_of = inverse.reshape(-1).astype(np.int64)
        self.order = np.argsort(self.group_of, kind="stable").astype(np.int64)
        self.count = counts.astype(np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        self.rank = np.empty(len(ids), dtype=np.int64)  # position of each sample inside its group
        self.rank[self.order] = np.arange(len(ids)) - np.repeat(self.start, self.count)


def sample_pairs(identities: Labels, n_pairs: int, seed: int,
                 positive_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw seeded genuine and impostor pairs of sample indices.

    Genuine pairs: the first sample is drawn uniformly among samples whose
    identity has 2+ samples, the second uniformly among the *other* samples of
    that identity (never the same sample). Impostor pairs: the first sample is
    drawn uniformly among all samples, the second uniformly among samples of
    other identities. Pairs are drawn with replacement and returned shuffled.
    Vectorised: 100k samples and 1M pairs take well under a second.

    Args:
        identities: ``[N]`` identity label of each sample (any ints).
        n_pairs: number of pairs ``P``.
        seed: same seed and labels, same pairs.
        positive_fraction: share of genuine pairs (``round(P * fraction)`` of them).

    Returns:
        ``(idx_a, idx_b, is_same)``: int64 ``[P]``, int64 ``[P]``, bool ``[P]`` with
        ``is_same == (identities[idx_a] == identities[idx_b])``.

    Raises:
        SiamsearchError: when genuine pairs are asked for and no identity has
            2 samples, or impostor pairs are asked for and there is only one identity.
    """
    n_pairs = int(n_pairs)
    if n_pairs < 0:
        raise SiamsearchError(f"n_pairs must be >= 0, got {n_pairs}")
    if not (0.0 <= float(positive_fraction) <= 1.0):
        raise SiamsearchError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    g = _Groups(identities)
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_pairs * float(positive_fraction)))
    n_neg = n_pairs - n_pos

    a_parts, b_parts = [], []
    if n_pos:
        eligible = np.flatnonzero(g.count[g.group_of] >= 2)
        if len(eligible) == 0:
            raise SiamsearchError("no identity has 2 or more images, so no genuine (same-identity) pair "
                                  "can be drawn; add images per identity")
        a = eligible[rng.integers(0, len(eligible), size=n_pos)]
        grp, r = g.group_of[a], g.rank[a]
        k = rng.integers(0, g.count[grp] - 1)  # one of the other count-1 members
        k = k + (k >= r)
        a_parts.append(a)
        b_parts.append(g.order[g.start[grp] + k])
    if n_neg:
        n = len(g.ids)
        if len(g.count) < 2:
            raise SiamsearchError("only one identity present, so no impostor (different-identity) pair "
                                  "can be drawn; add identities")
        a = rng.integers(0, n, size=n_neg)
        grp = g.group_of[a]
        k = rng.integers(0, n - g.count[grp])  # position among samples outside a's group
        k = k + g.count[grp] * (k >= g.start[grp])
        a_parts.append(a)
        b_parts.append(g.order[k])
    if not a_parts:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, bool)
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    perm = rng.permutation(len(a))
    a, b = a[perm], b[perm]
    return a, b, np.asarray(is_same_pairs(g.ids[a], g.ids[b]), dtype=bool)


def _epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)])


class MPerClassBatchSampler(Sampler):
    """Index batches of ``batch_size // m`` distinct identities x ``m`` samples each.

    Identities are visited in a seeded random order, cycling so all are used
    about equally; inside an identity samples are taken without replacement
    until it runs out (then reshuffled), and identities with fewer than ``m``
    samples contribute all of theirs plus random repeats. Only identities with
    at least ``min_samples`` samples take part (default 2: a lone sample gives
    no positive in a batch loss).

    An epoch has ``max(1, N_used // batch_size)`` batches (``N_used`` = samples
    of the identities taking part). Use as ``DataLoader(ds, batch_sampler=...)``
    and call :meth:`set_epoch` before each epoch.

    Args:
        identities: ``[N]`` identity label of each sample.
        m: samples per identity in a batch (>= 2).
        batch_size: samples per batch; a multiple of ``m`` with at least 2 identities.
        seed: base seed; batches depend only on ``(seed, epoch)``.
        min_samples: identities with fewer samples are left out.
        num_batches: batches per epoch, overriding ``N_used // batch_size``.
    """

    def __init__(self, identities: Labels, m: int, batch_size: int, seed: int = 0, min_samples: int = 2,
                 num_batches: Optional[int] = None):
        m, batch_size = int(m), int(batch_size)
        self.num_batches = None if num_batches is None else max(1, int(num_batches))
        if m < 1:
            raise SiamsearchError(f"m (samples per identity) must be >= 1, got {m}")
        if batch_size % m != 0 or batch_size // m < 2:
            raise SiamsearchError(f"batch size {batch_size} must be a multiple of m={m} holding at least 2 "
                                  f"identities (e.g. {2 * m} or {8 * m})")
        g = _Groups(identities)
        used = np.flatnonzero(g.count >= min_samples)
        self.per_batch = batch_size // m
        if len(used) < self.per_batch:
            raise SiamsearchError(
                f"an M-per-class batch of {batch_size} needs {self.per_batch} identities with {min_samples}+ "
                f"samples; only {len(used)} have that many. Lower the batch size or raise m.")
        self.m, self.batch_size, self.seed = m, batch_size, int(seed)
        self._members = [g.order[g.start[k]:g.start[k] + g.count[k]] for k in used]
        self.n_used = int(sum(len(x) for x in self._members))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.num_batches is not None:
            return self.num_batches
        return max(1, self.n_used // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(_epoch_seed(self.seed, self.epoch))
        n_ids = len(self._members)
        pools = [None] * n_ids  # per identity: remaining shuffled samples
        queue: list[int] = []
        for _ in range(len(self)):
            chosen: list[int] = []
            while len(chosen) < self.per_batch:
                if not queue:
                    queue = rng.permutation(n_ids).tolist()
                k = queue.pop()
                if k in chosen:  # only possible right after a refill; put it back for later
                    queue.insert(0, k)
                    continue
                chosen.append(k)
            batch: list[int] = []
            for k in chosen:
                members = self._members[k]
                if len(members) < self.m:
                    extra = rng.choice(members, size=self.m - len(members), replace=True)
                    batch.extend(int(x) for x in rng.permutation(np.concatenate([members, extra])))
                    continue
                pool = pools[k]
                if pool is None or len(pool) < self.m:
                    fresh = rng.permutation(members)
                    pool = fresh if pool is None or len(pool) == 0 else np.concatenate([pool, fresh])
                    # keep the m taken now distinct
                    if len(np.unique(pool[:self.m])) < self.m:
                        pool = fresh
                batch.extend(int(x) for x in pool[:self.m])
                pools[k] = pool[self.m:]
            yield batch

