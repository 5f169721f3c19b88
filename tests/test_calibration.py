"""The calibration of a catalogue's last-layer ef (nann.calibration) and where the search defaults come from
(`GraphDir.search_defaults`: the graph's calibrated ef, the catalogue size's without one)."""
from __future__ import annotations

import numpy as np
import pytest

from graph_builder.build import build_index, export_index
from nann.calibration import EF_LADDER, calibrate, calibration_users, describe
from nann.engine.graph import HnswGraph
from nann.engine.params import SCALING_BASE_ITEMS, default_search, with_last_ef
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
    picked = calibrate(graph, cache, target=target, progress=False)
    assert picked["ef"] == min(ef for ef, c in coverage.items() if c >= target) == upper
    assert picked["validation_coverage"] == pytest.approx(coverage[upper], abs=1e-5) and picked["reached"]
    assert picked["users"] == USERS and 0 < picked["scored_fraction"] < 1 and picked["rounds"] > 0
    unreachable = calibrate(graph, cache, target=1.01, progress=False)
    assert unreachable["ef"] == EF_LADDER[-1] and not unreachable["reached"]
    assert describe(picked).startswith(f"search defaults: last-layer ef {upper}: ") and "WARNING" not in describe(picked)
    assert "WARNING: no ef up to 4096 reaches the target" in describe(unreachable)


def test_calibration_users_follow_the_score_budget():
    assert calibration_users(2_000, 10_000) == 2_000          # capped at MOST_USERS
    assert calibration_users(50_000, 10_000) == 1_000         # 50M scores
    assert calibration_users(99_999, 10_000) == 500
    assert calibration_users(1_000_000, 10_000) == 200         # at least LEAST_USERS
    assert calibration_users(10_000, 300) == 300               # at most the validation users there are


def test_search_defaults_take_the_calibrated_ef_and_the_size_rule_without_one(sparse_graph, tmp_path):
    import shutil

    _, out, _ = sparse_graph
    graph = GraphDir(shutil.copytree(out, tmp_path / "graph"))
    assert graph.search_defaults() == default_search(ITEMS)  # no calibration (an older graph, --no-calibrate)
    graph.write_meta({**graph.read_meta(), GraphDir.CALIBRATION: {"ef": 650, "validation_coverage": 0.995}})
    assert graph.search_defaults() == with_last_ef(default_search(ITEMS), 650)
    # at and above SCALING_BASE_ITEMS the size rule holds by construction: a calibration is not used there
    assert default_search(SCALING_BASE_ITEMS, calibrated_ef=650) == default_search(SCALING_BASE_ITEMS)
