"""A CPU scorer's calls run whole on one thread or cut into parts side by side, whichever measures faster as it runs.

A walk's scoring round is small (~400 candidates: ~50 for each of 8 users). A runtime's own intra-op threads
parallelize it op by op: ~40 ops, each a fork and a join over a few hundred rows, which on 2 cores ran the walk's
rounds at 0.55x the candidates/s of calls of 8 x 2,000 (issue #26). `PartedScorer` runs a single-threaded runtime
instead, and a call either whole or cut into `threads` contiguous parts of equal candidates (a part may end inside a
user's run) run at once: one fork and one join per call. A part takes its users' state rows as a slice (no copy) and
its candidates' rows as they lie.

Which of the two is faster depends on the call's size and on the load, so it is measured as the scorer runs
(`Choice`): per size class (candidates, to the power of two), the seconds per candidate of each way (the median of
its last calls), and every EXPLORE-th call of a class takes the other way, so the choice follows the load. On 2
cores shared with other work (load average ~3), a part handed to a thread waited for a core: cut, the walk's rounds
cost 2.5-3x the seconds per candidate of whole calls, and calls of 8 x 2,000 1.2-2.7x less (`python -m
perf.scorer_rounds`, its table of ways).
On one thread, measured by its CPU time on the walk's recorded calls (90,896 items), the calls as they are ran at
1.14x the candidates per CPU second of 8 x 2,000 calls, cut in 2 contiguous parts 1.07x, cut in 2 parts of users
sorted by run length (the attention layout then pads 1.35x instead of 1.59x) 1.00x: the padding costs less than a
part's gathers, so the parts keep the call's order.

Scores do not depend on the way: each candidate's score is computed from its own row and its owner's state alone,
and ONNX Runtime's kernels round a row alike in any call but one: its batched MatMul rounds the attention of a layout
one slot wide (`nann.model_split.segment_layout` of a part whose users have one candidate each) differently from a
wider one, so a call that would leave such a part where the call's own layout is wider runs whole
(tests/test_scorer_parts.py checks every cut bitwise against one call). Not for torch: its GEMMs round a row
differently with the call's size (on random cuts of small calls, 3,225 of 4,833 parts differed from the whole call in
the last bits), and its ops take the GIL between kernels.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# candidates: below this a part's fixed cost (one runtime call, ~60 us, and a hand-over to a thread) outweighs the
# time it saves (~64 candidates take ~140 us on one thread)
MIN_PART = 64
EXPLORE = 32     # every 32nd call of a size class takes the way not chosen (costs <5% where parts take 2.5x)
WINDOW = 5        # a way's cost: the median of its last 5 calls of the size class
WHOLE, PARTS = 0, 1


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


class Choice:
    """WHOLE or PARTS for the calls of one size class, from their measured seconds per candidate: each way once
    first, then the faster by the median of its last WINDOW calls (one call slowed by the machine's other work moves
    nothing), and every EXPLORE-th call the other."""

    def __init__(self):
        self.samples = (deque(maxlen=WINDOW), deque(maxlen=WINDOW))  # seconds per candidate of WHOLE's and PARTS' calls
        self.calls = 0

    def cost(self, way: int) -> float | None:
        """The median seconds per candidate of the way's last calls; None before its first."""
        return statistics.median(self.samples[way]) if self.samples[way] else None

    def way(self) -> int:
        self.calls += 1
        if not all(self.samples):
            return WHOLE if not self.samples[WHOLE] else PARTS
        faster = int(self.cost(PARTS) < self.cost(WHOLE))
        return 1 - faster if self.calls % EXPLORE == 0 else faster

    def record(self, way: int, seconds_per_candidate: float) -> None:
        self.samples[way].append(seconds_per_candidate)


class PartedScorer:
    """A single-threaded scorer (`nann.scorers.base.Part`) whose calls run whole or in up to `threads` parts at once,
    whichever measures faster for calls of their size (`Choice`)."""

    def __init__(self, scorer, threads: int):
        self.scorer = scorer
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="scorer") if self.threads > 1 else None
        self.choices: dict[int, Choice] = {}  # by size class: the candidates' bit length

    def part(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray, start: int, end: int) -> np.ndarray:
        """The scores of candidate rows start..end, for the users they belong to (owner non-decreasing)."""
        first, last = int(owner[start]), int(owner[end - 1])
        return self.scorer([s[first:last + 1] for s in state], cand[start:end], owner[start:end] - first)

    def in_parts(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray,
                 parts: list[tuple[int, int]]) -> np.ndarray:
        """The call's scores, its parts run at once: the first in this thread, the others in the pool's."""
        later = [self.pool.submit(self.part, state, cand, owner, *p) for p in parts[1:]]
        return np.concatenate([self.part(state, cand, owner, *parts[0]), *(f.result() for f in later)])

    def parts_of(self, owner: np.ndarray) -> list[tuple[int, int]] | None:
        """The parts a call with these owners can be cut into; None where it runs whole: too small to cut, or a part
        would score other bits than the whole call (a layout one slot wide where the call's is wider)."""
        parts = cut(int(owner.shape[0]), self.threads)
        if len(parts) == 1 or (not all(map(wide, (owner[start:end] for start, end in parts))) and wide(owner)):
            return None
        return parts

    def __call__(self, state: list[np.ndarray], cand: np.ndarray, owner: np.ndarray) -> np.ndarray:
        parts = self.parts_of(owner)
        if parts is None:
            return self.scorer(state, cand, owner)
        candidates = int(owner.shape[0])
        choice = self.choices.setdefault(candidates.bit_length(), Choice())
        way = choice.way()
        t0 = time.perf_counter()
        scores = self.in_parts(state, cand, owner, parts) if way == PARTS else self.scorer(state, cand, owner)
        choice.record(way, (time.perf_counter() - t0) / candidates)
        return scores
