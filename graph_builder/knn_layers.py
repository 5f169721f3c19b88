"""A kNN-layered hierarchy built with torch, for hosts without hnswlib (the GPU machines; `perf.gpu_check`).

HNSW's shape without its insertion algorithm: every item gets a random level (P(level >= l) = M^-l, hnswlib's level
distribution), and each layer's edges are the exact L2 k nearest neighbours among the nodes of that layer (2M on
layer 0, M above, as hnswlib's maxM0 and maxM), computed in chunks on a torch device. No pruning heuristic, no reverse
links: a walk over it behaves like one over hnswlib's graph but is not the same graph, so figures measured on it say
"kNN-layered graph". Written as a `nann.run_dir.GraphDir` (no hnswlib index: `nann items add` cannot extend it), read
by `nann.engine.graph.HnswGraph.load` like any other.
"""
from __future__ import annotations

import math

import numpy as np

from graph_builder import GRAPH_M
from nann.run_dir import GraphDir

BUILDER = "knn-layers"  # the meta's "builder": what made the graph
MAX_LEVEL = 15


def random_levels(n: int, m: int, seed: int) -> np.ndarray:
    """int8 [n]: each item's top level, floor(-ln U / ln M) as hnswlib draws it (capped at MAX_LEVEL)."""
    u = np.random.default_rng(seed).random(n)
    return np.minimum(np.floor(-np.log1p(-u) / math.log(m)), MAX_LEVEL).astype(np.int8)


def knn(points, k: int, row_chunk: int = 2048, col_chunk: int = 1 << 17):
    """int64 [n, k] (torch, on the points' device): each row's k nearest other rows by L2, nearest first.

    points: float32 [n, D] torch tensor, n > k. Distances are computed tile by tile (row_chunk x col_chunk), each
    tile's k best merged into a running best, so memory stays at one tile whatever n."""
    import torch

    n = points.shape[0]
    sq = (points * points).sum(1)
    out = torch.empty((n, k), dtype=torch.int64, device=points.device)
    for r0 in range(0, n, row_chunk):
        rows = points[r0:r0 + row_chunk]
        r = rows.shape[0]
        best_d = torch.full((r, k), float("inf"), device=points.device)
        best_i = torch.zeros((r, k), dtype=torch.int64, device=points.device)
        own = torch.arange(r0, r0 + r, device=points.device)
        for c0 in range(0, n, col_chunk):
            cols = points[c0:c0 + col_chunk]
            d = sq[r0:r0 + r, None] - 2.0 * rows @ cols.T + sq[None, c0:c0 + cols.shape[0]]
            inside = (own >= c0) & (own < c0 + cols.shape[0])  # a row's own column lies in this tile: not a neighbour
            d[inside.nonzero().squeeze(1), (own[inside] - c0)] = float("inf")
            kk = min(k, d.shape[1])
            tile_d, tile_i = torch.topk(d, kk, dim=1, largest=False)
            best_d, pick = torch.topk(torch.cat([best_d, tile_d], 1), k, dim=1, largest=False)
            best_i = torch.gather(torch.cat([best_i, tile_i + c0], 1), 1, pick)
        out[r0:r0 + r] = best_i
    return out


def build_knn_graph(embeddings: np.ndarray, out_dir, m: int = GRAPH_M, device: str = "cpu", seed: int = 100,
                    row_chunk: int = 2048, col_chunk: int = 1 << 17) -> dict:
    """Build the kNN-layered graph over ``embeddings`` [N, D] (dense ids = row numbers) on torch ``device`` and write
    it to ``out_dir`` (a GraphDir); returns its meta."""
    import torch

    emb = np.array(embeddings, dtype=np.float32)  # a copy: a run's table is a read-only memory map
    n = emb.shape[0]
    levels = random_levels(n, m, seed)
    max_level = int(levels.max()) if n else 0
    while max_level > 0 and (levels >= max_level).sum() < 2:  # a layer needs two nodes to have an edge
        levels[levels == max_level] = max_level - 1
        max_level -= 1
    out = GraphDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    points = torch.from_numpy(emb).to(device)
    for level in range(max_level + 1):
        members = np.flatnonzero(levels >= level)
        k = min(2 * m if level == 0 else m, len(members) - 1)
        neighbours = (knn(points[torch.from_numpy(members).to(device)], k, row_chunk, col_chunk).cpu().numpy()
                      if k > 0 else np.zeros((len(members), 0), dtype=np.int64))
        counts = np.zeros(n, dtype=np.int64)
        counts[members] = k
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indptr_file, indices_file = out.layer_files(level)
        np.save(indptr_file, indptr)
        np.save(indices_file, members[neighbours].astype(np.int32).reshape(-1))  # members ascending: rows in id order
    np.save(out.levels_file, levels)
    entry_point = int(np.flatnonzero(levels == max_level)[0]) if n else 0
    return out.write_meta({"num_items": n, "max_level": max_level, "entry_point": entry_point, "m": m,
                           "metric": "l2", "builder": BUILDER})
