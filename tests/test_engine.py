"""The retrieval engine (nann.engine.search) and the candidate grid."""
from __future__ import annotations

import json
from dataclasses import replace
from collections import deque

import numpy as np
import pytest

from graph_builder.build import build_index, export_index
from nann.engine.grid import CandidateGrid
from nann.engine.graph import HnswGraph
from nann.engine.search import (Filters, SearchParams, Workspace, beam_search, blocked_bitmap, brute_force,
                                effective_layers,
                                hnsw_search)


def _graph(tmp_path_factory, n, d, m, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    index = build_index(x, m=m, ef_construction=40, threads=2, seed=seed, progress=False)
    out = tmp_path_factory.mktemp(f"g{n}")
    export_index(index, out)
    return x, index, out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    x, index, out = _graph(tmp_path_factory, 600, 8, 6, 3)
    return x, HnswGraph.load(out), out


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    x, index, out = _graph(tmp_path_factory, 5000, 16, 16, 5)
    return x, index, HnswGraph.load(out), out


def dot_scorer(x, n_users, seed=0):
    u = np.random.default_rng(seed).standard_normal((n_users, x.shape[1])).astype(np.float32)

    def score(owner, ids):
        return (u[owner] * x[ids]).sum(axis=1)  # row-wise: independent of batch composition
    return score


def _connected(g: HnswGraph) -> bool:
    indptr, indices = g.layer(0)
    seen = np.zeros(g.num_items, bool)
    seen[g.entry_point] = True
    q = deque([g.entry_point])
    while q:
        v = q.popleft()
        for w in indices[indptr[v]:indptr[v + 1]]:
            if not seen[w]:
                seen[w] = True
                q.append(int(w))
    return bool(seen.all())


# ----------------------------------------------------------------------------- grid
def test_grid():
    g = CandidateGrid()
    assert g.sizes[:3] == (1, 200, 400) and g.max_size == 14800 and len(g.sizes) == 75
    assert g.pad_size(1) == 1 and g.pad_size(2) == 200 and g.pad_size(200) == 200 and g.pad_size(201) == 400
    assert g.pad_size(14800) == 14800
    with pytest.raises(ValueError):
        g.pad_size(14801)
    assert g.splits(30000) == [(0, 14800), (14800, 29600), (29600, 30000)]
    o, i, n = g.pad(np.array([3, 4], np.int32), np.array([7, 8], np.int32))
    assert n == 2 and o.shape == (200,) and o[:2].tolist() == [3, 4] and i[:2].tolist() == [7, 8]
    assert (o[2:] == 4).all() and not i[2:].any()  # padding repeats the last owner: runs stay contiguous
    g2 = CandidateGrid([10, 20, 30], max_size=25)
    assert g2.sizes == (10, 20, 25) and g2.pad_size(21) == 25
    assert CandidateGrid.unpadded(7).pad_size(5) == 5


def test_grid_by_runtime_and_its_json():
    """TensorRT gets the padded grid (its profiles), the CPU runtimes an unpadded one (nann.scorers); both survive the
    JSON the export writes into `retrieve`'s config."""
    from nann.scorers import runtime

    padded, unpadded = runtime("tensorrt").grid(), runtime("onnxruntime").grid()
    assert padded.sizes == CandidateGrid().sizes and runtime("torch").grid().sizes is None
    assert unpadded.sizes is None and unpadded.max_size == padded.max_size and unpadded.pad_size(59) == 59
    for g in (padded, unpadded, CandidateGrid([1, 16, 32, 64], 64)):
        back = CandidateGrid.from_json(json.loads(json.dumps(g.to_json())))
        assert (back.sizes, back.max_size) == (g.sizes, g.max_size)


def test_keys_order():
    from nann.engine import kernels as K
    s = np.array([1.5, -2.0, 0.0, np.inf, -np.inf, 1.5, 3e-39, -3e-39], np.float32)
    ids = np.arange(len(s), dtype=np.int32)[::-1].copy()
    keys = K.make_keys(s.view(np.uint32), ids)
    i2, s2 = K.decode_keys(keys)
    assert (i2 == ids).all() and (s2.view(np.uint32) == s.view(np.uint32)).all()
    order = np.argsort(keys)
    expect = sorted(range(len(s)), key=lambda k: (-float(s[k]), int(ids[k])))
    assert order.tolist() == expect


# ----------------------------------------------------------------------------- beam search
def test_beam_exhaustive_equals_brute_force(small):
    x, g, _ = small
    assert _connected(g)
    n_users = 5
    score = dot_scorer(x, n_users)
    L = g.max_level + 1
    ref = brute_force(g.num_items, n_users, score, 50, chunk=97)
    for frontier in (0, 3):   # a narrow frontier only takes more rounds
        p = SearchParams(ef=(10_000,) * L, rounds=(10_000,) * L, top_m=50, frontier=frontier)
        res = beam_search(g, n_users, score, p)
        assert (res.ids == ref.ids).all()
        assert (res.scores == ref.scores).all()
        assert (res.n_scored == g.num_items).all() and (ref.n_scored == g.num_items).all()
    # brute force = exact top-M
    full = (np.random.default_rng(0).standard_normal((n_users, x.shape[1])).astype(np.float32)[:, None, :]
            * x[None]).sum(-1)
    for r in range(n_users):
        top = sorted(range(len(x)), key=lambda k: (-full[r, k], k))[:50]
        assert ref.ids[r].tolist() == top


def test_default_params_reasonable(small):
    x, g, _ = small
    score = dot_scorer(x, 4, seed=1)
    res = beam_search(g, 4, score, SearchParams((20, 40, 80), (1, 1, 3), top_m=20))
    ref = brute_force(g.num_items, 4, score, 20)
    overlap = np.mean([len(set(res.ids[r]) & set(ref.ids[r])) / 20 for r in range(4)])
    assert overlap > 0.6
    assert (np.diff(res.scores, axis=1) <= 0).all()
    assert (res.n_scored < g.num_items).all()


def test_default_search_widens_with_the_catalogue():
    from nann.engine.params import DEFAULT_SEARCH, SCALING_BASE_ITEMS, SMALL_CATALOGUE_EF, default_search
    from nann.serving.requests import ServingLimits

    assert default_search(SCALING_BASE_ITEMS) == DEFAULT_SEARCH
    # below the base only the last-layer ef differs: top_m up to 2k items, widest at 8k, back to 300 at the base
    for n in (1, 2_000, 5_000, 8_000, 10_000, 20_000, SCALING_BASE_ITEMS - 1):
        assert replace(default_search(n), ef=DEFAULT_SEARCH.ef) == DEFAULT_SEARCH
    assert [default_search(n).ef[-1] for n, _ in SMALL_CATALOGUE_EF] == [ef for _, ef in SMALL_CATALOGUE_EF]
    small = [default_search(n).ef[-1] for n in (1, 2_000, 5_000, 8_000, 10_000, 20_000, 99_999)]
    assert small == [200, 200, 390, 550, 520, 440, 300]  # 200 × (550 / 200)^(log(5k / 2k) / log 4) = 390, ...
    sizes = (SCALING_BASE_ITEMS + 1, 300_000, 1_000_000, 10_000_000)
    searches = [default_search(n) for n in sizes]
    for smaller, larger in zip(searches, searches[1:]):
        assert larger.ef[-1] > smaller.ef[-1] and larger.frontier >= smaller.frontier
        assert larger.ef[:-1] == smaller.ef[:-1] == DEFAULT_SEARCH.ef[:-1]
        assert larger.rounds == DEFAULT_SEARCH.rounds and larger.seeds == DEFAULT_SEARCH.seeds
    assert searches[2].ef[-1] == 1190 and searches[2].frontier == 34  # 300 × (1M / 100k)^0.6, 16 × 10^(1/3)
    # a catalogue whose default list is longer than the usual request maximum can still be served by default
    limits = ServingLimits.for_catalogue(default_search(10_000_000))
    assert limits.defaults.ef == searches[-1].ef
    assert limits.maximum("ef") >= searches[-1].ef[-1] > ServingLimits().maximum("ef")
    assert ServingLimits.for_catalogue(default_search(5_000), max_seq=3).defaults.seeds == 3


def test_batched_equals_single(medium):
    x, _, g, _ = medium
    n = 6
    score = dot_scorer(x, n, seed=2)
    p = SearchParams((30, 60, 120), (1, 2, 3), top_m=50)
    batch = beam_search(g, n, score, p)
    for r in range(n):
        one = beam_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), p)
        assert (one.ids[0] == batch.ids[r]).all()
        assert (one.scores[0] == batch.scores[r]).all()
        assert one.n_scored[0] == batch.n_scored[r] and one.rounds[0] == batch.rounds[r]
    hb = hnsw_search(g, n, score, ef0=40, top_m=20)
    for r in range(n):
        one = hnsw_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), ef0=40, top_m=20)
        assert (one.ids[0] == hb.ids[r]).all() and one.n_scored[0] == hb.n_scored[r]


def test_padding_and_splitting_do_not_change_results(small):
    x, g, _ = small
    n = 3
    score = dot_scorer(x, n, seed=3)
    p = SearchParams((8, 30, 60), (1, 2, 3), top_m=40)
    results = []
    for grid in [CandidateGrid([1]), CandidateGrid(), CandidateGrid([50_000]), CandidateGrid.unpadded(),
                 CandidateGrid([7, 64], max_size=64)]:
        seen = []

        def rec(o, i):
            seen.append(len(i))
            return score(o, i)
        res = beam_search(g, n, rec, p, grid=grid)
        assert all(s <= grid.max_size for s in seen)
        if grid.sizes is not None:
            assert all(s in grid.sizes for s in seen)
        results.append(res)
        h = hnsw_search(g, n, score, ef0=30, top_m=10, grid=grid)
        results[-1] = (res, h)
    for res, h in results[1:]:
        assert (res.ids == results[0][0].ids).all() and (res.scores == results[0][0].scores).all()
        assert (res.n_scored == results[0][0].n_scored).all()
        assert (h.ids == results[0][1].ids).all()
    assert results[0][0].score_calls == results[0][0].n_scored.sum()  # grid [1]: one candidate per call


def test_per_request_params(medium):
    x, _, g, _ = medium
    score = dot_scorer(x, 4, seed=4)
    ps = [SearchParams((10, 20, 40), (1, 1, 2), top_m=10), SearchParams((50, 100, 300), (1, 2, 4), top_m=100),
          SearchParams((5, 5, 5), (0, 1, 1), top_m=3), SearchParams((30, 60, 120), (1, 3, 20), 50, frontier=4)]
    mixed = beam_search(g, 4, score, ps)
    assert mixed.ids.shape == (4, 100)
    for r, p in enumerate(ps):
        one = beam_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), p)
        m = p.top_m
        assert (mixed.ids[r, :m] == one.ids[0]).all() and (mixed.scores[r, :m] == one.scores[0]).all()
        assert (mixed.ids[r, m:] == -1).all() and np.isneginf(mixed.scores[r, m:]).all()
        assert mixed.n_scored[r] == one.n_scored[0]
    with pytest.raises(ValueError):
        beam_search(g, 2, score, [ps[0], SearchParams((10, 10), (1, 1))])


def test_n_scored_counts_distinct_candidates(medium):
    x, _, g, _ = medium
    n = 4
    score = dot_scorer(x, n, seed=5)
    for search in (lambda sf, grid: beam_search(g, n, sf, SearchParams((20, 80, 200), (1, 2, 3), 100), grid=grid),
                   lambda sf, grid: hnsw_search(g, n, sf, 100, 50, grid=grid)):
        got = [[] for _ in range(n)]

        def rec(o, i):
            for r in range(n):
                got[r].extend(i[o == r].tolist())
            return score(o, i)
        res = search(rec, CandidateGrid.unpadded())
        for r in range(n):
            assert len(got[r]) == res.n_scored[r]
    # beam: items are distinct per request
    got = [[] for _ in range(n)]

    def rec2(o, i):
        for r in range(n):
            got[r].extend(i[o == r].tolist())
        return score(o, i)
    res = beam_search(g, n, rec2, SearchParams((20, 80, 200), (1, 2, 3), 100), grid=CandidateGrid.unpadded())
    for r in range(n):
        assert len(set(got[r])) == len(got[r]) == res.n_scored[r]
    # with padding the scorer sees more rows, n_scored stays the same
    padded = beam_search(g, n, score, SearchParams((20, 80, 200), (1, 2, 3), 100))
    assert (padded.n_scored == res.n_scored).all()


def test_bitmap_reset_and_reuse(medium):
    x, _, g, out = medium
    score_a = dot_scorer(x, 5, seed=6)
    score_b = dot_scorer(x, 3, seed=7)
    p = SearchParams((20, 60, 150), (1, 1, 3), 60)
    beam_search(g, 5, score_a, p)
    hnsw_search(g, 5, score_a, 50, 20)
    ws = g._workspace
    assert ws is not None and ws.is_clean()
    b1 = beam_search(g, 3, score_b, p)
    fresh = HnswGraph.load(out)
    b2 = beam_search(fresh, 3, score_b, p)
    b3 = beam_search(g, 3, score_b, p, workspace=Workspace(g.num_items))
    for b in (b2, b3):
        assert (b.ids == b1.ids).all() and (b.n_scored == b1.n_scored).all()
    assert g._workspace is ws and ws.is_clean()

    def boom(o, i):
        raise RuntimeError("scorer failed")
    with pytest.raises(RuntimeError):
        beam_search(g, 2, boom, p)
    assert ws.is_clean() and not ws.lock.locked()


def test_layers_dropped_or_ignored(small):
    x, g, _ = small
    score = dot_scorer(x, 2, seed=8)
    L = g.max_level + 1
    start, drop = effective_layers(g, L + 2)
    assert start == g.max_level and drop == 2
    a = beam_search(g, 2, score, SearchParams((1, 1) + (30,) * L, (1, 1) + (2,) * L, 20))
    b = beam_search(g, 2, score, SearchParams((30,) * L, (2,) * L, 20))
    assert (a.ids == b.ids).all() and a.extra["dropped_layers"] == 2
    # fewer layers than the graph: start at layer 1, all of its nodes scored exhaustively
    c = beam_search(g, 2, score, SearchParams((30, 60), (1, 2), 20))
    assert c.extra["start_layer"] == 1
    assert (c.n_scored >= len(g.nodes_at_level(1))).all()


def test_the_last_list_holds_top_m_whatever_its_ef(small):
    """ef 5 on layer 0 with top_m 12 walks as ef 12 (SearchParams.walk_ef, hnswlib's max(ef, k)): 12 items come back,
    the same as asking for ef 12."""
    x, g, _ = small
    score = dot_scorer(x, 2, seed=9)
    res = beam_search(g, 2, score, SearchParams((2, 3, 5), (1, 1, 1), top_m=12))
    wide = beam_search(g, 2, score, SearchParams((2, 3, 12), (1, 1, 1), top_m=12))
    assert res.ids.shape == (2, 12) and (res.ids >= 0).all()
    assert (res.ids == wide.ids).all() and (res.scores == wide.scores).all() and (res.n_scored == wide.n_scored).all()


def test_a_list_lengthened_by_top_m_widens_its_frontier_by_the_same_factor(small):
    """frontier 2 at ef 5 with top_m 12 walks as frontier ceil(2 * 12 / 5) = 5 on a list of 12 (SearchParams.walk_frontier):
    the same walk as asking for both; a top_m within the ef, or frontier 0, keeps the frontier as asked."""
    x, g, _ = small
    score = dot_scorer(x, 2, seed=9)
    asked = SearchParams((2, 3, 5), (1, 1, 8), top_m=12, frontier=2)
    assert asked.walk_frontier == 5
    assert SearchParams((2, 3, 12), (1, 1, 8), top_m=12, frontier=2).walk_frontier == 2
    assert SearchParams((2, 3, 5), (1, 1, 8), top_m=12, frontier=0).walk_frontier == 0
    res = beam_search(g, 2, score, asked)
    same = beam_search(g, 2, score, SearchParams((2, 3, 12), (1, 1, 8), top_m=12, frontier=5))
    assert (res.ids == same.ids).all() and (res.n_scored == same.n_scored).all() and (res.rounds == same.rounds).all()


# ----------------------------------------------------------------------------- HNSW retrieval
def test_hnsw_search_matches_hnswlib(medium):
    x, index, g, _ = medium
    rng = np.random.default_rng(11)
    q = rng.standard_normal((40, x.shape[1])).astype(np.float32)
    k, ef = 10, 50
    index.set_ef(ef)
    labels, dist = index.knn_query(q, k=k)

    def score(owner, ids):
        d = q[owner] - x[ids]
        return -(d * d).sum(axis=1)
    res = hnsw_search(g, len(q), score, ef0=ef, top_m=k)
    same = 0
    total_missing = 0
    for r in range(len(q)):
        ours, theirs = set(res.ids[r].tolist()), set(labels[r].tolist())
        if ours == theirs:
            same += 1
        else:  # allow equal-distance ties at the boundary
            missing = theirs - ours
            kth = -res.scores[r, -1]
            total_missing += sum(1 for v in missing if abs(((q[r] - x[v]) ** 2).sum() - kth) > 1e-4)
    assert same >= len(q) - 2
    assert total_missing <= 2
    np.testing.assert_allclose(-res.scores, dist, rtol=1e-4, atol=1e-4)
    assert (res.n_scored > ef).all() and (res.n_scored < g.num_items).all()


def test_brute_force_chunks(small):
    x, g, _ = small
    score = dot_scorer(x, 3, seed=12)
    a = brute_force(g.num_items, 3, score, 25, chunk=1)
    b = brute_force(g.num_items, 3, score, 25, chunk=10_000)
    c = brute_force(g.num_items, 3, score, 25, grid=CandidateGrid([64]))
    assert (a.ids == b.ids).all() and (b.ids == c.ids).all() and (a.scores == c.scores).all()


def _path_graph(n=10):
    """A path 0-1-...-(n-1) at layer 0, nodes {0, 5} at layer 1 (entry point 0)."""
    levels = np.zeros(n, np.int8)
    levels[[0, 5]] = 1
    nb0 = [[1]] + [[i - 1, i + 1] for i in range(1, n - 1)] + [[n - 2]]
    p1 = np.zeros(n + 1, np.int64)
    p1[1:] = np.cumsum([1 if i in (0, 5) else 0 for i in range(n)])
    return HnswGraph.from_arrays(levels, [(np.cumsum([0] + [len(v) for v in nb0]), np.concatenate(nb0)),
                                          (p1, np.array([5, 0]))], entry_point=0)


def test_handmade_path_graph():
    """A path 0-1-...-9 at layer 0, nodes {0, 5} at layer 1: beam follows the path one hop per round."""
    g = _path_graph()
    assert g.nodes_at_level(1).tolist() == [0, 5]
    score = lambda o, i: -np.abs(i - 9).astype(np.float32)  # noqa: E731  best item: 9
    r = beam_search(g, 1, score, SearchParams((1, 1), (1, 2), top_m=2))
    # layer 1: {0, 5} scored, ep = 5; layer 0 (its list holds top_m = 2), two rounds: {4, 6} -> W={6, 5}, then {7}
    assert r.ids[0].tolist() == [7, 6] and r.n_scored[0] == 5 and r.rounds[0] == 3
    r = beam_search(g, 1, score, SearchParams((1, 3), (1, 10), top_m=3))
    assert r.ids[0].tolist() == [9, 8, 7] and r.n_scored[0] == 8   # {0,5}, {4,6}, {3,7}, {8}, {9}
    narrow = beam_search(g, 1, score, SearchParams((1, 1), (1, 10), top_m=3))  # walks as ef 3
    assert narrow.ids[0].tolist() == [9, 8, 7] and narrow.n_scored[0] == 8
    # fewer items than top_m: -1 padding (0, scored on layer 1 and dropped there, is not scored again)
    r = beam_search(g, 1, score, SearchParams((1, 1), (1, 10), top_m=12))
    assert r.ids[0].tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, -1, -1, -1] and np.isneginf(r.scores[0, 9:]).all()
    # frontier 1: only the best new entry is expanded per round, so 4 (behind the walk) never is
    r = beam_search(g, 1, score, SearchParams((1, 3), (1, 10), top_m=3, frontier=1))
    assert r.ids[0].tolist() == [9, 8, 7] and r.n_scored[0] == 7   # {0,5}, {4,6}, {7}, {8}, {9}
    with pytest.raises(ValueError):
        SearchParams(frontier=-1)
    h = hnsw_search(g, 1, score, ef0=1, top_m=1)
    assert h.ids[0].tolist() == [9]


# ----------------------------------------------------------------------------- stopping rule
def test_patience_stops_the_walk_once_its_answer_stops_changing():
    """Best item 7 on the path, frontier 1 (one entry expanded per round): layer 0 finds it in round 2 (from 5:
    {4, 6}, then {7}); round 3 (7 expanded: {8}) and round 4 (8 expanded: {9}) bring nothing better, so patience 1
    stops after round 3 and 2 after round 4, both with the answer the unbounded walk (patience 0) has."""
    g = _path_graph()
    score = lambda o, i: -np.abs(i - 7).astype(np.float32)  # noqa: E731
    runs = {s: beam_search(g, 1, score, SearchParams((1, 3), (1, 10), 1, frontier=1, patience=s))
            for s in (0, 1, 2, 9)}
    assert all(r.ids[0].tolist() == [7] for r in runs.values())
    # scored: {0, 5} on layer 1, then {4, 6}, {7}, {8}, {9}; rounds count layer 1's too
    assert (runs[1].n_scored[0], runs[1].rounds[0]) == (6, 4)
    assert (runs[2].n_scored[0], runs[2].rounds[0]) == (7, 5) == (runs[0].n_scored[0], runs[0].rounds[0])
    assert runs[9].n_scored[0] == runs[0].n_scored[0]
    # an answer of 3 items changes for longer: 8 enters it in round 3, 9 never does
    three = beam_search(g, 1, score, SearchParams((1, 3), (1, 10), 3, frontier=1, patience=1))
    assert three.ids[0].tolist() == [7, 6, 8] and three.n_scored[0] == 7
    # patience counts entries expanded, not rounds: best item 6, found in round 1; frontier 0 expands 6 and 4 in
    # round 2 ({7, 3}, neither better), which spends a patience of 2 in one round
    six = lambda o, i: -np.abs(i - 6).astype(np.float32)  # noqa: E731
    wide = beam_search(g, 1, six, SearchParams((1, 3), (1, 10), 1, frontier=0, patience=2))
    assert wide.ids[0].tolist() == [6] and (wide.n_scored[0], wide.rounds[0]) == (6, 3)
    with pytest.raises(ValueError, match="patience must be >= 0"):
        SearchParams(patience=-1)


def test_patience_only_chooses_when_to_stop(small):
    """A walk stopped by patience is the fixed-round walk stopped at the same round: for every user some layer-0
    round cap without the rule gives the same answer at the same cost. A patience no walk can spend is the walk
    without the rule, which with unbounded lists is brute force (eligible items only, with filters)."""
    x, g, _ = small
    n_users, m = 4, 30
    score = dot_scorer(x, n_users, seed=21)
    filters, _ = _filter_case(g.num_items, n_users, seed=6)
    upper = (10_000,) * g.max_level
    ref = brute_force(g.num_items, n_users, score, m, filters=filters)
    p = SearchParams(upper + (60,), upper + (10_000,), m, frontier=3)
    fixed = [beam_search(g, n_users, score, replace(p, rounds=upper + (cap,)), filters=filters)
             for cap in range(1, 300)]
    assert (fixed[-1].n_scored == beam_search(g, n_users, score, p, filters=filters).n_scored).all()  # caps enough
    for patience in (3, 12, 40):
        got = beam_search(g, n_users, score, replace(p, patience=patience), filters=filters)
        assert (got.n_scored < fixed[-1].n_scored).any()
        for r in range(n_users):
            same = [f for f in fixed if f.n_scored[r] == got.n_scored[r]]
            assert same and any((f.ids[r] == got.ids[r]).all() and (f.scores[r] == got.scores[r]).all() for f in same)
    full = SearchParams(upper + (10_000,), upper + (10_000,), m, frontier=3, patience=g.num_items)
    res = beam_search(g, n_users, score, full, filters=filters)
    assert (res.ids == ref.ids).all() and (res.scores == ref.scores).all()
    assert (res.n_scored == beam_search(g, n_users, score, replace(full, patience=0), filters=filters).n_scored).all()


def test_merge_counts_the_new_items_of_each_answer():
    from nann.engine import kernels as K

    def keys(ids, scores):
        return K.make_keys(np.asarray(scores, np.float32).view(np.uint32), np.asarray(ids, np.int32))

    w_keys = np.zeros((2, 6), np.uint64)
    w_flag = np.zeros((2, 6), np.uint8)
    w_len = np.array([3, 0], np.int64)
    w_keys[0, :3] = keys([1, 2, 3], [9.0, 8.0, 7.0])
    cand = keys([4, 5, 6, 7], [8.5, 1.0, 9.5, 6.0])  # request 0: 4 (into its top 2) and 5; request 1: 6 and 7
    cand[1] |= K.INELIGIBLE
    entered = np.full(2, -1, np.int64)
    K.merge(w_keys, w_flag, w_len, cand, np.array([0, 2, 4]), np.array([6, 6]), np.array([6, 6]),
            np.zeros(6, np.uint64), np.zeros(6, np.uint8), np.array([2, 1]), entered)
    assert entered.tolist() == [1, 1] and w_len.tolist() == [5, 2]
    K.merge(w_keys, w_flag, w_len, keys([8], [0.5]), np.array([0, 1, 1]), np.array([6, 6]), np.array([6, 6]),
            np.zeros(6, np.uint64), np.zeros(6, np.uint8), np.array([2, 1]), entered)
    assert entered.tolist() == [0, 0]  # 8 lands below request 0's answer; request 1 got nothing


def test_patience_batched_equals_single_and_cost_grows_with_it(medium):
    x, _, g, _ = medium
    n = 5
    score = dot_scorer(x, n, seed=16)
    rng = np.random.default_rng(5)
    histories = [rng.integers(0, g.num_items, size=30) for _ in range(n)]
    ps = [SearchParams((10, 50, 400), (1, 3, 64), 50, frontier=8, seeds=20, patience=s) for s in (0, 4, 8, 16, 64)]
    batch = beam_search(g, n, score, ps, histories=histories)
    for r in range(n):
        one = beam_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), ps[r], histories=[histories[r]])
        assert (one.ids[0] == batch.ids[r]).all() and (one.scores[0] == batch.scores[r]).all()
        assert one.n_scored[0] == batch.n_scored[r] and one.rounds[0] == batch.rounds[r]
    same = [beam_search(g, n, score, p, histories=histories) for p in ps]
    scored = np.array([s.n_scored for s in same])  # [patience, user]
    assert (np.diff(scored[1:], axis=0) >= 0).all() and (scored[1:] <= scored[0]).all()
    assert (scored[1] < scored[0]).any()


# ----------------------------------------------------------------------------- history seeds
def _recording(score, n):
    """score_fn that records every (request, id) it is asked to score."""
    got = [[] for _ in range(n)]

    def rec(o, i):
        for r in range(n):
            got[r].extend(i[o == r].tolist())
        return score(o, i)
    return rec, got


def test_seeds_on_a_path_graph_join_layer_0_and_are_scored_once():
    """Path 0-1-...-9, {0, 5} at layer 1, best item 9: a seed next to it gets the walk there in two rounds."""
    g = _path_graph()
    score = lambda o, i: -np.abs(i - 9).astype(np.float32)  # noqa: E731
    p = SearchParams((1, 1), (1, 2), top_m=1, seeds=3)
    assert beam_search(g, 1, score, SearchParams((1, 1), (1, 2), top_m=1)).ids[0].tolist() == [7]
    # layer 1: {0, 5}; layer 0 round 1: seed 8 with 5's neighbours {4, 6} -> W={8}; round 2: {7, 9} -> W={9}
    r = beam_search(g, 1, score, p, histories=[np.array([8])])
    assert r.ids[0].tolist() == [9] and r.n_scored[0] == 7 and r.rounds[0] == 3
    # 5 was scored on layer 1: as a seed it is not scored again; duplicates and ids outside [0, 10) are skipped
    for history in ([5, 8], [8, 8, -1, 10, 2**40, 8], [0, 5, 8, 8]):
        rec, got = _recording(score, 1)
        r = beam_search(g, 1, rec, p, histories=[np.array(history)], grid=CandidateGrid.unpadded())
        assert r.ids[0].tolist() == [9] and r.n_scored[0] == 7 == len(got[0]) == len(set(got[0]))
    # without histories (or with seeds 0) there are no seeds
    assert beam_search(g, 1, score, p).ids[0].tolist() == [7]
    assert beam_search(g, 1, score, SearchParams((1, 1), (1, 2), 1, seeds=0), histories=[[8]]).ids[0].tolist() == [7]


def test_seeds_with_enough_budget_equal_brute_force(small):
    x, g, _ = small
    n_users = 4
    score = dot_scorer(x, n_users, seed=13)
    L = g.max_level + 1
    ref = brute_force(g.num_items, n_users, score, 50)
    histories = [np.random.default_rng(r).integers(0, g.num_items, size=30) for r in range(n_users)]
    for seeds in (1, 10, 30):
        p = SearchParams(ef=(10_000,) * L, rounds=(10_000,) * L, top_m=50, seeds=seeds)
        rec, got = _recording(score, n_users)
        res = beam_search(g, n_users, rec, p, histories=histories, grid=CandidateGrid.unpadded())  # no padding rows
        assert (res.ids == ref.ids).all() and (res.scores == ref.scores).all()
        # every item scored exactly once per request: seeds are never double-scored
        assert (res.n_scored == g.num_items).all()
        assert all(sorted(got[r]) == list(range(g.num_items)) for r in range(n_users))


def test_seeds_scored_in_the_first_layer_0_round_and_never_twice(medium):
    x, _, g, _ = medium
    n = 4
    score = dot_scorer(x, n, seed=14)
    rng = np.random.default_rng(3)
    top = g.nodes_at_level(g.max_level)  # scored exhaustively before layer 0: as seeds, already visited
    histories = [np.concatenate([top[:3], rng.integers(0, g.num_items, size=40)]) for _ in range(n)]
    base = SearchParams((20, 80, 200), (1, 2, 3), 100)
    for seeds in (5, 50):
        p = SearchParams(base.ef, base.rounds, base.top_m, seeds=seeds)
        rec, got = _recording(score, n)
        res = beam_search(g, n, rec, p, histories=histories, grid=CandidateGrid.unpadded())
        for r in range(n):
            assert len(got[r]) == len(set(got[r])) == res.n_scored[r]
            recent = list(dict.fromkeys(histories[r][::-1].tolist()))[:seeds]
            assert set(recent) <= set(got[r])  # every seed was scored (once)
        unseeded = beam_search(g, n, score, base, grid=CandidateGrid.unpadded())
        assert (res.n_scored > unseeded.n_scored).any()


def test_seeds_batched_equals_single_with_mixed_counts(medium):
    x, _, g, _ = medium
    n = 5
    score = dot_scorer(x, n, seed=15)
    rng = np.random.default_rng(4)
    histories = [rng.integers(0, g.num_items, size=int(s)) for s in (0, 3, 50, 20, 50)]
    ps = [SearchParams((30, 60, 120), (1, 2, 3), 50, seeds=s) for s in (0, 3, 50, 10, 7)]
    batch = beam_search(g, n, score, ps, histories=histories)
    for r in range(n):
        one = beam_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), ps[r], histories=[histories[r]])
        assert (one.ids[0] == batch.ids[r]).all() and (one.scores[0] == batch.scores[r]).all()
        assert one.n_scored[0] == batch.n_scored[r] and one.rounds[0] == batch.rounds[r]
    with pytest.raises(ValueError, match="2 histories for 5 requests"):
        beam_search(g, n, score, ps, histories=histories[:2])


def test_select_seeds_skips_duplicates_and_out_of_range_ids():
    from nann.engine import kernels as K

    flat = np.array([3, 7, 3, -1, 9, 12, 7, 0, 4, 4], dtype=np.int64)   # two histories: [0:6], [6:10]
    ids, ptr = K.select_seeds(flat, np.array([0, 6, 10]), np.array([3, 5]), 10)
    assert ptr.tolist() == [0, 3, 6] and ids.tolist() == [9, 3, 7, 4, 0, 7]  # newest first, distinct, in [0, 10)
    ids, ptr = K.select_seeds(flat, np.array([0, 6, 10]), np.array([0, 1]), 10)
    assert ptr.tolist() == [0, 0, 1] and ids.tolist() == [4]


# ----------------------------------------------------------------------------- eligibility filters
def _eligible_top(full_scores: np.ndarray, eligible: np.ndarray, m: int) -> list[int]:
    """Hand-computed reference: top-m of the eligible items, score descending, ties by id."""
    ids = np.flatnonzero(eligible)
    return sorted(ids.tolist(), key=lambda k: (-float(full_scores[k]), k))[:m]


def _filter_case(n_items: int, n_users: int, seed: int):
    rng = np.random.default_rng(seed)
    item_category = rng.integers(0, 10, n_items).astype(np.int32)
    blocked = rng.choice(n_items, n_items // 3, replace=False)
    exclude = [rng.choice(n_items, 40, replace=False), None, rng.choice(n_items, 5, replace=False)] + \
        [None] * (n_users - 3)
    categories = [None, np.array([1, 3, 3, 7]), np.array([2])] + [None] * (n_users - 3)
    eligible = np.ones((n_users, n_items), dtype=bool)
    eligible[:, blocked] = False
    for r in range(n_users):
        if exclude[r] is not None:
            eligible[r, exclude[r]] = False
        if categories[r] is not None:
            eligible[r] &= np.isin(item_category, categories[r])
    filters = Filters.build(n_users, blocked=blocked_bitmap(blocked, n_items), exclude=exclude,
                            categories=categories, item_category=item_category)
    return filters, eligible


def test_filters_exhaustive_equals_brute_force_over_eligible(small):
    x, g, _ = small
    n_users, m = 4, 30
    score = dot_scorer(x, n_users, seed=2)
    full = (np.random.default_rng(2).standard_normal((n_users, x.shape[1])).astype(np.float32)[:, None, :]
            * x[None]).sum(-1)
    filters, eligible = _filter_case(g.num_items, n_users, seed=4)
    L = g.max_level + 1
    ref = brute_force(g.num_items, n_users, score, m, chunk=101, filters=filters)
    res = beam_search(g, n_users, score, SearchParams(ef=(10_000,) * L, rounds=(10_000,) * L, top_m=m),
                      filters=filters)
    for r in range(n_users):
        want = _eligible_top(full[r], eligible[r], m)
        assert ref.ids[r].tolist() == want
        assert res.ids[r].tolist() == want
        assert eligible[r, res.ids[r]].all()


def test_filters_return_k_even_when_the_unfiltered_top_k_is_blocked(medium):
    x, _, g, _ = medium
    n_users, k = 6, 50
    score = dot_scorer(x, n_users, seed=3)
    params = SearchParams(ef=(50, 100, 100), rounds=(1, 3, 64), top_m=k, frontier=8)
    plain = beam_search(g, n_users, score, params)
    blocked = np.unique(plain.ids.ravel())               # every user's unfiltered answer is now blocked
    filters = Filters.build(n_users, blocked=blocked_bitmap(blocked, g.num_items))
    res = beam_search(g, n_users, score, params, filters=filters)
    exact = brute_force(g.num_items, n_users, score, k, filters=filters)
    exact_plain = brute_force(g.num_items, n_users, score, k)
    assert (res.ids >= 0).all()                          # k results each
    assert not np.isin(res.ids, blocked).any()

    def coverage(found, want):
        return np.mean([np.intersect1d(found.ids[r], want.ids[r]).size / k for r in range(n_users)])
    assert coverage(res, exact) >= coverage(plain, exact_plain) - 0.05   # as good as the unfiltered walk
    assert (res.n_scored > plain.n_scored).all()         # the walk went further to find them


def test_filtered_batch_equals_one_at_a_time(medium):
    x, _, g, _ = medium
    n_users = 5
    score = dot_scorer(x, n_users, seed=5)
    filters, _ = _filter_case(g.num_items, n_users, seed=6)
    params = SearchParams(ef=(20, 40, 80), rounds=(1, 3, 64), top_m=20, frontier=4, seeds=0)
    batch = beam_search(g, n_users, score, params, filters=filters)
    for r in range(n_users):
        one = Filters.build(1, blocked=filters.blocked,
                            exclude=[filters.exclude_ids[filters.exclude_ptr[r]:filters.exclude_ptr[r + 1]]],
                            categories=[filters.allow_cats[filters.allow_ptr[r]:filters.allow_ptr[r + 1]]],
                            item_category=filters.item_category)
        single = beam_search(g, 1, lambda o, i, r=r: score(np.full_like(o, r), i), params, filters=one)
        assert single.ids[0].tolist() == batch.ids[r].tolist()
        assert single.n_scored[0] == batch.n_scored[r]
