"""The walk's scorer calls, recorded and replayed back to back, against the scorer at its best shape (8 × 2,000).

    python -m perf.scorer_rounds --run RUN --data DATA [--batch 8] [--users 192] [--repeats 5]

Records every scorer call the offline engine (`OfflineRetriever`: encode, walk and scorer in one process, the
served defaults) makes for `users` test users in batches of `batch` (the batch `retrieve` gets at concurrency 16 is
~8): each call's user state, owners and candidate ids. Then times, alternating `repeats` times, the recorded calls
back to back and calls of 8 users × 2,000 candidates (`perf.scorer_bench`'s shape), both through
`ModelRuntime.score_emb` with the candidates' embeddings gathered beforehand (as `perf.scorer_bench` does), with
`perf.scorer_bench.THREADS` runtime threads; and the recorded calls split across that many threads of a one-thread
scorer, as the walks run them (`retrieve`'s instances, the offline engine's shards). Reports the candidates/s of each
(median and spread), their ratios, and the shape of the recorded calls: users and candidates per call and how much
the attention's layout pads them.
Part of `nann perf` (perf/run.py, issue #26's acceptance: the rounds ≥ 0.8 × 8 × 2,000); writes its own section of
perf/RESULTS.md when run alone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

NAME = "Scorer on the walk's rounds"
BOUND_SHAPE = (8, 2_000)  # users x candidates per user of the reference calls (perf.scorer_bench.SHAPES)


class Call(NamedTuple):
    """One scorer call of the walk: the batch's user state, each candidate's owner (non-decreasing) and embedding."""

    state: dict[str, np.ndarray]
    owner: np.ndarray
    cand: np.ndarray

    @property
    def size(self) -> int:
        return int(self.owner.shape[0])


def record(run: Path, data: Path, users: int, batch: int) -> tuple[list[Call], float]:
    """The scorer calls of the offline engine on the first `users` test users in batches of `batch`, and the seconds
    they took there (the scorer alone: the candidates' embeddings are gathered before the clock starts)."""
    from perf.compare import TOP_M, raw_test_histories

    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    offline = OfflineRetriever(run, workers=1)  # one walk's rounds, as one `retrieve` instance makes them
    params = parse_search(offline.limits, k=TOP_M)
    runtime = offline.scorer.runtime
    calls, seconds = [], [0.0]

    def recording(state, owner, ids):
        owner, ids = np.asarray(owner, np.int64), np.asarray(ids, np.int64)
        calls.append(Call(state, owner, np.asarray(runtime.item_embeddings[ids], dtype=np.float32)))
        t0 = time.perf_counter()
        scores = runtime.score_emb(state, owner, calls[-1].cand)
        seconds[0] += time.perf_counter() - t0
        return scores

    runtime.score = recording
    histories = raw_test_histories(data, users)
    for s in range(0, len(histories), batch):
        chunk = histories[s:s + batch]
        offline.retrieve(chunk, [params] * len(chunk))
    return calls, seconds[0]


def layout(calls: list[Call]) -> dict:
    """What the recorded calls look like: users (state rows) and candidates per call, and the attention layout's
    padding: slots of [users, longest run] over candidates (`nann.model_split.segment_layout`)."""
    rows = [next(iter(c.state.values())).shape[0] for c in calls]
    longest = [int(np.bincount(c.owner).max()) for c in calls]
    candidates = sum(c.size for c in calls)
    return {"calls": len(calls), "candidates": candidates,
            "users_per_call": float(np.mean(rows)), "candidates_per_call": candidates / len(calls),
            "layout_padding": sum(r * m for r, m in zip(rows, longest)) / candidates}


def bound_calls(runtime, calls: int, seed: int = 0, encoder=None) -> list[Call]:
    """`calls` calls of BOUND_SHAPE: random users' state, random items (the scorer_bench shape); `encoder`: the
    runtime that encodes the users when `runtime` holds only the scorer."""
    rng = np.random.default_rng(seed)
    users, per_user = BOUND_SHAPE
    state = (encoder or runtime).encode([rng.integers(0, runtime.num_items, runtime.max_seq) for _ in range(users)])
    owner = np.repeat(np.arange(users, dtype=np.int64), per_user)
    return [Call(state, owner, np.asarray(runtime.item_embeddings[rng.integers(0, runtime.num_items, owner.size)],
                                          dtype=np.float32)) for _ in range(calls)]


def replay(runtime, calls: list[Call]) -> float:
    """Candidates per second of `calls` run back to back."""
    t0 = time.perf_counter()
    for c in calls:
        runtime.score_emb(c.state, c.owner, c.cand)
    return sum(c.size for c in calls) / (time.perf_counter() - t0)


def replay_parallel(runtime, calls: list[Call], workers: int) -> float:
    """Candidates per second of `calls` split across `workers` threads run at once (a one-thread session each call,
    as the offline engine's shards score)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda part: replay(runtime, part), [calls[i::workers] for i in range(workers)]))
        return sum(c.size for c in calls) / (time.perf_counter() - t0)


def measure(run: Path, data: Path, users: int = 192, batch: int = 8, repeats: int = 5) -> dict:
    """The recorded calls and the 8 × 2,000 calls, alternating `repeats` times (as many candidates each time)."""
    import os

    from perf.scorer_bench import THREADS

    from nann.runtime import ModelRuntime

    load = [round(x, 2) for x in os.getloadavg()]
    record(run, data, min(users, 4 * batch), batch)  # warm-up: first calls, page cache
    calls, in_engine_s = record(run, data, users, batch)
    runtime = ModelRuntime.load(run, threads=THREADS)
    one_thread = ModelRuntime.load(run, threads=1, parts=("scorer",))  # the walks' scorer in `retrieve` and the shards
    shape = layout(calls)
    bound = bound_calls(runtime, max(1, round(shape["candidates"] / (BOUND_SHAPE[0] * BOUND_SHAPE[1]))))
    replay(runtime, calls[:50]), replay(runtime, bound[:1]), replay(one_thread, calls[:50])  # warm-up
    rates: dict[str, list[float]] = {"rounds": [], "rounds_parallel": [], "bound": []}
    for _ in range(repeats):
        rates["bound"].append(replay(runtime, bound))
        rates["rounds"].append(replay(runtime, calls))
        rates["rounds_parallel"].append(replay_parallel(one_thread, calls, THREADS))
    out = {"loadavg_at_start": load, "users": users, "batch": batch, "threads": THREADS, "repeats": repeats,
           **shape}
    for key, r in rates.items():
        out[key] = {"candidates_per_s": statistics.median(r), "spread": [min(r), max(r)]}
    for key in ("rounds", "rounds_parallel"):
        ratios = [a / b for a, b in zip(rates[key], rates["bound"])]
        out[f"{key}_over_bound"] = {"median": statistics.median(ratios), "spread": [min(ratios), max(ratios)]}
    out["in_engine"] = {"candidates_per_s": shape["candidates"] / in_engine_s}
    out["in_engine"]["of_replay"] = out["in_engine"]["candidates_per_s"] / out["rounds"]["candidates_per_s"]
    return out


def markdown(res: dict) -> list[str]:
    users, per_user = BOUND_SHAPE
    r, b, q = res["rounds"], res["bound"], res["rounds_over_bound"]
    rp, qp = res.get("rounds_parallel"), res.get("rounds_parallel_over_bound")
    return [f"The walk's scorer calls recorded on {res['users']} test users in batches of {res['batch']} (served "
            f"defaults): {res['calls']:,} calls, {res['users_per_call']:.1f} users and {res['candidates_per_call']:.0f} "
            f"candidates a call, attention layout [users, longest run] = {res['layout_padding']:.2f}× the candidates. "
            f"Replayed back to back against calls of {users} × {per_user:,}, alternating, {res['repeats']} times, "
            f"{res['threads']} runtime threads; load average at start {res['loadavg_at_start']}.", "",
            "| calls | candidates/s, median [spread] |", "|---|---|",
            f"| the walk's rounds | {r['candidates_per_s']:,.0f} [{r['spread'][0]:,.0f}–{r['spread'][1]:,.0f}] |",
            *([f"| the walk's rounds, split across {res['threads']} threads of a one-thread scorer (as `retrieve`'s "
               f"instances and the offline engine's shards run them) | {rp['candidates_per_s']:,.0f} "
               f"[{rp['spread'][0]:,.0f}–{rp['spread'][1]:,.0f}] |"] if rp else []),
            f"| {users} × {per_user:,} | {b['candidates_per_s']:,.0f} [{b['spread'][0]:,.0f}–{b['spread'][1]:,.0f}] |",
            "", f"Rounds / {users} × {per_user:,}: **{q['median']:.2f}** [{q['spread'][0]:.2f}–{q['spread'][1]:.2f}]"
                + (f"; split across one-thread scorers: **{qp['median']:.2f}** [{qp['spread'][0]:.2f}–"
                   f"{qp['spread'][1]:.2f}]" if qp else "") + " (ratio of each alternating pair).", "",
            f"The same calls as the engine made them (the walk's kernels between them, the encoder in the same "
            f"process, timed while recording, after a warm-up): {res['in_engine']['candidates_per_s']:,.0f} "
            f"candidates/s, {res['in_engine']['of_replay']:.2f}× their replay back to back."]


def main(argv=None) -> int:
    from perf.run import machine_info
    from perf.sections import command_line, provenance, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="trained run directory with a graph")
    p.add_argument("--data", required=True, help="its prepared data (test users)")
    p.add_argument("--users", type=int, default=192, help="test users whose walks are recorded (default 192)")
    p.add_argument("--batch", type=int, default=8, help="requests searched together (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="alternating timings of each (default 5)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    res = measure(Path(args.run), Path(args.data), args.users, args.batch, args.repeats)
    report(NAME, "\n".join([provenance(command_line("perf.scorer_rounds", argv), info, cores=True), "",
                            *markdown(res)]), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
