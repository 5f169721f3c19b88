"""Offline evaluation (`nann evaluate`) and offline retrieval (`nann retrieve`).

Metrics at M (Section 5.1.2 of the paper), averaged over test users, each with one held-out target:
recall-all (target in the brute-force top-M), recall-retrieval (target in the searched top-M),
recall-Δ = (recall-all − recall-retrieval) / recall-all, coverage = |searched ∩ brute-force top-M| / M,
and the mean fraction of |V| scored per query.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nann.engine.graph import HnswGraph
from nann.engine.grid import CandidateGrid
from nann.engine.search import SearchParams, beam_search, brute_force, hnsw_search
from nann.errors import UserError

BEAM_SWEEP_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)   # of every ef, or of the frontier when one is set
HNSW_SWEEP_EF = (200, 300, 400, 800, 1600, 3200)  # the list holds max(ef0, top_m) items


@dataclass
class MethodSpec:
    method: str                       # beam | hnsw | brute
    ef: tuple[int, ...] = (100, 200, 400)
    rounds: tuple[int, ...] = (1, 1, 3)
    top_m: int = 200
    frontier: int = 0                 # beam: entries expanded per round, 0 = all (SearchParams.frontier)

    def label(self) -> str:
        if self.method == "beam":
            return f"beam ef={list(self.ef)} rounds={list(self.rounds)}" + \
                (f" frontier={self.frontier}" if self.frontier else "")
        if self.method == "hnsw":
            return f"hnsw ef0={self.ef[-1]}"
        return "brute"


class Evaluator:
    """Holds a run's runtime, graph and test users; runs methods in batches and caches brute force."""

    def __init__(self, run_dir: str | Path, data_dir: str | Path, users: int = 0, batch: int = 32,
                 backend: str = "onnxruntime", grid: CandidateGrid | None = None):
        from nann.data.prepared import PreparedData
        from nann.runtime import ModelRuntime

        self.run_dir = Path(run_dir)
        self.runtime = ModelRuntime.load(self.run_dir, backend=backend)
        if not (self.run_dir / "graph" / "meta.json").exists():
            raise UserError(f"{self.run_dir} has no graph: run `nann graph --run {self.run_dir}` first")
        self.graph = HnswGraph.load(self.run_dir / "graph")
        test = PreparedData.load(str(data_dir)).test
        if self.graph.num_items != self.runtime.num_items:
            raise UserError(f"graph has {self.graph.num_items} items but the model {self.runtime.num_items}: "
                            f"rebuild it with `nann graph --run {self.run_dir}`")
        self.test = test.subset(users) if users and users < len(test) else test
        self.batch = batch
        self.grid = grid or CandidateGrid()
        self._brute: dict[int, np.ndarray] = {}

    def _batches(self, desc: str):
        n = len(self.test)
        for start in tqdm(range(0, n, self.batch), desc=desc, unit="batch", file=sys.stderr, leave=False):
            idx = np.arange(start, min(n, start + self.batch))
            state = self.runtime.encode([self.test.history(int(i)) for i in idx])
            yield idx, (lambda owner, ids, state=state: self.runtime.score(state, owner, ids))

    def search(self, spec: MethodSpec) -> tuple[np.ndarray, np.ndarray, float]:
        """(top-M ids [U, M], items scored per user [U], seconds per query)."""
        ids = np.full((len(self.test), spec.top_m), -1, dtype=np.int64)
        scored = np.zeros(len(self.test), dtype=np.int64)
        t0 = time.perf_counter()
        for idx, score_fn in self._batches(spec.label()):
            if spec.method == "beam":
                res = beam_search(self.graph, len(idx), score_fn,
                                  SearchParams(spec.ef, spec.rounds, spec.top_m, spec.frontier), self.grid)
            elif spec.method == "hnsw":
                res = hnsw_search(self.graph, len(idx), score_fn, spec.ef[-1], spec.top_m, self.grid)
            else:
                res = brute_force(self.runtime.num_items, len(idx), score_fn, spec.top_m, grid=self.grid)
            ids[idx, : res.ids.shape[1]] = res.ids[:, : spec.top_m]
            scored[idx] = res.n_scored
        return ids, scored, (time.perf_counter() - t0) / max(1, len(self.test))

    def brute_top(self, top_m: int) -> np.ndarray:
        if top_m not in self._brute:
            self._brute[top_m] = self.search(MethodSpec("brute", top_m=top_m))[0]
        return self._brute[top_m]

    def evaluate(self, spec: MethodSpec) -> dict:
        exact = self.brute_top(spec.top_m)
        found, scored, seconds = (exact, np.full(len(self.test), self.runtime.num_items), 0.0) \
            if spec.method == "brute" else self.search(spec)
        return {**metrics(found, exact, self.test.targets, scored, self.runtime.num_items),
                "method": spec.method, "ef": list(spec.ef), "rounds": list(spec.rounds), "top_m": spec.top_m,
                "frontier": spec.frontier,
                "seconds_per_query": seconds, "num_items": self.runtime.num_items}


def metrics(found: np.ndarray, exact: np.ndarray, targets: np.ndarray, scored: np.ndarray, num_items: int) -> dict:
    """The paper's metrics for searched top-M `found` vs brute-force top-M `exact` ([U, M], -1 = empty)."""
    targets = np.asarray(targets).reshape(-1, 1)
    hit_all = (exact == targets).any(axis=1)
    hit_retrieval = (found == targets).any(axis=1)
    coverage = np.array([np.intersect1d(f[f >= 0], e[e >= 0]).size / max(1, (e >= 0).sum())
                         for f, e in zip(found, exact)])
    recall_all = float(hit_all.mean()) if len(targets) else 0.0
    recall_retrieval = float(hit_retrieval.mean()) if len(targets) else 0.0
    return {
        "recall_all": recall_all,
        "recall_retrieval": recall_retrieval,
        "recall_delta": (recall_all - recall_retrieval) / recall_all if recall_all > 0 else 0.0,
        "coverage": float(coverage.mean()) if len(coverage) else 0.0,
        "scored_fraction": float(np.mean(scored) / num_items) if len(scored) else 0.0,
        "items_scored": float(np.mean(scored)) if len(scored) else 0.0,
        "users": int(len(targets)),
    }


def sweep_specs(method: str, ef: tuple[int, ...], rounds: tuple[int, ...], top_m: int,
                frontier: int = 0) -> list[MethodSpec]:
    """Search budgets from small to large around the given parameters: HNSW's ef0; beam's ef per layer, or its
    frontier (ef and rounds fixed) when one is set."""
    if method == "hnsw":
        return [MethodSpec("hnsw", (max(e, 1),), (1,), top_m) for e in HNSW_SWEEP_EF]
    if frontier:
        return [MethodSpec("beam", ef, rounds, top_m, max(1, round(frontier * s))) for s in BEAM_SWEEP_SCALES]
    return [MethodSpec("beam", tuple(max(1, round(e * s)) for e in ef), rounds, top_m) for s in BEAM_SWEEP_SCALES]


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Recall-retrieval and coverage vs % of |V| scored, one line per method (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in curves.items():
        x = [p["scored_fraction"] * 100 for p in points]
        axes[0].plot(x, [p["recall_retrieval"] * 100 for p in points], marker="o", label=name)
        axes[1].plot(x, [p["coverage"] * 100 for p in points], marker="o", label=name)
    for ax, title in zip(axes, ("recall-retrieval@M (%)", "coverage@M (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("items scored (% of |V|)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_metrics(m: dict) -> None:
    print(f"{m['method']:>6}  users {m['users']}  recall-all@{m['top_m']} {m['recall_all']:.4f}  "
          f"recall-retrieval {m['recall_retrieval']:.4f}  recall-Δ {m['recall_delta'] * 100:.2f}%  "
          f"coverage {m['coverage']:.4f}  scored {m['scored_fraction'] * 100:.2f}% of |V|  "
          f"{m['seconds_per_query'] * 1000:.1f} ms/query")


def main_evaluate(args) -> int:
    if args.method == "dr":
        from trainer.deep_retrieval import evaluate_dr

        m = evaluate_dr(args.run, args.data, users=args.users, top_m=args.top_m, beam=args.beam)
        print_metrics(m)
        if args.json:
            Path(args.json).write_text(json.dumps(m, indent=1))
        return 0
    if len(args.ef) != len(args.rounds):
        raise UserError(f"--ef {args.ef} and --rounds {args.rounds} need one value per layer each")
    ev = Evaluator(args.run, args.data, users=args.users, batch=args.batch, backend=args.backend)
    if args.frontier < 0:
        raise UserError(f"--frontier must be >= 0 (0 = expand every new entry), got {args.frontier}")
    base = MethodSpec(args.method, tuple(args.ef), tuple(args.rounds), args.top_m, args.frontier)
    specs = sweep_specs(args.method, base.ef, base.rounds, args.top_m, base.frontier) if args.sweep else [base]
    results = []
    for spec in specs:
        m = ev.evaluate(spec)
        print_metrics(m)
        results.append(m)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results if args.sweep else results[0], indent=1))
        if args.sweep:
            plot_curves({base.method: results}, Path(args.json).with_suffix(".png"))
    return 0


def main_retrieve(args) -> int:
    from nann.serving.requests import RequestError, parse_search
    from nann.serving.retrieval import OfflineRetriever

    try:
        history = np.array([int(x) for x in args.history.split(",") if x.strip()], dtype=np.int64)
    except ValueError:
        raise UserError(f"--history must be comma-separated integer item ids, got {args.history!r}") from None
    retriever = OfflineRetriever(args.run)
    try:
        params = parse_search(None if args.k is None else np.array([args.k]), None, None, retriever.limits)
        (ids, scores), = retriever.retrieve([history], [params])
    except RequestError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"item_ids": ids.tolist(), "scores": scores.tolist()}))
    else:
        print(f"{'rank':>4}  {'item_id':>12}  score")
        for rank, (i, s) in enumerate(zip(ids, scores), 1):
            print(f"{rank:>4}  {i:>12}  {s:.6f}")
    return 0
