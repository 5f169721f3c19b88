"""The candidate grid: scorer batches are padded to a few fixed sizes (the reference serving code's
auto-padding grid 1, 200, 400, ..., 14800) so that an accelerator sees a small set of shapes. A round larger
than the largest size is split into several scorer calls; it is never refused.

Only TensorRT needs the fixed shapes (one optimization profile per size). ONNX Runtime and torch on CPU run any
shape, where padding only adds rows to score: a round of ~60 candidates per request went to the scorer as 200, and
unpadded, the served path answered 1.17x the requests per second at concurrency 1 and 1.16x at 16 (perf/RESULTS.md,
"Serving parameters: grid (retrieve)").
Which grid a scorer runtime gets is the runtime's (``nann.scorers``: ``ScorerRuntime.grid``)."""
from __future__ import annotations

import bisect

import numpy as np

DEFAULT_STEP = 200
DEFAULT_MAX = 14800


def default_sizes(step: int = DEFAULT_STEP, max_size: int = DEFAULT_MAX) -> list[int]:
    return [1] + list(range(step, max_size + 1, step))


class CandidateGrid:
    """Sorted candidate batch sizes. ``max_size`` (default: the largest size) caps one scorer call."""

    def __init__(self, sizes=None, max_size: int | None = None):
        sizes = default_sizes() if sizes is None else sizes
        s = sorted({int(x) for x in sizes})
        if not s or s[0] < 1:
            raise ValueError("the candidate grid needs positive sizes")
        if max_size is not None:
            max_size = int(max_size)
            if max_size < 1:
                raise ValueError("max_size must be >= 1")
            s = [x for x in s if x <= max_size]
            if not s or s[-1] != max_size:
                s.append(max_size)
        self.sizes = tuple(s)
        self.max_size = self.sizes[-1]

    @classmethod
    def unpadded(cls, max_size: int = DEFAULT_MAX) -> "CandidateGrid":
        """A grid with every size 1..max_size: no padding at all (``sizes`` is None)."""
        g = cls([1])
        g.sizes = None  # type: ignore[assignment]
        g.max_size = int(max_size)
        return g

    def to_json(self) -> dict:
        return {"sizes": None if self.sizes is None else list(self.sizes), "max_size": self.max_size}

    @classmethod
    def from_json(cls, d: dict) -> "CandidateGrid":
        return cls.unpadded(d["max_size"]) if d["sizes"] is None else cls(d["sizes"], d["max_size"])

    def pad_size(self, n: int) -> int:
        """Smallest grid size >= n (n <= max_size)."""
        if n > self.max_size:
            raise ValueError(f"{n} candidates exceed the grid maximum {self.max_size}: split first")
        if self.sizes is None:
            return max(1, int(n))
        return self.sizes[bisect.bisect_left(self.sizes, n)]

    def splits(self, n: int) -> list[tuple[int, int]]:
        """[start, end) chunks of at most max_size covering 0..n."""
        return [(s, min(n, s + self.max_size)) for s in range(0, n, self.max_size)]

    def pad(self, owner: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Pad one chunk (len <= max_size) to its grid size; padding rows repeat the last row's owner (so a
        non-decreasing owner stays non-decreasing: the scorer runs each owner's candidates as one block) with id 0."""
        n = int(ids.shape[0])
        size = self.pad_size(n)
        if size == n:
            return (np.ascontiguousarray(owner, dtype=np.int32), np.ascontiguousarray(ids, dtype=np.int32), n)
        po = np.full(size, owner[n - 1] if n else 0, dtype=np.int32)
        pi = np.zeros(size, dtype=np.int32)
        po[:n] = owner
        pi[:n] = ids
        return po, pi, n

    def __repr__(self) -> str:
        if self.sizes is None:
            return f"CandidateGrid(unpadded, max_size={self.max_size})"
        return f"CandidateGrid({len(self.sizes)} sizes, {self.sizes[0]}..{self.max_size})"
