"""A CPU scorer's calls cut into parts that run side by side, one single-threaded runtime call each.

A walk's scoring round is small (~400 candidates: ~50 for each of 8 users). A runtime's own intra-op threads
parallelize it op by op: ~40 ops, each a fork and a join over a few hundred rows, which on 2 cores ran the walk's
rounds at 0.55x the candidates/s of calls of 8 x 2,000 (issue #26). `PartedScorer` runs a single-threaded runtime
instead and cuts each call into `threads` contiguous parts of equal candidates (a part may end inside a user's run)
that run at once: one hand-over per part, not a fork and a join per op. A part takes its users' state rows as a slice
(no copy) and its candidates' rows as they lie. The calling thread and the pool's take the parts in turn, so a part
whose thread has not started yet (its core busy with other work) is scored by the caller instead of waited for.

Why contiguous parts: on one thread, by its CPU time, the walk's recorded calls (90,896 items) ran at 1.14x the
candidates per CPU second of 8 x 2,000 calls, so the attention layout's padding is not what makes rounds slow; cutting
users sorted by run length padded less but cost more in gathers than it saved. On 2 shared cores the rounds in parts
ran at 1.7-1.9x the candidates/s of one call on 2 intra-op threads (`python -m perf.scorer_rounds`, which compares both
side by side; docs/DESIGN.md).

Scores do not depend on the cut: each candidate's score is computed from its own row and its owner's state alone,
and ONNX Runtime's kernels round a row alike in any call but one: its batched MatMul rounds the attention of a layout
one slot wide (`nann.model_split.segment_layout` of a part whose users have one candidate each) differently from a
wider one, so a call that would leave such a part where the call's own layout is wider runs whole
(tests/test_scorer_parts.py checks every cut bitwise against one call). Not for torch: its GEMMs round a row
differently with the call's size (on random cuts of small calls, 3,225 of 4,833 parts differed from the whole call in
the last bits), and its ops take the GIL between kernels.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# candidates: below this a part's fixed cost (one runtime call, ~60 us, and a hand-over to a thread) outweighs the
# time it saves (~64 candidates take ~140 us on one thread)
MIN_PART = 64


def physical_cores() -> int:
    """The physical cores this process may run on (a runtime's default thread count; hyperthreads count once)."""
    cpus = os.sched_getaffinity(0)
    topology = Path("/sys/devices/system/cpu")
    try:
        return len({tuple((topology / f"cpu{c}/topology" / f).read_text() for f in ("physical_package_id", "core_id"))
                    for c in cpus})
    except OSError:
        return len(cpus)


def cut(candidates: int, parts: int) -> list[tuple[int, int]]:
    """The [start, end) candidate rows of each part: at most `parts` of equal size, none under MIN_PART (one part for
    a call under 2 x MIN_PART)."""
    parts = max(1, min(parts, candidates // MIN_PART))
    bounds = [candidates * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def wide(owner: np.ndarray) -> bool:
    """Whether the attention layout of a call with these owners (non-decreasing) is wider than one slot: some user has
    two candidates or more."""
    return bool((owner[1:] == owner[:-1]).any())


class PartedScorer:
    """A single-threaded scorer (`nann.scorers.base.Part`) whose calls run in up to `threads` parts at once."""

    def __init__(self, scorer, threads: int):
        self.scorer = scorer
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="scorer") if self.threads > 1 else None

    def part(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray, start: int, end: int) -> np.ndarray:
        """The scores of candidate rows start..end, for the users they belong to (owner non-decreasing)."""
        first, last = int(owner[start]), int(owner[end - 1])
        return self.scorer([s[first:last + 1] for s in state], cand[start:end], owner[start:end] - first)

    def parts_of(self, owner: np.ndarray) -> list[tuple[int, int]] | None:
        """The parts a call with these owners is cut into; None where it runs whole: too small to cut, or a part
        would score other bits than the whole call (a layout one slot wide where the call's is wider)."""
        parts = cut(int(owner.shape[0]), self.threads)
        if len(parts) == 1 or (not all(map(wide, (owner[start:end] for start, end in parts))) and wide(owner)):
            return None
        return parts

    def in_parts(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray,
                 parts: list[tuple[int, int]]) -> np.ndarray:
        """The call's scores, its parts taken in turn by this thread and the pool's: a pool thread that starts after
        the parts are all taken finds none, and this thread waits only for parts a pool thread is scoring."""
        scores: list[np.ndarray | BaseException | None] = [None] * len(parts)
        scored = [threading.Event() for _ in parts]
        taken = itertools.count()  # next() under the GIL: each part is taken once

        def take() -> None:
            while (i := next(taken)) < len(parts):
                try:
                    scores[i] = self.part(state, cand, owner, *parts[i])
                except BaseException as error:  # raised below, in the caller's thread
                    scores[i] = error
                finally:
                    scored[i].set()

        for _ in range(len(parts) - 1):
            self.pool.submit(take)
        take()
        for event in scored:
            event.wait()
        failed = [s for s in scores if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        return np.concatenate(scores)

    def __call__(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray) -> np.ndarray:
        parts = self.parts_of(owner)
        return self.scorer(state, cand, owner) if parts is None else self.in_parts(state, cand, owner, parts)
