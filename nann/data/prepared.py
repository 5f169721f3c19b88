"""Loaders of a prepared data directory (written by `nann data prepare`; format in docs/DESIGN.md)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from nann.errors import UserError

FORMAT_VERSION = 1
DATA_FILES = ("items.npy", "categories.npy", "item_category.npy", "item_counts.npy", "train.npz", "val.npz",
              "test.npz", "stats.json", "meta.json")


def _require(data_dir: str, names) -> None:
    if not os.path.isdir(data_dir):
        raise UserError(f"data directory not found: {data_dir} (create it with `nann data prepare --out {data_dir}`)")
    missing = [n for n in names if not os.path.exists(os.path.join(data_dir, n))]
    if missing:
        raise UserError(f"{data_dir} is not a prepared data directory: missing {', '.join(missing)} "
                        f"(re-run `nann data prepare --out {data_dir}`)")


def _load_npz(path: str, keys) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise UserError(f"{path} lacks arrays {', '.join(missing)}; re-run `nann data prepare`")
            return {k: z[k] for k in keys}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; re-run `nann data prepare`") from None


def _load_npy(path: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; re-run `nann data prepare`") from None


def _sorted_lookup(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(keys ascending, the permutation that sorts them or None when they already are) for ``_dense_of``."""
    if bool((keys[1:] > keys[:-1]).all()):
        return keys, None
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _dense_of(ascending: np.ndarray, order: np.ndarray | None, raw) -> np.ndarray:
    """Positions (int64) of raw ids in the keys that ``_sorted_lookup`` gave (ascending, order); -1 if absent."""
    raw = np.asarray(raw, dtype=np.int64)
    if ascending.shape[0] == 0:
        return np.full(raw.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ascending, raw), ascending.shape[0] - 1)
    found = ascending[pos] == raw
    return np.where(found, pos if order is None else order[pos], -1).astype(np.int64)


class Vocabulary:
    """Raw item id <-> dense id and each item's dense category.

    Dense ids are 0..N-1 in ascending raw-id order as prepared; items added to a run later (``nann items add``)
    follow in the order they were added, so a run's items.npy may be unsorted: lookups then go through a sorted
    copy and its permutation, made here (a sorted items.npy is used as it is)."""

    def __init__(self, items: np.ndarray, item_category: np.ndarray, categories: np.ndarray | None = None):
        self.items = np.asarray(items, dtype=np.int64)
        self.item_category = np.asarray(item_category, dtype=np.int32)
        self.categories = None if categories is None else np.asarray(categories, dtype=np.int64)
        if self.items.shape != self.item_category.shape:
            raise UserError("items.npy and item_category.npy differ in length; re-run `nann data prepare`")
        self._items_lookup = _sorted_lookup(self.items)

    @classmethod
    def load(cls, directory: str) -> "Vocabulary":
        """Load from a directory holding items.npy and item_category.npy (categories.npy optional)."""
        _require(directory, ("items.npy", "item_category.npy"))
        cat_path = os.path.join(directory, "categories.npy")
        cats = _load_npy(cat_path) if os.path.exists(cat_path) else None
        return cls(_load_npy(os.path.join(directory, "items.npy")),
                   _load_npy(os.path.join(directory, "item_category.npy")), cats)

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def num_categories(self) -> int:
        if self.categories is not None:
            return int(self.categories.shape[0])
        return int(self.item_category.max()) + 1 if self.num_items else 0

    def raw_to_dense(self, raw) -> np.ndarray:
        """Dense ids (int64) of raw item ids; -1 where the raw id is unknown."""
        return _dense_of(*self._items_lookup, raw)

    def category_to_dense(self, raw) -> np.ndarray:
        """Dense categories (int64) of raw category ids; -1 where unknown (categories.npy is ascending)."""
        if self.categories is None:
            raise UserError("the vocabulary has no categories.npy; re-run `nann data prepare`")
        return _dense_of(self.categories, None, raw)

    def dense_to_raw(self, dense) -> np.ndarray:
        """Raw item ids (int64) of dense ids (IndexError if out of range)."""
        return self.items[np.asarray(dense, dtype=np.int64)]

    def category_of(self, dense) -> np.ndarray:
        return self.item_category[np.asarray(dense, dtype=np.int64)]


class SplitSet:
    """Validation or test users: one (history, target) pair per user."""

    def __init__(self, history_items: np.ndarray, history_offsets: np.ndarray, targets: np.ndarray,
                 user_ids: np.ndarray):
        self.history_items = history_items
        self.history_offsets = history_offsets
        self.targets = targets
        self.user_ids = user_ids

    @classmethod
    def load(cls, path: str) -> "SplitSet":
        return cls(**_load_npz(path, ("history_items", "history_offsets", "targets", "user_ids")))

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def history(self, i: int) -> np.ndarray:
        """Dense item ids (int32) of user i's history, oldest first."""
        return self.history_items[self.history_offsets[i]:self.history_offsets[i + 1]]

    @property
    def histories(self) -> "_Histories":
        """List-like view: histories[i] == history(i); len() and iteration work."""
        return _Histories(self)

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.history_offsets)

    def subset(self, n: int) -> "SplitSet":
        """The first n users (all if n <= 0 or n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        off = self.history_offsets[:n + 1]
        return SplitSet(self.history_items[:off[-1]], off, self.targets[:n], self.user_ids[:n])

    def padded(self, max_len: int, idx=None) -> tuple[np.ndarray, np.ndarray]:
        """(items int64 [n, max_len], mask float32 [n, max_len]) of the last max_len behaviours, left-aligned."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        items = np.zeros((idx.shape[0], max_len), dtype=np.int64)
        mask = np.zeros((idx.shape[0], max_len), dtype=np.float32)
        for r, i in enumerate(idx.tolist()):
            h = self.history(i)[-max_len:]
            items[r, :h.shape[0]] = h
            mask[r, :h.shape[0]] = 1.0
        return items, mask


class _Histories:
    def __init__(self, s: SplitSet):
        self._s = s

    def __len__(self) -> int:
        return len(self._s)

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self._s)
        if not 0 <= i < len(self._s):
            raise IndexError(i)
        return self._s.history(i)

    def __iter__(self):
        for i in range(len(self._s)):
            yield self._s.history(i)


class TrainSequences:
    """Training users' time-ordered sequences (concatenated). Sample k <-> (sequence, position >= 1)."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray, user_ids: np.ndarray):
        self.items = items
        self.offsets = offsets
        self.user_ids = user_ids

    @classmethod
    def load(cls, path: str) -> "TrainSequences":
        return cls(**_load_npz(path, ("items", "offsets", "user_ids")))

    @property
    def num_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def __len__(self) -> int:
        return self.num_users

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    @property
    def num_samples(self) -> int:
        """Positions i >= 1 over all sequences: sum(len - 1)."""
        return int(self.items.shape[0] - self.num_users)

    def sample_positions(self) -> np.ndarray:
        """Global indices into `items` of every sample's target (position >= 1 in its sequence), int64."""
        first = np.zeros(self.items.shape[0], dtype=bool)
        first[self.offsets[:-1][np.diff(self.offsets) > 0]] = True
        return np.flatnonzero(~first)

    def seq_starts_of(self, positions: np.ndarray) -> np.ndarray:
        """Start offset of the sequence holding each global position."""
        u = np.searchsorted(self.offsets, positions, side="right") - 1
        return self.offsets[u]


@dataclass
class PreparedData:
    vocab: Vocabulary
    train: TrainSequences
    val: SplitSet
    test: SplitSet
    meta: dict
    stats: dict
    item_counts: np.ndarray
    data_dir: str = ""

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    @property
    def num_categories(self) -> int:
        return self.vocab.num_categories

    @property
    def max_seq(self) -> int:
        return int(self.meta["max_seq"])

    @classmethod
    def load(cls, data_dir: str) -> "PreparedData":
        data_dir = os.fspath(data_dir)
        _require(data_dir, DATA_FILES)
        try:
            with open(os.path.join(data_dir, "meta.json")) as f:
                meta = json.load(f)
            with open(os.path.join(data_dir, "stats.json")) as f:
                stats = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {data_dir}/meta.json or stats.json: {e}; re-run `nann data prepare`") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else None
            raise UserError(f"{data_dir} has data format_version {got}, this nann reads {FORMAT_VERSION}; "
                            f"re-run `nann data prepare --out {data_dir}`")
        return cls(vocab=Vocabulary.load(data_dir), train=TrainSequences.load(os.path.join(data_dir, "train.npz")),
                   val=SplitSet.load(os.path.join(data_dir, "val.npz")),
                   test=SplitSet.load(os.path.join(data_dir, "test.npz")), meta=meta, stats=stats,
                   item_counts=_load_npy(os.path.join(data_dir, "item_counts.npy")), data_dir=data_dir)
