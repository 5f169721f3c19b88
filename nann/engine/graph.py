"""The exported HNSW graph (docs/DESIGN.md, "Graph"), memory-mapped.

``HnswGraph.load(graph_dir)`` maps the levels and every layer's CSR arrays (their files: ``nann.run_dir.GraphDir``)
with ``np.load(mmap_mode="r")``: opening a graph of millions of items costs a few file opens, not a copy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nann.errors import UserError
from nann.run_dir import GraphDir


class HnswGraph:
    """A multi-layer graph over dense item ids 0..N-1: one CSR (indptr int64 [N+1], indices int32) per layer."""

    def __init__(self, levels: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], entry_point: int,
                 meta: dict | None = None, path: Path | None = None):
        self.levels = levels
        self._layers = list(layers)
        self.num_items = int(levels.shape[0])
        self.max_level = len(self._layers) - 1
        self.entry_point = int(entry_point)
        self.meta = dict(meta or {})
        self.path = path
        self._nodes_cache: dict[int, np.ndarray] = {}
        self._workspace = None  # the search engine's reusable buffers (nann.engine.search)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, levels, layers, entry_point: int) -> "HnswGraph":
        """An in-memory graph (tests, synthetic graphs). ``layers[l] = (indptr, indices)``."""
        levels = np.asarray(levels, dtype=np.int8)
        lay = [(np.asarray(p, dtype=np.int64), np.asarray(i, dtype=np.int32)) for p, i in layers]
        g = cls(levels, lay, entry_point)
        g._check()
        return g

    @classmethod
    def load(cls, graph_dir, mmap: bool = True) -> "HnswGraph":
        files = GraphDir(graph_dir)
        meta = files.read_meta()
        try:
            n, max_level, ep = int(meta["num_items"]), int(meta["max_level"]), int(meta["entry_point"])
        except (ValueError, TypeError) as e:
            raise UserError(f"corrupt graph metadata {files.meta_file}: {e}") from None
        mode = "r" if mmap else None

        def _load(p: Path, dtype, shape0: int | None) -> np.ndarray:
            if not p.is_file():
                raise UserError(f"graph file missing: {p} (rebuild with `nann graph`)")
            try:
                a = np.load(p, mmap_mode=mode, allow_pickle=False)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"corrupt graph file {p}: {e}") from None
            if a.dtype != np.dtype(dtype) or a.ndim != 1 or (shape0 is not None and a.shape[0] != shape0):
                raise UserError(f"corrupt graph file {p}: expected {np.dtype(dtype)} [{shape0 or '?'}], "
                                f"got {a.dtype} {list(a.shape)}")
            return a

        levels = _load(files.levels_file, np.int8, n)
        layers = []
        for lev in range(max_level + 1):
            indptr_file, indices_file = files.layer_files(lev)
            indptr = _load(indptr_file, np.int64, n + 1)
            indices = _load(indices_file, np.int32, None)
            if n and (int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]):
                raise UserError(f"corrupt graph file {indptr_file}: does not match {indices_file.name} "
                                f"({int(indptr[-1])} vs {indices.shape[0]} links)")
            layers.append((indptr, indices))
        if not (0 <= ep < max(n, 1)):
            raise UserError(f"corrupt graph metadata {files.meta_file}: entry_point {ep} out of range")
        return cls(levels, layers, ep, meta=meta, path=files.path)

    def _check(self) -> None:
        n = self.num_items
        for lev, (indptr, indices) in enumerate(self._layers):
            if indptr.shape != (n + 1,) or int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]:
                raise ValueError(f"layer {lev}: bad CSR shapes")
            if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n):
                raise ValueError(f"layer {lev}: neighbour id out of range")
        if n and not (0 <= self.entry_point < n):
            raise ValueError("entry point out of range")

    # ------------------------------------------------------------------ access
    def layer(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(indptr int64 [N+1], indices int32) of one layer."""
        if not 0 <= level <= self.max_level:
            raise IndexError(f"layer {level} not in 0..{self.max_level}")
        return self._layers[level]

    def neighbours(self, node: int, level: int = 0) -> np.ndarray:
        indptr, indices = self.layer(level)
        return np.asarray(indices[int(indptr[node]):int(indptr[node + 1])])

    def nodes_at_level(self, level: int) -> np.ndarray:
        """int32 array (ascending) of the nodes whose top level is >= ``level`` (cached)."""
        level = int(level)
        got = self._nodes_cache.get(level)
        if got is None:
            got = np.nonzero(np.asarray(self.levels) >= level)[0].astype(np.int32)
            self._nodes_cache[level] = got
        return got

    def __repr__(self) -> str:
        return f"HnswGraph(num_items={self.num_items}, max_level={self.max_level}, entry_point={self.entry_point})"
