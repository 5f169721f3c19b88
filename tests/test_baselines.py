"""nann.baselines: popularity per user, bootstrap intervals and the verdict against baselines."""
from __future__ import annotations

import numpy as np

from nann.baselines import Comparison, interval, popularity_hits, report, verdict


def test_popularity_hits_plain_and_unseen():
    counts = np.array([50, 40, 30, 20, 10])          # popularity order: 0, 1, 2, 3, 4
    histories = [np.array([0]), np.array([3]), np.array([], dtype=np.int64)]
    targets = np.array([2, 2, 4])
    assert popularity_hits(counts, histories, targets, top_m=2).tolist() == [False, False, False]
    # unseen: user 0 has seen item 0, so its list is 1, 2 and holds its target; user 1's list stays 0, 1
    assert popularity_hits(counts, histories, targets, top_m=2, unseen=True).tolist() == [True, False, False]
    assert popularity_hits(counts, histories, targets, top_m=5).tolist() == [True, True, True]


def test_interval_holds_the_mean_and_shrinks_with_users():
    rng = np.random.default_rng(0)
    small, large = rng.random(100) < 0.3, rng.random(10_000) < 0.3
    m, lo, hi = interval(small)
    assert lo < m < hi and abs(m - small.mean()) < 1e-12
    _, lo2, hi2 = interval(large)
    assert (hi2 - lo2) < (hi - lo) / 5
    assert interval(np.ones(50, dtype=bool))[1:] == (1.0, 1.0)


def test_verdict_says_win_loss_and_noise():
    rng = np.random.default_rng(1)
    model = rng.random(2000) < 0.5
    worse = model & (rng.random(2000) < 0.5)          # a subset of the model's hits: clearly lower
    better = model | (rng.random(2000) < 0.5)         # a superset: clearly higher
    same = model.copy()
    same[:2] = ~same[:2]                              # within the noise
    lines = verdict("attention", model, [Comparison("two-tower", worse), Comparison("popularity", better),
                                         Comparison("a twin", same)])
    assert lines[0].startswith("attention beats two-tower")
    assert lines[1].startswith("attention does NOT beat popularity: it is worse")
    assert lines[2].startswith("attention does NOT beat a twin beyond the noise of 2000 users")


def test_verdict_wants_a_margin_over_popularity():
    model = np.zeros(1000, dtype=bool)
    model[:120] = True
    popular = np.zeros(1000, dtype=bool)
    popular[:100] = True                              # the model wins on every user popularity wins on, but 1.2x
    assert "short of 1.3x" in verdict("m", model, [Comparison("popularity", popular)])[0]
    assert verdict("m", model, [Comparison("two-tower", popular)])[0].startswith("m beats two-tower")


def test_report_lists_every_row_with_its_interval():
    hits = np.array([True, False] * 50)
    text = report("attention", hits, [Comparison("popularity", np.zeros(100, dtype=bool))], top_m=200)
    assert "recall-all@200 on 100 users" in text
    assert "attention" in text and "0.5000 [" in text and "popularity" in text and "0.0000 [0.0000, 0.0000]" in text
