"""Deep Retrieval M-step: streaming top-S path scores per item and greedy coordinate-descent path assignment.

Score of path c for item v: s[v, c] = Σ over training pairs (x, v) of p(c | x) (from a beam search per pair; paths
outside the user's beam count 0), kept as a streaming top-S list per item (older entries decayed by ``decay`` each
time a new pair of the item arrives). Assignment maximises, one coordinate π_j(v) at a time,
    N_v · (log(sum_v + s[v, c]) − log sum_v) − α · (f(|c| + 1) − f(|c|)),   f(n) = n⁴ / 4,
where sum_v is the score of v's other assigned paths and |c| the number of (item, slot) pairs on path c.
Candidates of v: its top-S paths plus its current J paths (score 0 unless in the top-S), so every item always
has ≥ J distinct candidates and exactly J distinct paths are assigned.
"""
from __future__ import annotations

import numba
import numpy as np

_EPS = 1e-6


@numba.njit(cache=True)
def accumulate_topk(top_code, top_score, items, codes, probs, decay):
    """Stream pairs into each item's top-S list (in place). items [P], codes/probs [P, B]; empty slots code -1."""
    S = top_code.shape[1]
    for p in range(items.shape[0]):
        v = items[p]
        if decay != 1.0:
            for s in range(S):
                top_score[v, s] *= decay
        for b in range(codes.shape[1]):
            c = codes[p, b]
            sc = probs[p, b]
            found = -1
            empty = -1
            worst = 0
            for s in range(S):
                if top_code[v, s] == c:
                    found = s
                    break
                if top_code[v, s] < 0 and empty < 0:
                    empty = s
                if top_score[v, s] < top_score[v, worst]:
                    worst = s
            if found >= 0:
                top_score[v, found] += sc
            elif empty >= 0:
                top_code[v, empty] = c
                top_score[v, empty] = sc
            elif sc > top_score[v, worst] or top_code[v, worst] < 0:
                top_code[v, worst] = c
                top_score[v, worst] = sc


@numba.njit(cache=True)
def _df(n):
    # f(n+1) - f(n), f(n) = n^4 / 4
    n = float(n)
    return ((n + 1.0) ** 4 - n ** 4) / 4.0


@numba.njit(cache=True)
def _greedy(cand, cscore, counts, J, alpha, rounds, order, num_codes):
    N, C = cand.shape
    sizes = np.zeros(num_codes, dtype=np.int64)
    assign = np.full((N, J), -1, dtype=np.int64)
    aslot = np.full((N, J), -1, dtype=np.int64)
    sums = np.zeros(N, dtype=np.float64)
    for it in range(rounds + 1):
        for j in range(J):
            for oi in range(N):
                v = order[oi]
                if it > 0:  # coordinate descent: take slot j out, then re-pick it
                    old = aslot[v, j]
                    sizes[cand[v, old]] -= 1
                    sums[v] -= cscore[v, old]
                best = -np.inf
                bs = -1
                base = np.log(sums[v] + _EPS)
                for s in range(C):
                    c = cand[v, s]
                    if c < 0:
                        continue
                    taken = False
                    for jj in range(J):
                        if jj != j and assign[v, jj] == c:
                            taken = True
                    if taken:
                        continue
                    gain = counts[v] * (np.log(sums[v] + cscore[v, s] + _EPS) - base) - alpha * _df(sizes[c])
                    if gain > best:
                        best = gain
                        bs = s
                assign[v, j] = cand[v, bs]
                aslot[v, j] = bs
                sizes[cand[v, bs]] += 1
                sums[v] += cscore[v, bs]
    return assign, sizes


@numba.njit(cache=True)
def _dedupe_rows(cand, cscore):
    N, C = cand.shape
    for v in range(N):
        for s in range(C):
            if cand[v, s] < 0:
                continue
            for t in range(s + 1, C):
                if cand[v, t] == cand[v, s]:
                    cscore[v, s] = max(cscore[v, s], cscore[v, t])
                    cand[v, t] = -1


def assign_paths(top_code: np.ndarray, top_score: np.ndarray, counts: np.ndarray, prev_codes: np.ndarray,
                 alpha: float, rounds: int = 2, seed: int = 0) -> np.ndarray:
    """New item->path codes int64 [N, J] (J = prev_codes.shape[1], distinct per item).

    top_code int64 [N, S] (-1 = empty), top_score float [N, S], counts N_v [N], prev_codes int64 [N, J].
    """
    N, J = prev_codes.shape
    cand_codes = np.concatenate([np.asarray(top_code, np.int64), np.asarray(prev_codes, np.int64)], axis=1)
    cscore = np.concatenate([np.where(top_code >= 0, top_score, 0.0), np.zeros((N, J))], axis=1).astype(np.float64)
    valid = cand_codes >= 0
    uniq, inv = np.unique(cand_codes[valid], return_inverse=True)
    cand = np.full(cand_codes.shape, -1, dtype=np.int64)
    cand[valid] = inv
    _dedupe_rows(cand, cscore)
    order = np.random.default_rng([seed, 31]).permutation(N).astype(np.int64)
    assign, _ = _greedy(cand, cscore, np.asarray(counts, np.float64), J, float(alpha), int(rounds), order,
                        uniq.shape[0])
    return uniq[assign]


def random_codes(num_items: int, paths: int, num_codes: int, rng: np.random.Generator) -> np.ndarray:
    """Initial mapping: J distinct random path codes per item."""
    if num_codes < paths:
        raise ValueError(f"{num_codes} possible paths cannot give {paths} distinct paths per item")
    codes = rng.integers(0, num_codes, size=(num_items, paths), dtype=np.int64)
    while True:
        s = np.sort(codes, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            return codes
        codes[dup] = rng.integers(0, num_codes, size=(int(dup.sum()), paths), dtype=np.int64)
