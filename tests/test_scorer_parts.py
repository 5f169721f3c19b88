"""nann.scorers.parts: a call cut into parts scores every candidate bitwise as one plain call does."""
from __future__ import annotations

import numpy as np
import pytest

from nann.model import ARCHS
from nann.runtime import ModelRuntime
from nann.scorers import parts
from nann.scorers.parts import PartedScorer, cut

try:
    from tests.test_trainer_export import make_run
except ImportError:
    from test_trainer_export import make_run


@pytest.fixture(scope="module", params=ARCHS)
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"parts_{request.param}")
    make_run(d, request.param, n_items=200, max_seq=10)
    return d


# runs per user (0: a user without candidates): users without candidates first, inside and last; one user; one
# candidate; runs of unequal length, so that cuts fall inside runs
RUNS = [[0, 3, 0, 7, 1, 0], [40], [1], [0, 0, 1], [5, 50, 2, 30, 11, 0, 9, 1], [1, 1, 0, 1], [1, 1, 2, 1, 1]]


def test_every_cut_scores_as_one_call(run, monkeypatch):
    monkeypatch.setattr(parts, "MIN_PART", 1)  # cut small calls as the walk's large ones are cut
    runtime = ModelRuntime.load(run, "onnxruntime", threads=1)
    plain = runtime._part("scorer")
    rng = np.random.default_rng(0)
    for runs in RUNS:
        state = runtime.encode([rng.integers(0, 200, rng.integers(0, 12)) for _ in runs])
        st = [state[n] for n in runtime.state_names]
        owner = np.repeat(np.arange(len(runs)), runs)
        cand = np.asarray(runtime.item_embeddings[rng.integers(0, 200, owner.size)], dtype=np.float32)
        want = plain(st, cand, owner)
        for threads in range(1, owner.size + 2):
            scorer = PartedScorer(plain, threads)
            cuts = scorer.parts_of(owner)
            got = plain(st, cand, owner) if cuts is None else scorer.in_parts(st, cand, owner, cuts)
            assert got.dtype == np.float32 and np.array_equal(got, want), (runs, threads)
            assert np.array_equal(scorer(st, cand, owner), want), (runs, threads)


def test_a_part_that_fails_raises_in_the_caller_and_nothing_waits(monkeypatch):
    monkeypatch.setattr(parts, "MIN_PART", 1)

    def failing(state, cand, owner):
        if cand[0, 0] == 1.0:  # the second part's first row
            raise ValueError("scorer failed")
        return np.zeros(len(owner), np.float32)

    cand = np.zeros((4, 2), np.float32)
    cand[2, 0] = 1.0
    with pytest.raises(ValueError, match="scorer failed"):
        PartedScorer(failing, 2)([np.zeros((2, 3), np.float32)], cand, np.array([0, 0, 1, 1]))


def test_a_call_is_cut_only_where_every_part_scores_as_the_call(monkeypatch):
    monkeypatch.setattr(parts, "MIN_PART", 1)
    scorer = PartedScorer(None, 2)
    assert scorer.parts_of(np.array([0, 0, 1, 1])) == [(0, 2), (2, 4)]
    assert scorer.parts_of(np.array([0, 0, 1, 2])) is None   # the second part's layout would be one slot wide
    assert scorer.parts_of(np.array([0, 1, 2, 3])) == [(0, 2), (2, 4)]  # as the call's
    assert scorer.parts_of(np.array([0])) is None and PartedScorer(None, 1).parts_of(np.array([0, 0])) is None


def test_cut_parts_are_equal_contiguous_and_not_too_small():
    assert cut(0, 4) == [(0, 0)] and cut(1, 4) == [(0, 1)]
    assert cut(2 * parts.MIN_PART - 1, 8) == [(0, 2 * parts.MIN_PART - 1)]
    for candidates, threads in ((400, 2), (401, 3), (16_000, 2), (5 * parts.MIN_PART, 8)):
        got = cut(candidates, threads)
        assert got[0][0] == 0 and got[-1][1] == candidates and all(a[1] == b[0] for a, b in zip(got, got[1:]))
        sizes = [end - start for start, end in got]
        assert len(got) <= threads and max(sizes) - min(sizes) <= 1 and min(sizes) >= parts.MIN_PART


@pytest.mark.parametrize("backend, threads, parted, at_once", [("onnxruntime", 2, True, 2), ("onnxruntime", 1, True, 1),
                                                               ("onnxruntime", 2, False, 1), ("torch", 2, True, 1)])
def test_a_runtime_with_threads_scores_in_parts_where_it_can(run, backend, threads, parted, at_once):
    """ONNX Runtime with more than one thread scores in parts (torch does not: `nann.scorers.parts`)."""
    runtime = ModelRuntime.load(run, backend, threads=threads, parted=parted)
    scorer = runtime._part("scorer")
    assert (scorer.threads if isinstance(scorer, PartedScorer) else 1) == at_once
    rng = np.random.default_rng(1)
    state = runtime.encode([rng.integers(0, 200, 8) for _ in range(3)])
    owner, ids = np.sort(rng.integers(0, 3, 3 * parts.MIN_PART)), rng.integers(0, 200, 3 * parts.MIN_PART)
    one = ModelRuntime.load(run, backend, threads=1)
    assert np.array_equal(runtime.score(state, owner, ids), one.score(state, owner, ids))
