"""The retrieval engine: beam retrieval (NANN Algorithms 1–2), HNSW retrieval with the neural score, and
brute force — one implementation used offline (``nann evaluate``) and inside Triton.

The scorer is pluggable: ``score_fn(owner: int32 [C], ids: int32 [C]) -> float32 [C]`` (higher is better),
where ``owner`` is the request's row in the batch (0..n_requests-1). The engine advances a whole batch of
requests round by round; each round's candidates of all still-active requests go to ``score_fn`` as one
concatenated batch, padded to the next size of the candidate grid (padding rows owner 0, id 0, their scores
dropped). A round larger than the grid maximum is split into several calls.

Traversal runs in Numba kernels (``nann.engine.kernels``): neighbour expansion with a visited bitmap per
request (test-and-set, dedup within a request), and the top-ef merge. Scores are kept as uint64 keys that
order by (score desc, id asc), so results do not depend on batching, padding or candidate order.

Layers and parameters: ``SearchParams.ef`` / ``rounds`` list one value per layer, TOP layer first; with k
entries the search starts at layer k-1, whose nodes (all nodes of level >= k-1) are scored exhaustively in
one batch. A graph with fewer levels than asked drops the leading (top) entries; layers above k-1 of a taller
graph are ignored. The last layer's list holds at least top_m entries whatever its ef (``SearchParams.walk_ef``, as
hnswlib's searchKnn takes max(ef, k)), so every caller asking for top_m items gets them; its frontier grows by the
same factor (``SearchParams.walk_frontier``), so that the longer list fits the same rounds. The visited bitmap of a
request lives for the whole search (across layers), so an item is scored at most once per request. NaN scores are
treated as -inf.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from nann.engine import kernels as K
from nann.engine.grid import CandidateGrid
from nann.engine.params import DEFAULT_SEARCH, PAPER_SEARCH, SearchParams, default_search  # noqa: F401  (re-exported)

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
UNLIMITED = 1 << 62
_EMPTY_IDS = np.zeros(0, dtype=np.int32)


@dataclass
class SearchResult:
    ids: np.ndarray          # int32 [B, M] dense ids, best first, -1 padding
    scores: np.ndarray       # float32 [B, M], -inf padding
    n_scored: np.ndarray     # int64 [B] items scored per request (padding excluded)
    rounds: np.ndarray       # int32 [B] scoring rounds a request took part in
    score_calls: int = 0     # calls of score_fn
    t_traverse: float = 0.0  # seconds outside score_fn (kernels + driver)
    t_score: float = 0.0     # seconds inside score_fn
    extra: dict = field(default_factory=dict)


# A filtered request keeps up to this many times ef entries in its list, so that ef of them can be eligible when
# ineligible items crowd the top of the ranking (7 of 8 ineligible at most; beyond that it may return fewer than k).
FILTER_SLACK = 8
_NO_WORDS = np.zeros(0, dtype=np.uint64)


@dataclass
class Filters:
    """Which items each request may return; the walk still passes through the others (their neighbours stay
    reachable), so a request gets k eligible items whenever the walk meets k.

    blocked: uint64 words over item ids, bit set = nobody may get the item (``blocked_bitmap``); empty = none.
    exclude_ids / exclude_ptr: per request, sorted dense ids it may not get (e.g. already bought, its history).
    allow_cats / allow_ptr: per request, sorted dense categories it may get (an empty segment: all of them);
    item_category int32 [N] maps items to categories."""
    exclude_ids: np.ndarray
    exclude_ptr: np.ndarray
    allow_cats: np.ndarray
    allow_ptr: np.ndarray
    blocked: np.ndarray = field(default_factory=lambda: _NO_WORDS)
    item_category: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)

    @classmethod
    def build(cls, n_requests: int, blocked: np.ndarray | None = None,
              exclude: Sequence[np.ndarray] | None = None, categories: Sequence[np.ndarray] | None = None,
              item_category: np.ndarray | None = None) -> "Filters":
        """From per-request arrays (dense ids / dense categories, any order, duplicates allowed; None = none)."""
        ex_ids, ex_ptr = _ragged_sorted(exclude, n_requests)
        cat_ids, cat_ptr = _ragged_sorted(categories, n_requests)
        if cat_ids.size and item_category is None:
            raise ValueError("category allow-lists need item_category")
        return cls(ex_ids, ex_ptr, cat_ids, cat_ptr, _NO_WORDS if blocked is None else blocked,
                   _EMPTY_IDS if item_category is None else np.ascontiguousarray(item_category, dtype=np.int32))

    def restricted(self) -> np.ndarray:
        """bool [B]: which requests have anything they may not return."""
        n = self.exclude_ptr.shape[0] - 1
        own = (np.diff(self.exclude_ptr) > 0) | (np.diff(self.allow_ptr) > 0)
        return own | np.full(n, bool(self.blocked.shape[0] and self.blocked.any()))

    def mark(self, keys: np.ndarray, owner: np.ndarray) -> None:
        K.mark_ineligible(keys, owner, self.blocked, self.exclude_ids, self.exclude_ptr, self.allow_cats,
                          self.allow_ptr, self.item_category)


def blocked_bitmap(ids: np.ndarray, num_items: int) -> np.ndarray:
    """uint64 words over item ids with the bits of ``ids`` set (out-of-range ids are ignored)."""
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[(ids >= 0) & (ids < num_items)]
    words = np.zeros(max(1, (int(num_items) + 63) // 64), dtype=np.uint64)
    np.bitwise_or.at(words, ids >> 6, np.left_shift(np.uint64(1), (ids & 63).astype(np.uint64)))
    return words


def _ragged_sorted(rows: Sequence[np.ndarray] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(n + 1, dtype=np.int64)
    if rows is None:
        return _EMPTY_IDS, ptr
    if len(rows) != n:
        raise ValueError(f"{len(rows)} filter rows for {n} requests")
    uniq = [np.unique(np.asarray(r if r is not None else [], dtype=np.int64)) for r in rows]
    np.cumsum([u.shape[0] for u in uniq], out=ptr[1:])
    return (np.concatenate(uniq).astype(np.int32) if ptr[-1] else _EMPTY_IDS), ptr


class Workspace:
    """Reusable visited bitmaps for up to ``capacity`` concurrent requests over ``num_items`` items."""

    def __init__(self, num_items: int):
        self.num_items = int(num_items)
        self.nwords = max(1, (self.num_items + 63) // 64)
        self.capacity = 0
        self.bitmap = np.zeros((0, self.nwords), dtype=np.uint64)
        self.touched = np.zeros((0, self.nwords), dtype=np.int32)
        self.touched_n = np.zeros(0, dtype=np.int64)
        self.lock = threading.Lock()

    def ensure(self, n_requests: int) -> None:
        if n_requests > self.capacity:
            cap = max(n_requests, 2 * self.capacity)
            self.bitmap = np.zeros((cap, self.nwords), dtype=np.uint64)
            self.touched = np.zeros((cap, self.nwords), dtype=np.int32)
            self.touched_n = np.zeros(cap, dtype=np.int64)
            self.capacity = cap

    def views(self, n: int):
        return self.bitmap[:n], self.touched[:n], self.touched_n[:n]

    def reset(self) -> None:
        K.reset_bitmaps(self.bitmap, self.touched, self.touched_n)

    def is_clean(self) -> bool:
        return not self.bitmap.any() and not self.touched_n.any()


def get_workspace(graph) -> Workspace:
    ws = getattr(graph, "_workspace", None)
    if ws is None or ws.num_items != graph.num_items:
        ws = Workspace(graph.num_items)
        try:
            graph._workspace = ws
        except AttributeError:
            pass
    return ws


class _Run:
    """State of one search call: scoring with the grid, counters, W lists, the workspace rows."""

    def __init__(self, num_items: int, n_requests: int, score_fn: ScoreFn, grid: CandidateGrid | None,
                 workspace: Workspace | None, w_cap: int, filters: Filters | None = None, walk: bool = True):
        """walk: the lists guide a graph walk (ineligible items stay in them); False for brute force."""
        self.n = int(n_requests)
        self.filters = filters
        self.walk = walk
        restricted = (filters.restricted() if filters is not None and walk else np.zeros(self.n, dtype=bool))
        self.slack = np.where(restricted, FILTER_SLACK, 1).astype(np.int64)  # list capacity in units of ef
        w_cap *= int(self.slack.max()) if self.n else 1
        self.score_fn = score_fn
        self.grid = grid if grid is not None else CandidateGrid()
        self.calls = 0
        self.t_score = 0.0
        self.n_scored = np.zeros(self.n, dtype=np.int64)
        self.rounds = np.zeros(self.n, dtype=np.int32)
        self.entered = np.zeros(self.n, dtype=np.int64)  # per request: new items of its top-k in the last merge
        self._no_answer = np.zeros(self.n, dtype=np.int64)
        self.w_keys = np.zeros((self.n, w_cap), dtype=np.uint64)
        self.w_flag = np.zeros((self.n, w_cap), dtype=np.uint8)
        self.w_len = np.zeros(self.n, dtype=np.int64)
        self.buf_keys = np.zeros(w_cap, dtype=np.uint64)
        self.buf_flag = np.zeros(w_cap, dtype=np.uint8)
        self._ws = workspace
        self._own_lock = False
        if workspace is not None:
            if workspace.lock.acquire(blocking=False):
                self._own_lock = True
            else:  # another thread is searching with it: use a private one
                self._ws = Workspace(num_items)
            self._ws.ensure(self.n)
            self.bitmap, self.touched, self.touched_n = self._ws.views(self.n)

    def close(self) -> None:
        if self._ws is not None:
            K.reset_bitmaps(self.bitmap, self.touched, self.touched_n)
            if self._own_lock:
                self._ws.lock.release()

    def score(self, owner: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores of all candidates of a round: grid-padded, split at the grid maximum."""
        c = int(ids.shape[0])
        out = np.empty(c, dtype=np.float32)
        for s, e in self.grid.splits(c):
            po, pi, m = self.grid.pad(owner[s:e], ids[s:e])
            t0 = time.perf_counter()
            got = self.score_fn(po, pi)
            self.t_score += time.perf_counter() - t0
            self.calls += 1
            got = np.asarray(got, dtype=np.float32).reshape(-1)
            if got.shape[0] != po.shape[0]:
                raise ValueError(f"score_fn returned {got.shape[0]} scores for {po.shape[0]} candidates")
            out[s:e] = got[:m]
        bad = np.isnan(out)
        if bad.any():
            out[bad] = -np.inf
        return out

    def score_merge(self, owner, ids, ptr, ef, top: np.ndarray | None = None) -> None:
        """Score the candidates and merge them into the lists; top: each request's answer size, whose new entries
        the merge counts (`entered`); None counts nothing."""
        scores = self.score(owner, ids)
        keys = K.make_keys(scores.view(np.uint32), ids)
        if self.filters is not None:
            self.filters.mark(keys, owner)
            if not self.walk:  # nothing walks through an ineligible item: drop it
                keep = (keys & K.INELIGIBLE) == 0
                keys = keys[keep]
                ptr = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=self.n))])
        K.merge(self.w_keys, self.w_flag, self.w_len, keys, ptr, ef, ef * self.slack, self.buf_keys, self.buf_flag,
                self._no_answer if top is None else top, self.entered)

    def run_layer(self, indptr, indices, ef, max_rounds, max_expand: np.ndarray,
                  entry: tuple[np.ndarray, np.ndarray] | None = None,
                  stop: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Rounds of expand → score → merge until every request is done: its list is expanded, its rounds are spent
        or (with `stop`) its answer has stopped changing.

        entry = (ids, ptr): extra entry points per request, scored in the first round with its expansions.
        stop = (top, patience): request r stops once the rounds since a new item last entered the first `top[r]`
        eligible entries of its list (its answer) have expanded `patience[r]` entries."""
        flagged = np.zeros(self.n, dtype=np.int64)
        no_entry = (_EMPTY_IDS, np.zeros(self.n + 1, dtype=np.int64))
        top, patience = stop if stop is not None else (None, np.full(self.n, UNLIMITED, dtype=np.int64))
        idle = np.zeros(self.n, dtype=np.int64)  # entries expanded since the answer last changed
        t = 0
        limit = int(max_rounds.max()) if self.n else 0
        while t < limit:
            K.count_flags(self.w_flag, self.w_len, flagged)
            extra = entry if (t == 0 and entry is not None) else no_entry
            active = ((flagged > 0) | (np.diff(extra[1]) > 0)) & (t < max_rounds) & (idle < patience)
            if not active.any():
                break
            owner, ids, ptr = K.expand(indptr, indices, self.w_keys, self.w_flag, self.w_len,
                                       active.astype(np.uint8), max_expand, self.bitmap, self.touched,
                                       self.touched_n, *extra)
            cnt = np.diff(ptr)
            self.n_scored += cnt
            self.rounds += (cnt > 0).astype(np.int32)
            self.entered[:] = 0
            if ids.shape[0]:
                self.score_merge(owner, ids, ptr, ef, top)
            expanded = np.where(active, np.minimum(flagged, max_expand), 0)
            idle = np.where(self.entered > 0, 0, idle + expanded)
            t += 1
        K.truncate(self.w_keys, self.w_len, ef, ef * self.slack)

    def result(self, top_m: np.ndarray, t_total: float, extra: dict | None = None) -> SearchResult:
        """The best top_m eligible entries of every list (-1 / -inf padding)."""
        m = int(top_m.max()) if self.n else 0
        keys = np.zeros((self.n, m), dtype=np.uint64)
        counts = K.eligible_top(self.w_keys, self.w_len, top_m, keys)
        i, s = K.decode_keys(keys)
        valid = np.arange(m)[None, :] < counts[:, None]
        ids = np.where(valid, i, -1).astype(np.int32)
        scores = np.where(valid, s, -np.inf).astype(np.float32)
        return SearchResult(ids=ids, scores=scores, n_scored=self.n_scored, rounds=self.rounds,
                            score_calls=self.calls, t_traverse=max(0.0, t_total - self.t_score),
                            t_score=self.t_score, extra=extra or {})


def _layer_arrays(graph, level: int):
    indptr, indices = graph.layer(level)
    return np.asarray(indptr), np.asarray(indices)


def _per_request(params, n: int) -> list[SearchParams]:
    if isinstance(params, SearchParams):
        return [params] * n
    plist = list(params)
    if len(plist) != n:
        raise ValueError(f"{len(plist)} SearchParams for {n} requests")
    if len({len(p.ef) for p in plist}) > 1:
        raise ValueError("per-request SearchParams must all have the same number of layers")
    return plist


def effective_layers(graph, n_layers: int) -> tuple[int, int]:
    """(start layer, number of leading parameter entries dropped) for params with ``n_layers`` entries."""
    start = min(n_layers - 1, graph.max_level)
    return start, (n_layers - 1) - start


def history_seeds(histories: Sequence[np.ndarray] | None, counts: np.ndarray, num_items: int):
    """(ids, ptr): each request's ``counts[r]`` most recent distinct behaviours (dense ids, oldest first in
    ``histories[r]``; ids outside the catalogue are skipped)."""
    n = counts.shape[0]
    if histories is None or not counts.any():
        return _EMPTY_IDS, np.zeros(n + 1, dtype=np.int64)
    if len(histories) != n:
        raise ValueError(f"{len(histories)} histories for {n} requests")
    rows = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([r.shape[0] for r in rows], out=ptr[1:])
    flat = np.concatenate(rows) if n else np.zeros(0, dtype=np.int64)
    return K.select_seeds(flat, ptr, counts.astype(np.int64), int(num_items))


def beam_search(graph, n_requests: int, score_fn: ScoreFn, params: SearchParams | Sequence[SearchParams],
                grid: CandidateGrid | None = None, workspace: Workspace | None = None,
                histories: Sequence[np.ndarray] | None = None, filters: Filters | None = None) -> SearchResult:
    """Beam retrieval (Algorithm 1 with Algorithm 2 per layer) for a batch of requests.

    Every request's last layer walks with a list of at least its top_m entries (``SearchParams.walk_ef``), so it
    returns top_m items whatever ef it asked for.

    histories: each request's behaviours (dense ids, oldest first), the source of ``SearchParams.seeds``.
    filters: items requests may not return (``Filters``); a restricted request's list holds up to FILTER_SLACK × ef
    entries so that ef of them can be eligible, and its result is its best top_m eligible items."""
    t0 = time.perf_counter()
    n = int(n_requests)
    plist = _per_request(params, n)
    if n == 0:
        e = np.zeros((0, 0))
        return SearchResult(e.astype(np.int32), e.astype(np.float32), np.zeros(0, np.int64), np.zeros(0, np.int32))
    start, drop = effective_layers(graph, len(plist[0].ef))
    ef = np.array([p.walk_ef[drop:] for p in plist], dtype=np.int64)     # [n, start+1], column c = layer start-c
    rounds = np.array([p.rounds[drop:] for p in plist], dtype=np.int64)
    top_m = np.array([p.top_m for p in plist], dtype=np.int64)
    max_expand = np.array([p.walk_frontier if p.frontier > 0 else UNLIMITED for p in plist], dtype=np.int64)
    patience = np.array([p.patience if p.patience > 0 else UNLIMITED for p in plist], dtype=np.int64)
    seeds = history_seeds(histories, np.array([p.seeds for p in plist], dtype=np.int64), graph.num_items)
    w_cap = int(max(ef.max(), top_m.max()))
    run = _Run(graph.num_items, n, score_fn, grid, workspace or get_workspace(graph), w_cap, filters)
    try:
        # Algorithm 1, step 1: score every node of the start layer, keep the best ef[start] as entry points
        nodes = graph.nodes_at_level(start)
        k = int(nodes.shape[0])
        K.mark_nodes(run.bitmap, run.touched, run.touched_n, nodes, n)
        owner = np.repeat(np.arange(n, dtype=np.int32), k)
        ids = np.tile(nodes, n)
        run.n_scored += k
        run.rounds += 1
        run.score_merge(owner, ids, np.arange(n + 1, dtype=np.int64) * k, ef[:, 0].copy())
        # SEARCH-LAYER from the start layer down to 0; ep of the next layer = W (all of it is the frontier)
        for c, level in enumerate(range(start, -1, -1)):
            if c > 0:
                run.w_flag[:] = 1
            indptr, indices = _layer_arrays(graph, level)
            run.run_layer(indptr, indices, ef[:, c].copy(), rounds[:, c].copy(), max_expand,
                          seeds if level == 0 else None, (top_m, patience) if level == 0 else None)
        res = run.result(top_m, 0.0)
    finally:
        run.close()
    total = time.perf_counter() - t0
    res.t_traverse = max(0.0, total - res.t_score)
    res.extra = {"start_layer": start, "dropped_layers": drop}
    return res


def hnsw_search(graph, n_requests: int, score_fn: ScoreFn, ef0: int, top_m: int,
                grid: CandidateGrid | None = None, upper_ef: int = 1,
                workspace: Workspace | None = None) -> SearchResult:
    """HNSW retrieval with the neural score (higher is better), batched across requests.

    From the entry point: best-first search with a list of ``upper_ef`` (1 = HNSW's greedy descent) on the
    upper layers, then at layer 0 the classic best-first search with a dynamic list of max(ef0, top_m):
    each round every active request expands its best not-yet-expanded node; a request stops when it has
    none left (equivalently: its best candidate is worse than the worst of its list). As in hnswlib the
    layer-0 visited set starts fresh, so a node scored on an upper layer may be scored again there
    (``n_scored`` counts such a node twice: it counts scorer rows).
    """
    t0 = time.perf_counter()
    n = int(n_requests)
    ef_l0 = int(max(ef0, top_m))
    upper_ef = int(max(1, upper_ef))
    tm = np.full(n, int(top_m), dtype=np.int64)
    run = _Run(graph.num_items, n, score_fn, grid, workspace or get_workspace(graph), max(ef_l0, upper_ef))
    try:
        ep = np.full(n, graph.entry_point, dtype=np.int32)
        K.mark_nodes(run.bitmap, run.touched, run.touched_n, ep[:1], n)
        run.n_scored += 1
        run.rounds += 1
        run.score_merge(np.arange(n, dtype=np.int32), ep, np.arange(n + 1, dtype=np.int64), np.full(n, upper_ef))
        unlimited = np.full(n, UNLIMITED, dtype=np.int64)
        one_each = np.ones(n, dtype=np.int64)
        for level in range(graph.max_level, -1, -1):
            ef = np.full(n, upper_ef if level > 0 else ef_l0, dtype=np.int64)
            if level == 0:
                K.reset_bitmaps(run.bitmap, run.touched, run.touched_n)
                K.mark_lists(run.bitmap, run.touched, run.touched_n, run.w_keys, run.w_len)
            run.w_flag[:] = 1
            indptr, indices = _layer_arrays(graph, level)
            run.run_layer(indptr, indices, ef, unlimited, one_each)
        res = run.result(tm, 0.0)
    finally:
        run.close()
    res.t_traverse = max(0.0, time.perf_counter() - t0 - res.t_score)
    return res


def brute_force(num_items: int, n_requests: int, score_fn: ScoreFn, top_m: int, chunk: int | None = None,
                grid: CandidateGrid | None = None, filters: Filters | None = None) -> SearchResult:
    """Exact top-M by scoring every item (``chunk`` items per request per step); with ``filters``, of the items
    each request may get."""
    t0 = time.perf_counter()
    n = int(n_requests)
    grid = grid if grid is not None else CandidateGrid()
    if chunk is None:
        chunk = max(1, grid.max_size // max(1, n))
    tm = np.full(n, int(top_m), dtype=np.int64)
    run = _Run(num_items, n, score_fn, grid, None, int(top_m), filters, walk=False)
    ef = tm.copy()
    for s in range(0, int(num_items), int(chunk)):
        e = min(int(num_items), s + int(chunk))
        k = e - s
        owner = np.repeat(np.arange(n, dtype=np.int32), k)
        ids = np.tile(np.arange(s, e, dtype=np.int32), n)
        run.score_merge(owner, ids, np.arange(n + 1, dtype=np.int64) * k, ef)
        run.rounds += 1
    run.n_scored += int(num_items)
    res = run.result(tm, 0.0)
    res.t_traverse = max(0.0, time.perf_counter() - t0 - res.t_score)
    return res
