"""Side-by-side retrieval benchmark: same data, same test users, same machine, one run.

For one item count |V| it synthesises and prepares data and trains three models through the project's CLI
(`nann_cli.main.main`; steps whose outputs exist are skipped, so a rerun only measures):
  (a) `nann`      — the attention model with FGSM (NANN),
  (b) `sl2g`      — the attention model without FGSM (`--fgsm-eps 0`),
  (c) `two_tower` — `--arch two-tower` (user vector · item vector),
builds the HNSW graphs of (a) and (b) (`nann graph`) and measures on the same test users:

  brute force      the NANN model's scorer over all items (the engine's `brute_force`, batched in the grid)
  NANN beam        beam retrieval, FGSM model, at the served defaults ({ef} = {100,200,400}, {T} = {1,3,10};
                   the ratios use this row), at the paper's {T} = {1,1,3}, and with frontier 32 (at most 32
                   entries expanded per round) and {T} = {1,3,40}
  NANN-HNSW        HNSW retrieval (ef0 = 400) with the FGSM model
  SL2G             HNSW retrieval (ef0 = 400) with the no-FGSM model
  two-tower brute  exact inner-product top-200 of the two-tower model
  two-tower+HNSW   hnswlib `space="ip"` over the two-tower item vectors, query = its user vector, ef 400
  two-tower+L2     the same with the standard MIPS -> L2 transform (hnswlib `space="l2"`, one extra coordinate)

Per method: recall@200 of the held-out target, coverage@200 vs the brute force of the method's own model,
overlap with the NANN model's brute-force top-200, items scored per query and offline latency per query
(one user at a time: encode + search; median and p99). Quality is measured on `users` test users; brute-force
latency on a subset (it costs |V| scores per query).
"""
from __future__ import annotations

import functools
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nann.engine.params import DEFAULT_SEARCH, PAPER_SEARCH
from nann.run_dir import RunDir
from nann_cli.steps import run_step

TOP_M = 200
PAPER_ROUNDS = PAPER_SEARCH.rounds
FRONTIER, FRONTIER_ROUNDS = 32, (1, 3, 40)


def _rounds(rounds: tuple[int, ...]) -> str:
    return "{" + ",".join(map(str, rounds)) + "}"


BEAM_SERVED = "NANN beam (served defaults)"
BEAM_PAPER = f"NANN beam (paper's T = {_rounds(PAPER_ROUNDS)})"
BEAM_FRONTIER = f"NANN beam (frontier {FRONTIER}, T = {_rounds(FRONTIER_ROUNDS)})"
HNSW_EF0 = 400
TT_EF = 400
TT_M, TT_EFC = 32, 200


@dataclass
class Scale:
    """Pipeline and measurement sizes for one |V|."""
    items: int
    users: int                      # synthetic users
    categories: int
    test_users: int
    val_users: int
    train: list[str] = field(default_factory=list)   # extra `nann train` arguments shared by the three models
    graph: list[str] = field(default_factory=list)   # extra `nann graph` arguments
    eval_users: int = 500           # test users for quality and per-query latency
    brute_latency_users: int = 30   # test users for the brute-force latency
    hnsw_latency_users: int = 40    # test users for the HNSW-retrieval latency (one scorer call per expansion)
    served_users: int = 100         # test users for served vs offline latency (run.py)


def scale_for(items: int, quick: bool) -> Scale:
    if quick:
        return Scale(items=items, users=max(400, items // 6), categories=40, test_users=60, val_users=30,
                     train=["--epochs", "1", "--negatives", "10", "--max-samples", "6000", "--batch-size", "256",
                            "--eval-users", "20"],
                     graph=["--m", "16"], eval_users=60, brute_latency_users=8, hnsw_latency_users=8, served_users=20)
    if items >= 500_000:   # 1M: sparse embedding updates make ~3k samples/s on 2 cores; lr 1e-3 for the longer run;
        # 100 users: brute force over 1M items, the reference for coverage, costs seconds per user and model
        return Scale(items=items, users=max(20_000, items // 8), categories=2000, test_users=300, val_users=300,
                     train=["--epochs", "1", "--negatives", "20", "--max-samples", "1000000", "--batch-size", "256",
                            "--lr", "1e-3", "--eval-users", "50"],
                     eval_users=100, brute_latency_users=10, hnsw_latency_users=20, served_users=50)
    return Scale(items=items, users=20_000, categories=500, test_users=1000, val_users=500,
                 train=["--epochs", "1", "--negatives", "20", "--max-samples", "200000", "--batch-size", "256",
                        "--eval-users", "100"],
                 eval_users=300, brute_latency_users=20, hnsw_latency_users=30, served_users=150)


MODELS = {"nann": [], "sl2g": ["--fgsm-eps", "0"], "two_tower": ["--arch", "two-tower", "--fgsm-eps", "0"]}
GRAPHS = ("nann", "sl2g")


def _cli(title: str, argv: list[str], done: Path, log: list) -> None:
    seconds = run_step(title, argv, done)
    if seconds is not None:
        log.append({"step": title, "argv": argv, "seconds": round(seconds, 1)})


def prepare(work: Path, sc: Scale) -> tuple[dict, list]:
    """Data, three trained runs and two graphs under `work` (skipping what exists); their paths and the step log."""
    work = Path(work)
    raw, data = work / "raw", work / "data"
    log: list = []
    _cli("synth", ["data", "synth", "--out", str(raw), "--users", str(sc.users), "--items", str(sc.items),
                   "--categories", str(sc.categories), "--seed", "0"], raw / "UserBehavior.csv", log)
    _cli("prepare", ["data", "prepare", "--csv", str(raw / "UserBehavior.csv"), "--out", str(data),  # the paper's split
                     "--split", "users", "--test-users", str(sc.test_users), "--val-users", str(sc.val_users)],
         data / "meta.json", log)
    runs = {}
    for name, extra in MODELS.items():
        run = work / f"run_{name}"
        _cli(f"train {name}", ["train", "--data", str(data), "--run", str(run), *sc.train, *extra],
             RunDir(run).item_embeddings_file, log)
        runs[name] = run
    for name in GRAPHS:
        _cli(f"graph {name}", ["graph", "--run", str(runs[name]), *sc.graph], RunDir(runs[name]).graph.meta_file, log)
    return {"data": data, **runs}, log


# ------------------------------------------------------------------------------------------- measurement
def _lat(seconds: list[float]) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"latency_ms_median": float(np.median(ms)), "latency_ms_p99": float(np.percentile(ms, 99)),
            "latency_ms_mean": float(ms.mean()), "latency_queries": int(ms.size)}


def per_query(ev, search, n_users: int, top_m: int = TOP_M):
    """Run `search(score_fn, history) -> SearchResult` for one user at a time (encode + search timed together;
    the history is the user's dense ids, the source of beam seeds)."""
    ids = np.full((n_users, top_m), -1, dtype=np.int64)
    scored = np.zeros(n_users, dtype=np.int64)
    seconds = []
    for i in range(n_users):
        t0 = time.perf_counter()
        history = ev.test.history(i)
        state = ev.runtime.encode([history])
        res = search(lambda owner, cand, state=state: ev.runtime.score(state, owner, cand), history)
        seconds.append(time.perf_counter() - t0)
        k = min(top_m, res.ids.shape[1])
        ids[i, :k] = res.ids[0, :k]
        scored[i] = res.n_scored[0]
    return ids, scored, seconds


def overlap(found: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(f[f >= 0], r[r >= 0]).size / max(1, (r >= 0).sum())
                          for f, r in zip(found, ref)]))


def two_tower(run: Path, data: Path, n_users: int, nann_exact: np.ndarray, targets: np.ndarray) -> list[dict]:
    """Two-tower exact inner product and hnswlib ip search, per query (encode + search)."""
    import hnswlib

    from nann.data.prepared import PreparedData
    from nann.evaluate import metrics
    from nann.runtime import ModelRuntime

    rt = ModelRuntime.load(run)
    if rt.state_names != ["user_vec"]:
        raise RuntimeError(f"{run} is not a two-tower run (state {rt.state_names})")
    test = PreparedData.load(str(data)).test
    vecs = np.ascontiguousarray(RunDir(run).item_embeddings(mmap=False), dtype=np.float32)
    n, d = vecs.shape
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, M=TT_M, ef_construction=TT_EFC, random_seed=100)
    index.add_items(vecs, np.arange(n))
    build_s = time.perf_counter() - t0
    index.set_ef(TT_EF)
    index.set_num_threads(1)
    # the usual fix when an ip graph struggles (items sharing a common direction, queries pointing away):
    # MIPS -> L2 by one extra coordinate sqrt(max|x|^2 - |x|^2); L2-nearest to (u, 0) = largest u·x
    norms2 = (vecs.astype(np.float64) ** 2).sum(1)
    aug = np.hstack([vecs, np.sqrt(np.maximum(norms2.max() - norms2, 0.0))[:, None].astype(np.float32)])
    t0 = time.perf_counter()
    index_l2 = hnswlib.Index(space="l2", dim=d + 1)
    index_l2.init_index(max_elements=n, M=TT_M, ef_construction=TT_EFC, random_seed=100)
    index_l2.add_items(aug, np.arange(n))
    build_l2_s = time.perf_counter() - t0
    index_l2.set_ef(TT_EF)
    index_l2.set_num_threads(1)
    approx_l2 = np.full((n_users, TOP_M), -1, dtype=np.int64)
    t_l2 = []
    exact = np.full((n_users, TOP_M), -1, dtype=np.int64)
    approx = np.full((n_users, TOP_M), -1, dtype=np.int64)
    t_exact, t_hnsw = [], []
    for i in range(n_users):
        t0 = time.perf_counter()
        u = rt.encode([test.history(i)])["user_vec"][0]
        s = vecs @ u
        top = np.argpartition(-s, TOP_M - 1)[:TOP_M]
        exact[i] = top[np.argsort(-s[top], kind="stable")]
        t_exact.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        u = rt.encode([test.history(i)])["user_vec"]
        labels, _ = index.knn_query(u, k=TOP_M)
        approx[i] = labels[0]
        t_hnsw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        u = rt.encode([test.history(i)])["user_vec"]
        labels, _ = index_l2.knn_query(np.hstack([u, np.zeros((1, 1), np.float32)]), k=TOP_M)
        approx_l2[i] = labels[0]
        t_l2.append(time.perf_counter() - t0)
    rows = []
    for name, found, secs, scored in (("two-tower brute (exact IP)", exact, t_exact, n),
                                      (f"two-tower + hnswlib ip (ef {TT_EF})", approx, t_hnsw, None),
                                      (f"two-tower + hnswlib l2, MIPS transform (ef {TT_EF})", approx_l2, t_l2, None)):
        m = metrics(found, exact, targets[:n_users], np.full(n_users, scored or 0), n)
        rows.append({"method": name, "model": "two_tower", "recall": m["recall_retrieval"],
                     "recall_all": m["recall_all"], "coverage_own": m["coverage"],
                     "overlap_nann_brute": overlap(found, nann_exact),
                     "items_scored": float(scored) if scored else None,
                     "scored_fraction": float(scored) / n if scored else None,
                     **_lat(secs)})
    rows[1]["index_build_s"] = round(build_s, 1)
    rows[1]["index"] = {"space": "ip", "M": TT_M, "ef_construction": TT_EFC, "ef": TT_EF}
    rows[2]["index_build_s"] = round(build_l2_s, 1)
    rows[2]["index"] = {"space": "l2 (MIPS transform)", "M": TT_M, "ef_construction": TT_EFC, "ef": TT_EF}
    return rows


def compare(work: Path, sc: Scale) -> dict:
    """Prepare (or reuse) everything for |V| = sc.items and measure all methods; returns rows + ratios."""
    from nann.engine.search import beam_search, brute_force, hnsw_search
    from nann.evaluate import Evaluator, MethodSpec, metrics

    paths, steps = prepare(work, sc)
    data = paths["data"]
    ev = Evaluator(paths["nann"], data, users=sc.eval_users, batch=32)
    ev_sl2g = Evaluator(paths["sl2g"], data, users=sc.eval_users, batch=32)
    n_users, n_items = len(ev.test), ev.runtime.num_items
    targets = ev.test.targets
    t0 = time.perf_counter()
    exact = ev.brute_top(TOP_M)                       # batched brute force (the reference), NANN model
    brute_batched_s = (time.perf_counter() - t0) / n_users
    exact_sl2g = ev_sl2g.brute_top(TOP_M)
    rows = []

    def add(method, model, found, ref, scored, secs, ev_):  # quality on all users, latency on len(secs)
        m = metrics(found, ref, targets, scored, n_items)
        rows.append({"method": method, "model": model, "recall": m["recall_retrieval"], "recall_all": m["recall_all"],
                     "recall_delta": m["recall_delta"], "coverage_own": m["coverage"],
                     "overlap_nann_brute": overlap(found, exact), "items_scored": m["items_scored"],
                     "scored_fraction": m["scored_fraction"], **_lat(secs)})
        return rows[-1]

    def lat(search, ev_, n):  # per-query latency (one user at a time) on the first n users
        return per_query(ev_, search, min(n, n_users))[2]

    r = add("brute force (NANN model)", "nann", exact, exact, np.full(n_users, n_items),
            lat(lambda f, h: brute_force(n_items, 1, f, TOP_M, grid=ev.grid), ev, sc.brute_latency_users), ev)
    r["batched_seconds_per_query"] = brute_batched_s
    # quality: the engine batched (its results do not depend on batching); latency: one user at a time
    for name, params in ((BEAM_SERVED, replace(RunDir(paths["nann"]).search_defaults(), top_m=TOP_M)),
                         (BEAM_PAPER, replace(PAPER_SEARCH, top_m=TOP_M)),
                         (BEAM_FRONTIER,
                          replace(PAPER_SEARCH, rounds=FRONTIER_ROUNDS, frontier=FRONTIER, top_m=TOP_M))):
        found, scored, _ = ev.search(MethodSpec("beam", params))
        add(name, "nann", found, exact, scored,
            lat(lambda f, h: beam_search(ev.graph, 1, f, params, ev.grid, histories=[h]), ev,
                sc.eval_users), ev)
    hnsw = MethodSpec("hnsw", replace(DEFAULT_SEARCH, ef=(HNSW_EF0,), rounds=(1,), top_m=TOP_M))
    found, scored, _ = ev.search(hnsw)
    add(f"NANN-HNSW (ef0 {HNSW_EF0})", "nann", found, exact, scored,
        lat(lambda f, h: hnsw_search(ev.graph, 1, f, HNSW_EF0, TOP_M, ev.grid), ev, sc.hnsw_latency_users), ev)
    found, scored, _ = ev_sl2g.search(hnsw)
    add(f"SL2G: HNSW (ef0 {HNSW_EF0}), no-FGSM model", "sl2g", found, exact_sl2g, scored,
        lat(lambda f, h: hnsw_search(ev_sl2g.graph, 1, f, HNSW_EF0, TOP_M, ev_sl2g.grid), ev_sl2g,
            sc.hnsw_latency_users), ev_sl2g)
    rows.extend(two_tower(paths["two_tower"], data, n_users, exact, targets))

    by = {r["method"]: r for r in rows}
    brute, beam = by["brute force (NANN model)"], by[BEAM_SERVED]
    tt = next(r for r in rows if r["method"].startswith("two-tower + hnswlib ip"))
    tt_l2 = next(r for r in rows if r["method"].startswith("two-tower + hnswlib l2"))
    tt_brute = next(r for r in rows if r["method"].startswith("two-tower brute"))

    def gain(a, b):  # None when the two-tower recall is 0 (no ratio exists)
        return a / b if b > 0 else None

    ratios = {
        "nann_speedup_over_brute_median": brute["latency_ms_median"] / beam["latency_ms_median"],
        "nann_scored_ratio_brute_over_beam": n_items / beam["items_scored"],
        "nann_coverage": beam["coverage_own"],
        "nann_recall_over_two_tower_hnsw": gain(beam["recall"], tt["recall"]),
        "nann_recall_minus_two_tower_hnsw_pp": (beam["recall"] - tt["recall"]) * 100,
        "nann_recall_over_two_tower_l2": gain(beam["recall"], tt_l2["recall"]),
        "nann_recall_minus_two_tower_l2_pp": (beam["recall"] - tt_l2["recall"]) * 100,
        "nann_recall_over_two_tower_brute": gain(beam["recall"], tt_brute["recall"]),
        "nann_recall_minus_two_tower_brute_pp": (beam["recall"] - tt_brute["recall"]) * 100,
    }
    return {"items": n_items, "items_requested": sc.items, "users": n_users, "scale": asdict(sc),
            "steps": steps, "paths": {k: str(v) for k, v in paths.items()}, "methods": rows, "ratios": ratios}


def raw_test_histories(data: Path, n_users: int) -> list[np.ndarray]:
    """The first n_users test users' histories in raw ids, as a client sends them."""
    from nann.data.prepared import PreparedData

    prepared = PreparedData.load(str(data))
    test = prepared.test
    return [prepared.vocab.dense_to_raw(test.history(i)) for i in range(min(n_users, len(test)))]


def served_vs_offline(run: Path, data: Path, server_url: str, n_users: int, k: int = TOP_M) -> dict:
    """Served latency at concurrency 1 (NannClient) vs the offline engine (OfflineRetriever, the same services
    the Triton models run), same users, in alternating blocks (`nann.latency.alternating_latency`); also checks the
    answers agree. `served_over_offline_paired`: the median over users of each user's served / offline time (the same
    walk)."""
    from nann_client import NannClient

    from nann.latency import alternating_latency
    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    histories = raw_test_histories(data, n_users)
    offline = OfflineRetriever(run)
    params = parse_search(offline.limits, k=k)
    with NannClient(server_url, timeout=60) as client:
        measured = alternating_latency({"served": lambda h: client.retrieve(h, k=k).item_ids,
                                        "offline": lambda h: offline.retrieve([h], [params])[0].item_ids}, histories)
    seconds = {name: times for name, (times, _) in measured.items()}
    answers = {name: got for name, (_, got) in measured.items()}
    same = [len(np.intersect1d(o, v)) / max(1, len(o)) for o, v in zip(answers["offline"], answers["served"])]
    s, o = _lat(seconds["served"]), _lat(seconds["offline"])
    return {"users": len(histories), "k": k, "served": s, "offline": o,
            "served_over_offline_median": s["latency_ms_median"] / o["latency_ms_median"],
            "served_over_offline_p99": s["latency_ms_p99"] / o["latency_ms_p99"],
            "served_over_offline_paired": statistics.median(a / b for a, b in zip(seconds["served"], seconds["offline"])),
            "answer_overlap": float(statistics.mean(same))}


def offline_throughput(run: Path, data: Path, n_users: int, batches: tuple[int, ...], k: int = TOP_M,
                       repeats: int = 3, one_walk_batch: int | None = None) -> list[dict]:
    """The offline engine's throughput (OfflineRetriever: encode, walk and scorer in this process, no server) on the
    same test users in batches of each size: what the walk reaches with its round-sized scorer calls before any
    serving cost, the reference for the served throughput. A batch of several users runs as the engine's parallel
    shards (`OfflineRetriever.workers`, one scorer thread each); `one_walk_batch`: also that batch walked as one
    (workers=1, the scorer's full thread pool), the last row, marked "one_walk".

    Each pass over the users alternates, `repeats` times, with calls of 8 × 2,000 candidates through the scorer with
    its full thread pool (`perf.scorer_rounds.BOUND_SHAPE`, as many candidates as the pass scored): `of_bound` is the
    pass's req/s over the bound's (its candidates/s ÷ the pass's candidates per query), the median of the alternating
    pairs, so that a machine whose speed drifts between benchmarks does not move the ratio. `of_shard_bound`: the same
    against those calls split across as many threads as the pass had shards, through the shards' one-thread scorer."""
    from perf.scorer_rounds import BOUND_SHAPE, bound_calls, replay, replay_parallel

    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    histories = raw_test_histories(data, n_users)
    sharded = OfflineRetriever(run)
    params = parse_search(sharded.limits, k=k)
    runtime, shard_runtime = sharded.scorer.runtime, (sharded.shard_scorer or sharded.scorer).runtime
    scored = ScorerCount()
    for rt in {id(runtime): runtime, id(shard_runtime): shard_runtime}.values():
        scored.wrap(rt)

    @functools.cache
    def bound(calls: int) -> list:  # the same calls for every pass of this size (bound_calls is seeded)
        return bound_calls(runtime, calls, encoder=sharded.encoder.runtime)

    replay(runtime, bound(1))  # warm-up

    def measure(offline, batch: int) -> dict:
        offline.retrieve(histories[:batch], [params] * min(len(histories), batch))  # warm-up
        shards = min(batch, offline.workers)
        passes = []
        for _ in range(repeats):
            scored.reset()
            t0 = time.perf_counter()
            for s in range(0, len(histories), batch):
                chunk = histories[s:s + batch]
                offline.retrieve(chunk, [params] * len(chunk))
            seconds = time.perf_counter() - t0
            per_query = scored.candidates / len(histories)
            calls = bound(max(1, round(scored.candidates / (BOUND_SHAPE[0] * BOUND_SHAPE[1]))))
            passes.append({"requests_per_s": len(histories) / seconds, "candidates_per_s": scored.candidates / seconds,
                           "scorer_calls_per_batch": scored.calls / -(-len(histories) // batch),
                           "bound_requests_per_s": replay(runtime, calls) / per_query,
                           "shard_bound_requests_per_s": (replay_parallel(shard_runtime, calls, shards) / per_query
                                                          if shards > 1 else None)})
        ratios = [p["requests_per_s"] / p["bound_requests_per_s"] for p in passes]
        shard = [p["requests_per_s"] / p["shard_bound_requests_per_s"] for p in passes if p["shard_bound_requests_per_s"]]
        mid = sorted(passes, key=lambda p: p["requests_per_s"])[len(passes) // 2]
        return {"batch": batch, "users": len(histories), "shards": shards, **mid,
                "of_bound": statistics.median(ratios), "of_bound_spread": [min(ratios), max(ratios)],
                "of_shard_bound": statistics.median(shard) if shard else None}

    rows = [measure(sharded, batch) for batch in batches]
    if one_walk_batch:
        one_walk = OfflineRetriever(run, workers=1)
        scored.wrap(one_walk.scorer.runtime)
        rows.append({**measure(one_walk, one_walk_batch), "one_walk": True})
    return rows


class ScorerCount:
    """Candidates and calls of the runtimes it wraps (`wrap`: their `score`), counted across threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.candidates = self.calls = 0

    def wrap(self, runtime) -> None:
        score = runtime.score

        def counted(state, owner, ids):
            with self._lock:
                self.candidates += int(ids.shape[0])
                self.calls += 1
            return score(state, owner, ids)

        runtime.score = counted


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="side-by-side retrieval benchmark (offline part of `nann perf`)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--work", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    work = Path(a.work or f"perf/results/work/v{a.items}")
    res = compare(work, scale_for(a.items, a.quick))
    print(json.dumps(res["methods"], indent=1))
    print(json.dumps(res["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
