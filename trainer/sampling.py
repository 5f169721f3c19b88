"""Training samples, batches and unigram noise for NCE.

A sample is a position ``g`` in the concatenated training sequences that is not the first of its user: target
``items[g]``, history the up-to-``max_seq`` behaviours of the same user before it (DESIGN.md, "Prepared data").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from nann.errors import UserError


@dataclass
class EvalSplit:
    hist_items: np.ndarray     # int32, concatenated
    hist_offsets: np.ndarray   # int64 [n+1]
    targets: np.ndarray        # int32 [n]

    def __len__(self) -> int:
        return len(self.targets)

    def history(self, i: int) -> np.ndarray:
        return self.hist_items[self.hist_offsets[i]:self.hist_offsets[i + 1]]


@dataclass
class TrainData:
    data_dir: str
    num_items: int
    num_categories: int
    item_category: np.ndarray  # int64 [N]
    item_counts: np.ndarray    # int64 [N]
    train_items: np.ndarray    # int32
    train_offsets: np.ndarray  # int64 [U+1]
    val: EvalSplit
    test: EvalSplit
    max_seq: int
    meta: dict


def _eval_split_from_shared(split) -> EvalSplit:
    if hasattr(split, "history_items") and hasattr(split, "history_offsets"):
        return EvalSplit(np.asarray(split.history_items, dtype=np.int32),
                         np.asarray(split.history_offsets, dtype=np.int64), np.asarray(split.targets, dtype=np.int32))
    n = len(split)
    hs = [np.asarray(split.history(i), dtype=np.int32) for i in range(n)]
    off = np.zeros(n + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(h) for h in hs])
    items = np.concatenate(hs) if hs else np.zeros(0, np.int32)
    return EvalSplit(items, off, np.asarray(split.targets, dtype=np.int32))


def load_data(data_dir: str) -> TrainData:
    """Loads a prepared data directory (nann.data.prepared.PreparedData when available, else the raw arrays)."""
    if not os.path.isdir(data_dir):
        raise UserError(f"data directory {data_dir} not found (make it with `nann data prepare --out {data_dir}`)")
    try:
        from nann.data.prepared import PreparedData  # type: ignore
    except ImportError:
        PreparedData = None
    if PreparedData is not None:
        pd = PreparedData.load(data_dir)  # raises UserError on a bad directory
        voc = pd.vocab
        item_category = np.asarray(voc.item_category, dtype=np.int64)
        meta = dict(pd.meta)
        return TrainData(
            data_dir=data_dir, num_items=int(voc.num_items),
            num_categories=max(int(getattr(voc, "num_categories", 0) or 0),
                               int(item_category.max()) + 1 if len(item_category) else 1),
            item_category=item_category, item_counts=np.asarray(pd.item_counts, dtype=np.int64),
            train_items=np.asarray(pd.train.items, dtype=np.int32),
            train_offsets=np.asarray(pd.train.offsets, dtype=np.int64),
            val=_eval_split_from_shared(pd.val), test=_eval_split_from_shared(pd.test),
            max_seq=int(meta.get("max_seq", 50)), meta=meta)
    return _load_raw(data_dir)


def _load_raw(data_dir: str) -> TrainData:
    def p(name):
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):
            raise UserError(f"{path} missing: {data_dir} is not a prepared data directory (nann data prepare)")
        return path

    with open(p("meta.json")) as f:
        meta = json.load(f)
    items = np.load(p("items.npy"), allow_pickle=False)
    item_category = np.load(p("item_category.npy"), allow_pickle=False).astype(np.int64)
    counts = np.load(p("item_counts.npy"), allow_pickle=False).astype(np.int64)
    with np.load(p("train.npz"), allow_pickle=False) as z:
        tr_items, tr_off = z["items"].astype(np.int32), z["offsets"].astype(np.int64)
    splits = {}
    for name in ("val", "test"):
        with np.load(p(f"{name}.npz"), allow_pickle=False) as z:
            splits[name] = EvalSplit(z["history_items"].astype(np.int32), z["history_offsets"].astype(np.int64),
                                     z["targets"].astype(np.int32))
    return TrainData(data_dir=data_dir, num_items=len(items),
                     num_categories=int(item_category.max()) + 1 if len(item_category) else 1,
                     item_category=item_category, item_counts=counts, train_items=tr_items, train_offsets=tr_off,
                     val=splits["val"], test=splits["test"], max_seq=int(meta.get("max_seq", 50)), meta=meta)


def sample_positions(offsets: np.ndarray) -> np.ndarray:
    """All positions g with g - offsets[user] >= 1 (int64)."""
    n = int(offsets[-1])
    keep = np.ones(n, dtype=bool)
    starts = offsets[:-1][offsets[:-1] < offsets[1:]]
    keep[starts] = False
    return np.nonzero(keep)[0].astype(np.int64)


def epoch_order(positions: np.ndarray, seed: int, epoch: int, max_samples: int, rank: int, world: int) -> np.ndarray:
    """This rank's shuffled share of the epoch's samples (same length on every rank)."""
    rng = np.random.default_rng([seed, epoch, 7919])
    order = positions[rng.permutation(len(positions))]
    if max_samples and max_samples > 0:
        order = order[:max_samples]
    per = len(order) // world
    return order[rank * per:(rank + 1) * per] if world > 1 else order


def make_batch(items: np.ndarray, offsets: np.ndarray, g: np.ndarray, max_seq: int):
    """Positions g [B] -> (hist_ids int64 [B,L], mask float32 [B,L], target int64 [B]); L = longest history."""
    user = np.searchsorted(offsets, g, side="right") - 1
    start = np.maximum(offsets[user], g - max_seq)
    lens = g - start
    L = int(max(lens.max(), 1))
    ar = np.arange(L)
    mask = ar[None, :] < lens[:, None]
    idx = np.where(mask, start[:, None] + ar[None, :], 0)
    hist = np.where(mask, items[idx], 0).astype(np.int64)
    return hist, mask.astype(np.float32), items[g].astype(np.int64)


class NoiseSampler:
    """Noise q(v): the unigram distribution of the training counts (clipped at 1 so every item has q > 0), mixed with
    the uniform one by `uniform_share` (each noise item is uniform with that probability; `log_q` is the mixture's)."""

    def __init__(self, counts: np.ndarray, uniform_share: float = 0.0):
        if not 0.0 <= uniform_share <= 1.0:
            raise UserError(f"--uniform-noise must be between 0 and 1, got {uniform_share}")
        c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
        self.unigram = c / c.sum()
        self.uniform_share = float(uniform_share)
        self.q = (1.0 - self.uniform_share) * self.unigram + self.uniform_share / len(c)
        self.cdf = np.cumsum(self.unigram)
        self.cdf[-1] = 1.0
        self.log_q = np.log(self.q).astype(np.float32)

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        ids = np.minimum(np.searchsorted(self.cdf, rng.random(shape), side="right"), len(self.q) - 1)
        if self.uniform_share > 0:
            uniform = rng.random(shape) < self.uniform_share
            ids = np.where(uniform, rng.integers(0, len(self.q), size=shape), ids)
        return ids.astype(np.int64)

    def describe(self) -> str:
        plain = "unigram (counts clipped at 1)"
        return f"{plain}, {self.uniform_share:g} of it uniform" if self.uniform_share else plain
