"""Latency of several ways of answering the same queries, measured side by side (the served path against the offline
engine: `nann demo`, `nann perf`)."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Mapping, Sequence

# Queries run in alternating blocks of this many, each block after SETTLE_S of quiet and one untimed query: after a
# call ONNX Runtime's thread pool (the offline engine's, in the measuring process) spins for more work, one core busy
# for 40-60 ms on a 2-core host (process CPU time in 10 ms slices after a call), so a served query started at once
# shared the cores with it; within a block the queries run back to back, as a client's at concurrency 1 do. Which path
# goes first alternates from block to block, so that neither always follows the other.
LATENCY_BLOCK = 10
SETTLE_S = 0.1
WARM_UP = 3  # queries each path answers before any is timed (Numba, runtime sessions, gRPC channel, page cache)


def alternating_latency(paths: Mapping[str, Callable[[Any], Any]], queries: Sequence[Any], block: int = LATENCY_BLOCK,
                        around: Mapping[str, Callable[[], ContextManager]] | None = None,
                        ) -> dict[str, tuple[list[float], list[Any]]]:
    """Each path's (seconds, answers), one of each per query in `queries`' order: every path answers every query.
    `around[name]()`: a context entered around each of that path's timed blocks and nothing else (e.g. reading a
    server's statistics before and after the timed queries only)."""
    around = around or {}
    for answer in paths.values():
        for query in queries[:WARM_UP]:
            answer(query)
    measured = {name: ([], []) for name in paths}
    for i, start in enumerate(range(0, len(queries), block)):
        for name in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
            answer, (seconds, answers) = paths[name], measured[name]
            time.sleep(SETTLE_S)
            answer(queries[start])
            with around.get(name, nullcontext)():
                for query in queries[start:start + block]:
                    t0 = time.perf_counter()
                    answers.append(answer(query))
                    seconds.append(time.perf_counter() - t0)
    return measured
