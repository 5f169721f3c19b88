"""Offline evaluation: the retrieval methods on a run's test users and the paper's metrics (`nann evaluate`'s
library; the command itself is `nann_cli.evaluate`).

Metrics at M (Section 5.1.2 of the paper), averaged over test users, each with one held-out target:
recall-all (target in the brute-force top-M), recall-retrieval (target in the searched top-M),
recall-Δ = (recall-all − recall-retrieval) / recall-all, coverage = |searched ∩ brute-force top-M| / M,
and the mean fraction of |V| scored per query. With eligibility filters (`--exclude`, `--exclude-history`,
`--categories`, `--blocked`: the served ones, mapped by `nann.serving.filters`) the brute-force top-M is that of the
eligible items.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nann import scorers
from nann.engine.graph import HnswGraph
from nann.engine.grid import CandidateGrid
from nann.engine.params import DEFAULT_SEARCH, TUNABLES, WALK_TUNABLES, SearchParams, json_value
from nann.engine.search import beam_search, brute_force, hnsw_search
from nann.errors import UserError
from nann.run_dir import RunDir
from nann.serving.filters import NOTHING_BLOCKED, Eligibility
from nann.serving.requests import NO_FILTERS, FilterRequest, RequestError

BEAM_SWEEP_SCALES = (0.5, 0.67, 0.83, 1.0, 1.33, 2.0, 2.67)  # of the last layer's ef: the walk's budget dial
HNSW_SWEEP_EF = (200, 300, 400, 800, 1600, 3200)  # the list holds max(ef0, top_m) items


@dataclass
class MethodSpec:
    """A retrieval method and its search: beam walks with all of `params`, hnsw with ef0 = params.ef[-1] and top_m,
    brute force with top_m."""
    method: str                           # beam | hnsw | brute
    params: SearchParams = DEFAULT_SEARCH

    def label(self) -> str:
        if self.method == "beam":  # per-layer values always, the others where set
            return " ".join(["beam"] + [f"{t.field}={json_value(v)}" for t in WALK_TUNABLES
                                        if (v := getattr(self.params, t.field)) or t.per_layer])
        if self.method == "hnsw":
            return f"hnsw ef0={self.params.ef[-1]}"
        return "brute"


class Evaluator:
    """Holds a run's runtime, graph and test users; runs methods in batches and caches brute force.

    filters: every test user's eligibility filters (its own history for exclude_history); blocked: raw item ids
    nobody gets. Both apply to beam and brute force alike (not to hnsw)."""

    def __init__(self, run_dir: str | Path, data_dir: str | Path, users: int = 0, batch: int = 32,
                 backend: str = "onnxruntime", grid: CandidateGrid | None = None,
                 filters: FilterRequest = NO_FILTERS, blocked: np.ndarray | None = None):
        from nann.data.prepared import PreparedData
        from nann.runtime import ModelRuntime

        self.run_dir = Path(run_dir)
        run = RunDir(self.run_dir)
        self.runtime = ModelRuntime.load(self.run_dir, backend=backend)
        if not run.graph.exists():
            raise UserError(f"{self.run_dir} has no graph: run `nann graph --run {self.run_dir}` first")
        self.graph = HnswGraph.load(run.graph.path)
        prepared = PreparedData.load(str(data_dir))
        test = prepared.test
        self.item_counts = prepared.item_counts
        if self.graph.num_items != self.runtime.num_items:
            raise UserError(f"graph has {self.graph.num_items} items but the model {self.runtime.num_items}: "
                            f"rebuild it with `nann graph --run {self.run_dir}`")
        self.test = test.subset(users) if users and users < len(test) else test
        self.batch = batch
        self.grid = grid or scorers.runtime(backend).grid()
        self._brute: dict[int, np.ndarray] = {}
        self.eligibility = Eligibility(run.vocabulary())
        self.filters = filters
        self.blocked = NOTHING_BLOCKED if blocked is None else self.eligibility.blocked(blocked)

    def _batches(self, desc: str):
        n = len(self.test)
        for start in tqdm(range(0, n, self.batch), desc=desc, unit="batch", file=sys.stderr, leave=False):
            idx = np.arange(start, min(n, start + self.batch))
            histories = [self.test.history(int(i)) for i in idx]
            state = self.runtime.encode(histories)
            try:
                filters = self.eligibility.engine_filters([self.eligibility.dense(self.filters, h) for h in histories],
                                                          self.blocked)
            except RequestError as e:
                raise UserError(str(e)) from None
            yield idx, histories, filters, (lambda owner, ids, state=state: self.runtime.score(state, owner, ids))

    def search(self, spec: MethodSpec) -> tuple[np.ndarray, np.ndarray, float]:
        """(top-M ids [U, M], items scored per user [U], seconds per query)."""
        top_m = spec.params.top_m
        ids = np.full((len(self.test), top_m), -1, dtype=np.int64)
        scored = np.zeros(len(self.test), dtype=np.int64)
        t0 = time.perf_counter()
        for idx, histories, filters, score_fn in self._batches(spec.label()):
            if spec.method == "beam":
                res = beam_search(self.graph, len(idx), score_fn, spec.params, self.grid, histories=histories,
                                  filters=filters)
            elif spec.method == "hnsw":
                res = hnsw_search(self.graph, len(idx), score_fn, spec.params.ef[-1], top_m, self.grid)
            else:
                res = brute_force(self.runtime.num_items, len(idx), score_fn, top_m, grid=self.grid, filters=filters)
            ids[idx, : res.ids.shape[1]] = res.ids[:, : top_m]
            scored[idx] = res.n_scored
        return ids, scored, (time.perf_counter() - t0) / max(1, len(self.test))

    def popularity_recall(self, top_m: int = DEFAULT_SEARCH.top_m) -> float:
        return popularity_recall(self.item_counts, self.test.targets, top_m)

    def brute_top(self, top_m: int) -> np.ndarray:
        if top_m not in self._brute:
            self._brute[top_m] = self.search(MethodSpec("brute", replace(DEFAULT_SEARCH, top_m=top_m)))[0]
        return self._brute[top_m]

    def evaluate(self, spec: MethodSpec) -> dict:
        exact = self.brute_top(spec.params.top_m)
        found, scored, seconds = (exact, np.full(len(self.test), self.runtime.num_items), 0.0) \
            if spec.method == "brute" else self.search(spec)
        return {**metrics(found, exact, self.test.targets, scored, self.runtime.num_items),
                "method": spec.method, **{t.field: json_value(getattr(spec.params, t.field)) for t in TUNABLES},
                "seconds_per_query": seconds, "num_items": self.runtime.num_items,
                "popularity_recall": self.popularity_recall(spec.params.top_m),
                "filters": {"exclude": int(self.filters.exclude.size), "exclude_history": self.filters.exclude_history,
                            "categories": self.filters.categories.tolist(), "blocked_items": self.blocked.count}}


def popularity_recall(item_counts: np.ndarray, targets: np.ndarray, top_m: int) -> float:
    """recall@top_m of the top_m most frequent training items, the same list for every user: the baseline a model
    has to beat before its coverage means anything."""
    popular = np.argsort(-np.asarray(item_counts), kind="stable")[:top_m]
    return float(np.isin(np.asarray(targets), popular).mean()) if len(targets) else 0.0


def metrics(found: np.ndarray, exact: np.ndarray, targets: np.ndarray, scored: np.ndarray, num_items: int) -> dict:
    """The paper's metrics for searched top-M `found` vs brute-force top-M `exact` ([U, M], -1 = empty).

    Coverage divides by the real items of `exact` (M unless the catalogue is smaller); recall-Δ is reported as 0
    when recall-all is 0 (undefined). Zero users give 0 everywhere."""
    targets = np.asarray(targets).reshape(-1, 1)
    hit_all = ((exact == targets) & (exact >= 0)).any(axis=1)  # a -1 target must not match the -1 padding
    hit_retrieval = ((found == targets) & (found >= 0)).any(axis=1)
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


def sweep_specs(base: MethodSpec) -> list[MethodSpec]:
    """Search budgets from small to large around `base` (its other parameters, seeds included, kept): HNSW's ef0;
    beam's last-layer ef (the walk stops when its list is expanded, so that list's size sets the cost)."""
    p = base.params
    if base.method == "hnsw":
        return [replace(base, params=replace(p, ef=(max(e, 1),), rounds=(1,))) for e in HNSW_SWEEP_EF]
    return [replace(base, params=replace(p, ef=p.ef[:-1] + (max(1, round(p.ef[-1] * s)),))) for s in BEAM_SWEEP_SCALES]


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


def evaluate_dr(run_dir, data_dir, users: int = 0, top_m: int = 200, beam=None, batch: int = 64,
                threads: int = 0, quiet: bool = False) -> dict:
    """Deep Retrieval on the test users (keys as ``Evaluator.evaluate``, plus DR parameters): beam search (``beam``,
    default the run's) -> distinct items on the final paths -> reranker scores -> top-M. ``recall_all`` /
    ``coverage`` use the reranker's exact top-M over all items (DR's own brute force)."""
    import torch

    from nann.data.prepared import PreparedData
    from nann.dr_model import PathIndex, beam_search, load_dr, path_codes
    from nann.runtime import pad_histories

    if threads:
        torch.set_num_threads(threads)
    model, cfg, codes = load_dr(run_dir)
    beam = int(beam or cfg["beam"])
    data = PreparedData.load(str(data_dir))
    test = data.test
    if len(test) == 0:
        raise UserError(f"{data_dir} has no test users")
    if data.num_items != cfg["num_items"]:
        raise UserError(f"{data_dir} has a different item count than the run {run_dir}")
    test = test.subset(users) if users and users < len(test) else test
    index = PathIndex(codes)
    U = len(test)
    found = np.full((U, top_m), -1, dtype=np.int64)
    exact = np.full((U, top_m), -1, dtype=np.int64)
    scored = np.zeros(U, dtype=np.int64)
    elapsed = 0.0
    with torch.no_grad():
        for start in tqdm(range(0, U, batch), desc=f"dr beam={beam}", unit="batch", file=sys.stderr, leave=False,
                          disable=quiet):
            idx = range(start, min(U, start + batch))
            t0 = time.perf_counter()
            hist, mask = pad_histories([test.history(i) for i in idx], cfg["max_seq"])
            h = model.encode(torch.from_numpy(hist), torch.from_numpy(mask))
            q = model.rerank_query(h)
            paths, _ = beam_search(model.step_fn(h), len(idx), cfg["nodes"], cfg["layers"], beam)
            pcodes = path_codes(paths.numpy(), cfg["nodes"])
            for r, u in enumerate(idx):
                cand = index.collect(pcodes[r])
                scored[u] = cand.shape[0]
                if cand.shape[0] == 0:
                    continue
                s = model.rerank_scores(q, torch.full((cand.shape[0],), r, dtype=torch.long),
                                        torch.from_numpy(cand))
                k = min(top_m, cand.shape[0])
                found[u, :k] = cand[s.topk(k).indices.numpy()]
            elapsed += time.perf_counter() - t0
            k = min(top_m, cfg["num_items"])
            exact[start:start + len(idx), :k] = model.rerank_all(q).topk(k, dim=1).indices.numpy()
    return {**metrics(found, exact, test.targets, scored, cfg["num_items"]), "method": "dr", "beam": beam,
            "top_m": top_m, "seconds_per_query": elapsed / U, "num_items": cfg["num_items"],
            "layers": cfg["layers"], "nodes": cfg["nodes"], "paths": cfg["paths"], "alpha": cfg["alpha"]}
