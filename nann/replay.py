"""Search variants replayed against cached scores: exact items-scored counts, a whole sweep in seconds.

``ScoreCache.build`` scores every item once for each user of a split with the run's serving scorer and stores the
matrix float32 [U, N] as ``.npy`` (memory-mapped afterwards); the brute-force top-M comes from it in the engine's
own order (score descending, ties by the smaller id). ``ScoreCache.replay`` runs the real engine (``beam_search`` /
``hnsw_search``) with ``score_fn`` = a lookup in that matrix, so every variant sees identical scores, its count of
items scored is exact, and graphs or parameters can be compared paired per user. ``ScoreCache.blocking`` gives the
same cache with items blocked: the beam walks with that blocked set, the brute-force top-M is the eligible items'.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nann.engine import kernels as K
from nann.engine.grid import CandidateGrid
from nann.engine.search import Filters, SearchParams, beam_search, blocked_bitmap, hnsw_search

SCORE_CHUNK = 16_384
UNPADDED = CandidateGrid.unpadded(1 << 30)  # replays need no padding: one lookup per round


@dataclass
class UserQuality:
    """Per-user outcome of one search variant (arrays over the cache's users)."""
    coverage: np.ndarray      # |found ∩ exact top-M| / |exact top-M|
    hit: np.ndarray           # target in the found top-M
    hit_all: np.ndarray       # target in the exact top-M
    scored: np.ndarray        # items scored
    rounds: np.ndarray        # scoring rounds (scorer calls a served request takes part in)

    def summary(self, num_items: int) -> dict:
        recall_all = float(self.hit_all.mean())
        recall = float(self.hit.mean())
        return {
            "coverage": float(self.coverage.mean()),
            "coverage_p5": float(np.percentile(self.coverage, 5)),
            "coverage_min": float(self.coverage.min()),
            "recall_all": recall_all, "recall_retrieval": recall,
            "recall_delta": (recall_all - recall) / recall_all if recall_all > 0 else 0.0,
            "items_scored": float(self.scored.mean()),
            "rounds": float(self.rounds.mean()),
            "scored_fraction": float(self.scored.mean() / num_items),
            "users": int(self.coverage.shape[0]),
        }


def top_m_keys(scores: np.ndarray, m: int) -> np.ndarray:
    """Dense ids of the top-m of one score row, best first, ties by the smaller id (the engine's key order)."""
    keys = K.make_keys(np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32),
                       np.arange(scores.shape[0], dtype=np.int32))
    m = min(m, keys.shape[0])
    best = np.sort(np.partition(keys, m - 1)[:m])
    return (best & np.uint64(0xFFFFFFFF)).astype(np.int64)


class ScoreCache:
    """The score matrix of one run for the users of one split, with their histories and targets."""

    def __init__(self, scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, top_m: int = 200,
                 blocked: np.ndarray | None = None):
        """blocked: dense ids nobody may get (the served blocked set)."""
        self.scores = scores
        self.histories = histories
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_users, self.num_items = scores.shape
        self.top_m = top_m
        self.blocked = None if blocked is None else blocked_bitmap(blocked, self.num_items)
        eligible = np.ones(self.num_items, dtype=bool)
        eligible[np.asarray([] if blocked is None else blocked, dtype=np.int64)] = False
        self.exact = np.stack([top_m_keys(np.where(eligible, scores[u], -np.inf), top_m)
                               for u in range(self.num_users)])

    def blocking(self, blocked: np.ndarray) -> "ScoreCache":
        """This cache (the same score matrix) with the dense ids `blocked` blocked."""
        return ScoreCache(self.scores, self.histories, self.targets, self.top_m, blocked)

    @classmethod
    def build(cls, run_dir, split, n_users: int, path: Path | None, top_m: int = 200,
              progress: bool = True) -> "ScoreCache":
        """Score all items for the first ``n_users`` of ``split`` (or load ``path`` if it holds them); path None: in
        memory, kept nowhere."""
        from nann.runtime import ModelRuntime

        n = min(n_users, len(split))
        histories = [np.asarray(split.history(i), dtype=np.int64) for i in range(n)]
        targets = np.asarray(split.targets[:n])
        path = None if path is None else Path(path)
        if path is not None and path.is_file():
            scores = np.load(path, mmap_mode="r", allow_pickle=False)
            if scores.shape[0] == n:
                return cls(scores, histories, targets, top_m)
        runtime = ModelRuntime.load(run_dir)
        shape = (n, runtime.num_items)
        scores = (np.empty(shape, dtype=np.float32) if path is None else
                  np.lib.format.open_memmap(path.with_suffix(".partial.npy"), mode="w+", dtype=np.float32, shape=shape))
        all_ids = np.arange(runtime.num_items, dtype=np.int64)
        desc = "brute force" if path is None else f"score cache {path.name}"
        for u in tqdm(range(n), desc=desc, unit="user", file=sys.stderr, disable=not progress):
            state = runtime.encode([histories[u]])
            for s in range(0, runtime.num_items, SCORE_CHUNK):
                ids = all_ids[s:s + SCORE_CHUNK]
                scores[u, s:s + ids.shape[0]] = runtime.score(state, np.zeros(ids.shape[0], np.int64), ids)
        if path is None:
            return cls(scores, histories, targets, top_m)
        scores.flush()
        del scores
        path.with_suffix(".partial.npy").replace(path)
        return cls(np.load(path, mmap_mode="r", allow_pickle=False), histories, targets, top_m)

    def recall_all(self) -> float:
        """recall-all@M: the share of users whose target is in their exact top-M."""
        return float((self.exact == self.targets[:, None]).any(axis=1).mean())

    def replay(self, graph, params: SearchParams | None = None, method: str = "beam", ef0: int = 400,
               users: np.ndarray | None = None, batch: int = 64) -> UserQuality:
        """Run the engine for ``users`` (default: all) against the cached scores; their per-user quality."""
        users = np.arange(self.num_users) if users is None else np.sort(np.asarray(users))
        return self.quality(*self.search(graph, params, method, ef0, users, batch), users)

    def search(self, graph, params: SearchParams | None = None, method: str = "beam", ef0: int = 400,
               users: np.ndarray | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The engine's answers for ``users`` (sorted; default: all) against the cached scores: (top-M dense ids
        [U, M], -1 padding; items scored [U]; rounds [U])."""
        users = np.arange(self.num_users) if users is None else users
        found = np.full((users.shape[0], self.top_m), -1, dtype=np.int64)
        scored = np.zeros(users.shape[0], dtype=np.int64)
        rounds = np.zeros(users.shape[0], dtype=np.int64)
        for s in range(0, users.shape[0], batch):
            idx = users[s:s + batch]
            block = np.asarray(self.scores[idx])  # one read per batch; rows in request order

            def score_fn(owner, ids, block=block):
                return block[owner, ids]

            if method == "beam":
                res = beam_search(graph, len(idx), score_fn, params, UNPADDED,
                                  histories=[self.histories[i] for i in idx],
                                  filters=None if self.blocked is None else Filters.build(len(idx), self.blocked))
            elif self.blocked is not None:
                raise ValueError("hnsw_search has no eligibility filters")
            else:
                res = hnsw_search(graph, len(idx), score_fn, ef0, self.top_m, UNPADDED)
            found[s:s + len(idx), :res.ids.shape[1]] = res.ids[:, :self.top_m]
            scored[s:s + len(idx)] = res.n_scored
            rounds[s:s + len(idx)] = res.rounds
        return found, scored, rounds

    def quality(self, found: np.ndarray, scored: np.ndarray, rounds: np.ndarray, users: np.ndarray) -> UserQuality:
        exact, targets = self.exact[users], self.targets[users, None]
        coverage = np.array([np.intersect1d(f[f >= 0], e).size / e.shape[0] for f, e in zip(found, exact)])
        hit = (found == targets).any(axis=1)
        hit_all = (exact == targets).any(axis=1)
        return UserQuality(coverage, hit, hit_all, scored, rounds)
