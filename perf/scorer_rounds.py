"""The walk's scorer calls, recorded and replayed back to back, against the scorer at its best shape (8 × 2,000).

    python -m perf.scorer_rounds --run RUN --data DATA [--batch 8] [--users 192] [--repeats 5]

Records every scorer call the offline engine (`OfflineRetriever`: encode, walk and scorer in one process, the
served defaults) makes for `users` test users in batches of `batch` (the batch `retrieve` gets at concurrency 16 is
~8): each call's user state, owners and candidate ids. Then times, alternating `repeats` times, the recorded calls
back to back and calls of 8 users × 2,000 candidates (`perf.scorer_bench`'s shape), both through
`ModelRuntime.score_emb` with the candidates' embeddings gathered beforehand (as `perf.scorer_bench` does), with
`perf.scorer_bench.THREADS` threads, side by side: the scorer as it runs (each call cut into parts run at once on
single-threaded sessions: `nann.scorers.parts`) and one call at a time on intra-op threads (before). Reports the
candidates/s of each (median and spread), their ratios, and the shape of the recorded calls (users and candidates per
call and how much the attention's layout pads them).
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


def record(run: Path, data: Path, users: int, batch: int) -> list[Call]:
    """The scorer calls of the offline engine on the first `users` test users in batches of `batch`."""
    from perf.compare import TOP_M, raw_test_histories

    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    offline = OfflineRetriever(run)
    params = parse_search(offline.limits, k=TOP_M)
    runtime = offline.scorer.runtime
    score, calls = runtime.score, []

    def recording(state, owner, ids):
        owner, ids = np.asarray(owner, np.int64), np.asarray(ids, np.int64)
        calls.append(Call(state, owner, np.asarray(runtime.item_embeddings[ids], dtype=np.float32)))
        return score(state, owner, ids)

    runtime.score = recording
    histories = raw_test_histories(data, users)
    for s in range(0, len(histories), batch):
        chunk = histories[s:s + batch]
        offline.retrieve(chunk, [params] * len(chunk))
    return calls


def layout(calls: list[Call]) -> dict:
    """What the recorded calls look like: users (state rows) and candidates per call, and the attention layout's
    padding: slots of [users, longest run] over candidates (`nann.model_split.segment_layout`)."""
    rows = [next(iter(c.state.values())).shape[0] for c in calls]
    longest = [int(np.bincount(c.owner).max()) for c in calls]
    candidates = sum(c.size for c in calls)
    return {"calls": len(calls), "candidates": candidates,
            "users_per_call": float(np.mean(rows)), "candidates_per_call": candidates / len(calls),
            "layout_padding": sum(r * m for r, m in zip(rows, longest)) / candidates}


def bound_calls(runtime, calls: int, seed: int = 0) -> list[Call]:
    """`calls` calls of BOUND_SHAPE: random users' state, random items (the scorer_bench shape)."""
    rng = np.random.default_rng(seed)
    users, per_user = BOUND_SHAPE
    state = runtime.encode([rng.integers(0, runtime.num_items, runtime.max_seq) for _ in range(users)])
    owner = np.repeat(np.arange(users, dtype=np.int64), per_user)
    return [Call(state, owner, np.asarray(runtime.item_embeddings[rng.integers(0, runtime.num_items, owner.size)],
                                          dtype=np.float32)) for _ in range(calls)]


def replay(runtime, calls: list[Call]) -> float:
    """Candidates per second of `calls` run back to back."""
    t0 = time.perf_counter()
    for c in calls:
        runtime.score_emb(c.state, c.owner, c.cand)
    return sum(c.size for c in calls) / (time.perf_counter() - t0)


SCORERS = {"parts": True, "one call": False}  # the scorer as `ModelRuntime` loads it, and before nann.scorers.parts


def rate(r: list[float]) -> dict:
    return {"candidates_per_s": statistics.median(r), "spread": [min(r), max(r)]}


def ratio(a: list[float], b: list[float]) -> dict:
    """Median and spread of the ratios of alternating pairs."""
    q = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(q), "spread": [min(q), max(q)]}


def measure(run: Path, data: Path, users: int = 192, batch: int = 8, repeats: int = 5) -> dict:
    """The recorded calls and the 8 × 2,000 calls (as many candidates each time), through the scorer as it runs
    (`SCORERS`: each call in parts side by side) and one call at a time on the runtime's intra-op threads (before),
    alternating `repeats` times. The top-level rounds / bound are the scorer's as it runs; "one_call" holds before's."""
    import os

    from perf.scorer_bench import THREADS

    from nann.runtime import ModelRuntime

    load = [round(x, 2) for x in os.getloadavg()]
    calls = record(run, data, users, batch)
    runtimes = {name: ModelRuntime.load(run, threads=THREADS, parted=parted) for name, parted in SCORERS.items()}
    shape = layout(calls)
    bound = bound_calls(runtimes["parts"], max(1, round(shape["candidates"] / (BOUND_SHAPE[0] * BOUND_SHAPE[1]))))
    rates: dict[tuple[str, str], list[float]] = {}
    for runtime in runtimes.values():
        replay(runtime, calls[:50]), replay(runtime, bound[:1])  # warm-up
    for _ in range(repeats):
        for name, runtime in runtimes.items():
            rates.setdefault((name, "bound"), []).append(replay(runtime, bound))
            rates.setdefault((name, "rounds"), []).append(replay(runtime, calls))
    out = {"loadavg_at_start": load, "users": users, "batch": batch, "threads": THREADS, "repeats": repeats,
           **shape, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    for name in SCORERS:
        at = out if name == "parts" else out.setdefault("one_call", {})
        at.update({key: rate(rates[name, key]) for key in ("rounds", "bound")},
                  rounds_over_bound=ratio(rates[name, "rounds"], rates[name, "bound"]))
    out["rounds_over_one_call_bound"] = ratio(rates["parts", "rounds"], rates["one call", "bound"])
    return out


def markdown(res: dict) -> list[str]:
    users, per_user = BOUND_SHAPE

    def spread(x: dict, fmt: str = ",.0f") -> str:
        """A rate (candidates/s) or a ratio (fmt ".2f"), median [spread]."""
        return f"{x.get('candidates_per_s', x.get('median')):{fmt}} [{x['spread'][0]:{fmt}}–{x['spread'][1]:{fmt}}]"

    one = res["one_call"]
    return [f"The walk's scorer calls recorded on {res['users']} test users in batches of {res['batch']} (served "
            f"defaults): {res['calls']:,} calls, {res['users_per_call']:.1f} users and {res['candidates_per_call']:.0f} "
            f"candidates a call, attention layout [users, longest run] = {res['layout_padding']:.2f}× the candidates. "
            f"Replayed back to back against calls of {users} × {per_user:,}, alternating, {res['repeats']} times, "
            f"{res['threads']} threads: the scorer as it runs (each call cut into {res['threads']} parts run side by "
            f"side, one single-threaded call each: nann/scorers/parts.py) and one call at a time on "
            f"{res['threads']} intra-op threads (before); load average at start {res['loadavg_at_start']}, at end "
            f"{res['loadavg_at_end']}.", "",
            f"| scorer | the walk's rounds, candidates/s | {users} × {per_user:,}, candidates/s | rounds / "
            f"{users} × {per_user:,} |", "|---|---|---|---|",
            f"| parts side by side | {spread(res['rounds'])} | {spread(res['bound'])} | "
            f"**{spread(res['rounds_over_bound'], '.2f')}** |",
            f"| one call, intra-op threads | {spread(one['rounds'])} | {spread(one['bound'])} | "
            f"{spread(one['rounds_over_bound'], '.2f')} |",
            "", f"Rounds in parts / one call's {users} × {per_user:,}: "
                f"{spread(res['rounds_over_one_call_bound'], '.2f')} (medians and spreads of each alternating pair)."]


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
