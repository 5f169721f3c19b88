"""The calibration of a catalogue's walk (nann.calibration) and where the search defaults come from
(`GraphDir.search_defaults`: the graph's calibrated walk, the catalogue size's without one)."""
from __future__ import annotations

import numpy as np
import pytest

from graph_builder.build import build_index, export_index
from nann.calibration import (EF_LADDER, SAVING_PER_DOUBLING, SHAPES, better_walk, calibrate, calibration_users,
                              describe)
from nann.engine.graph import HnswGraph
from nann.engine.params import SCALING_BASE_ITEMS, calibrated, default_search, with_last_ef
from nann.replay import ScoreCache
from nann.run_dir import GraphDir

ITEMS, DIM, USERS = 3000, 16, 40


@pytest.fixture(scope="module")
def sparse_graph(tmp_path_factory):
    """A graph of few links (M 4) over random items, and users whose exact scores are their dot products: a walk
    with the default list of 200 misses part of their top 200, a wider one finds more."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
    out = tmp_path_factory.mktemp("sparse_graph")
    export_index(build_index(x, m=4, ef_construction=20, threads=1, seed=5, progress=False), out)
    users = rng.standard_normal((USERS, DIM)).astype(np.float32)
    histories = [rng.choice(ITEMS, 5, replace=False) for _ in range(USERS)]
    cache = ScoreCache(users @ x.T, histories, targets=np.zeros(USERS, np.int64))  # brute force: every item's score
    return HnswGraph.load(out), out, cache


def test_calibration_picks_the_smallest_ef_reaching_the_target(sparse_graph):
    graph, _, cache = sparse_graph
    base = default_search(ITEMS)
    coverage = {ef: cache.replay(graph, with_last_ef(base, ef)).summary(ITEMS)["coverage"] for ef in EF_LADDER[:8]}
    assert coverage[200] < 0.99, "the graph is too easy to test a calibration on"
    # a target between two ladder points' coverage: the second one is the smallest that reaches it
    lower, upper = next((a, b) for a, b in zip(EF_LADDER, EF_LADDER[1:4]) if coverage[b] > coverage[a])
    target = (coverage[lower] + coverage[upper]) / 2
    picked = calibrate(graph, cache, target=target, shapes=SHAPES[:1], progress=False)
    assert picked["ef"] == min(ef for ef, c in coverage.items() if c >= target) == upper
    assert picked["validation_coverage"] == pytest.approx(coverage[upper], abs=1e-5) and picked["reached"]
    assert picked["users"] == USERS and 0 < picked["scored_fraction"] < 1 and picked["rounds"] > 0
    assert calibrated(base, picked) == with_last_ef(base, upper)  # the defaults' own frontier and descent
    unreachable = calibrate(graph, cache, target=1.01, progress=False)
    assert not unreachable["reached"] and unreachable["ef"] > upper  # up the ladder until the round cap binds
    assert (unreachable["frontier"], unreachable["descent_ef"]) == (base.frontier, list(base.ef[:-1]))
    assert describe(picked).startswith(f"search defaults: last-layer ef {upper}, frontier {base.frontier}, lists "
                                       f"above layer 0 10/10/50: ") and "WARNING" not in describe(picked)
    assert f"WARNING: no walk up to ef {unreachable['ef']} reaches the target" in describe(unreachable)


def test_calibration_keeps_the_walk_of_fewest_items_and_pays_rounds_only_for_a_saving(sparse_graph):
    """Against every shape's own ladder, replayed here: the chosen walk reaches the target, and no other shape's
    smallest reaching ef scores fewer items unless it takes more rounds for too small a saving (`better_walk`)."""
    graph, _, cache = sparse_graph
    base = default_search(ITEMS)
    target = 0.7  # M 4 and the 64-round cap: frontier 4 reaches no more than 0.71 here
    picked = calibrate(graph, cache, target=target, progress=False)
    assert picked["reached"] and picked["validation_coverage"] >= target
    points = []
    for shape in SHAPES:
        record = {"frontier": shape["frontier"] or base.frontier, "descent_ef": shape["descent_ef"] or base.ef[:-1]}
        for ef in EF_LADDER:
            p = cache.replay(graph, calibrated(base, {"ef": ef, **record})).summary(ITEMS)
            if p["coverage"] >= target:
                points.append({"ef": ef, **record, **p})
                break
    assert len(points) > 1, "the graph is too easy to compare walks on"
    chosen = next(p for p in points if (p["ef"], p["frontier"], list(p["descent_ef"])) ==
                  (picked["ef"], picked["frontier"], picked["descent_ef"]))
    for p in points:
        cheaper = p["scored_fraction"] < chosen["scored_fraction"]
        assert not cheaper or (p["rounds"] > chosen["rounds"] and not better_walk(p, chosen)), p
    assert calibrated(base, picked).frontier == picked["frontier"] and len(picked["tried"]) == len(SHAPES)
    # the rule itself: fewer items at no more rounds wins; twice the rounds must buy SAVING_PER_DOUBLING of the items,
    # four times the rounds twice that; more items never win
    best = {"scored_fraction": 0.04, "rounds": 20}
    assert better_walk({"scored_fraction": 0.039, "rounds": 20}, best)
    assert better_walk({"scored_fraction": 0.039, "rounds": 10}, best)
    assert not better_walk({"scored_fraction": 0.041, "rounds": 10}, best)
    for factor, doublings in ((2, 1), (4, 2)):
        saved = 0.04 * (1 - SAVING_PER_DOUBLING * doublings)
        assert better_walk({"scored_fraction": saved * 0.99, "rounds": 20 * factor}, best)
        assert not better_walk({"scored_fraction": saved * 1.01, "rounds": 20 * factor}, best)


def test_calibration_users_follow_the_score_budget():
    assert calibration_users(2_000, 10_000) == 2_000          # capped at MOST_USERS
    assert calibration_users(50_000, 10_000) == 1_000         # 50M scores
    assert calibration_users(99_999, 10_000) == 500
    assert calibration_users(1_000_000, 10_000) == 200         # at least LEAST_USERS
    assert calibration_users(10_000, 300) == 300               # at most the validation users there are


def test_search_defaults_take_the_calibrated_walk_and_the_size_rule_without_one(sparse_graph, tmp_path):
    import shutil

    _, out, _ = sparse_graph
    graph = GraphDir(shutil.copytree(out, tmp_path / "graph"))
    assert graph.search_defaults() == default_search(ITEMS)  # no calibration (an older graph, --no-calibrate)
    graph.write_meta({**graph.read_meta(), GraphDir.CALIBRATION: {"ef": 650, "validation_coverage": 0.995}})
    assert graph.search_defaults() == with_last_ef(default_search(ITEMS), 650)  # a record before walks were calibrated
    walk = {"ef": 250, "frontier": 4, "descent_ef": [1, 1, 10], "validation_coverage": 0.995}
    graph.write_meta({**graph.read_meta(), GraphDir.CALIBRATION: walk})
    searched = graph.search_defaults()
    assert (searched.ef, searched.frontier, searched.seeds) == ((1, 1, 10, 250), 4, default_search(ITEMS).seeds)
    # at and above SCALING_BASE_ITEMS the size rule holds by construction: a calibration is not used there
    assert default_search(SCALING_BASE_ITEMS, walk) == default_search(SCALING_BASE_ITEMS)
