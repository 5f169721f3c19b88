"""The graph's metric by catalogue size: score-sensitivity vs plain L2 at equal coverage, on one model's catalogue
and random subsets of it.

    python -m perf.graph_metric --run RUN --data DATA [--sizes 100000,300000,600000,0]

One trained model, so the catalogue size is the only thing that changes: each size keeps every item of the
measured users' histories (a real catalogue holds its users' behaviours, and they are the seeds) and fills up with
items drawn at random (0 = the whole catalogue). For each size and metric, graphs are built with several build
seeds (M and efConstruction: `nann graph`'s defaults; the score metric's transform is computed once, from the whole
catalogue), and the engine is replayed against the cached scores (``nann.replay``) restricted to the size's items,
at the catalogue's search defaults (``default_search(size)``) with the last-layer ef swept. The figure of merit is
the share of the catalogue scored to reach coverage@200 = 0.99 on the validation users (linear between swept
points). Writes ``OUT/graph_metric.json`` and its section of perf/RESULTS.md; ``graph_builder.SCORE_METRIC_MAX_ITEMS``
is read off it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from graph_builder import GRAPH_EF_CONSTRUCTION, GRAPH_M, SCORE_METRIC_MAX_ITEMS
from nann.engine.params import default_search, with_last_ef
from nann.replay import ScoreCache
from perf.search_quality import TARGET, mean_over_graphs
from perf.sections import provenance

NAME = "Graph metric by catalogue size"
EF0_SCALES = (0.67, 0.83, 1.0, 1.33, 1.67, 2.0, 2.67, 4.0)  # × the size's default last-layer ef (≥ top_m)


def subset_cache(full: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, size: int, seed: int):
    """(item ids kept, ScoreCache over them): every history item plus random others up to ``size`` (0 = all)."""
    n = full.shape[1]
    if size <= 0 or size >= n:
        return np.arange(n), ScoreCache(full, histories, targets)
    keep = np.zeros(n, dtype=bool)
    keep[np.concatenate(histories)] = True
    fill = size - int(keep.sum())
    if fill < 0:
        raise SystemExit(f"size {size} is smaller than the measured users' {int(keep.sum())} history items")
    rng = np.random.default_rng(seed)
    keep[rng.choice(np.nonzero(~keep)[0], fill, replace=False)] = True
    ids = np.nonzero(keep)[0]
    remap = np.full(n, -1, dtype=np.int64)
    remap[ids] = np.arange(ids.size)
    return ids, ScoreCache(np.ascontiguousarray(full[:, ids]), [remap[h] for h in histories], remap[targets])


def items_for_target(points: list[dict]) -> float | None:
    """% of items scored where coverage crosses TARGET (linear between swept points); None if it never does."""
    if points[0]["coverage"] >= TARGET:
        return points[0]["scored_fraction"] * 100
    for a, b in zip(points, points[1:]):
        if a["coverage"] < TARGET <= b["coverage"]:
            t = (TARGET - a["coverage"]) / (b["coverage"] - a["coverage"])
            return (a["scored_fraction"] + t * (b["scored_fraction"] - a["scored_fraction"])) * 100
    return None


def measure(args) -> dict:
    from graph_builder.build import build_graph, score_metric
    from nann.data.prepared import PreparedData
    from nann.engine.graph import HnswGraph
    from nann.run_dir import GraphDir, RunDir

    run, work = Path(args.run), Path(args.run) / "quality" / "graph_metric"
    work.mkdir(parents=True, exist_ok=True)
    split = PreparedData.load(args.data).val
    val = ScoreCache.build(run, split, args.users, run / "quality" / f"scores_val{args.users}.npy")
    full, histories, targets = val.scores, val.histories, val.targets
    emb = RunDir(run).item_embeddings(mmap=False).astype(np.float32)
    transform_path = work / "score_transform.npy"
    if not transform_path.is_file():
        np.save(transform_path, score_metric(RunDir(run), emb, args.data, 100))
    transform = np.load(transform_path, allow_pickle=False)
    seeds = [int(s) for s in args.graph_seeds.split(",")]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        ids, cache = subset_cache(full, histories, targets, size, seed=size)
        search = default_search(ids.size)
        sweep = sorted({max(search.top_m, int(round(search.ef[-1] * s, -1))) for s in EF0_SCALES})
        row = {"size": int(ids.size), "search": {"ef": list(search.ef), "frontier": search.frontier}, "metrics": {}}
        for metric in ("score", "l2"):
            graphs = []
            for seed in seeds:
                d = work / f"{ids.size}_{metric}_s{seed}"
                if not GraphDir(d).exists():
                    build_graph(emb[ids], d, seed=seed, transform=transform if metric == "score" else None)
                graphs.append(HnswGraph.load(d))
            print(f"[graph_metric] {ids.size} items, {metric}: replaying", file=sys.stderr)
            points = [{"ef0": e, **mean_over_graphs(cache, graphs, with_last_ef(search, e))} for e in sweep]
            row["metrics"][metric] = {"points": points, "percent_for_target": items_for_target(points)}
        rows.append(row)
    return {"rows": rows, "users": int(val.num_users), "graph_seeds": seeds, "m": GRAPH_M,
            "ef_construction": GRAPH_EF_CONSTRUCTION}


def markdown(res: dict, info: dict, command: str) -> str:
    def pct(x):
        return "not reached" if x is None else f"{x:.3f}%"

    lines = [provenance(command, info), "",
             f"One model's catalogue and random subsets of it (every history item of the {res['users']} validation "
             f"users kept); graphs M {res['m']}, efConstruction {res['ef_construction']}, build seeds "
             f"{res['graph_seeds']}; search: the size's defaults (`default_search`), last-layer ef swept. `nann graph "
             f"--metric auto` takes the score metric up to {SCORE_METRIC_MAX_ITEMS:,} items, L2 above.", "",
             f"| items | defaults (ef, frontier) | score metric: % scored for coverage {TARGET} | L2: % scored for "
             f"coverage {TARGET} | fewer items with |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        s, l2 = r["metrics"]["score"]["percent_for_target"], r["metrics"]["l2"]["percent_for_target"]
        better = "—" if s is None and l2 is None else "score" if l2 is None or (s is not None and s < l2) else "l2"
        lines.append(f"| {r['size']:,} | {r['search']['ef']}, {r['search']['frontier']} | {pct(s)} | {pct(l2)} | "
                     f"{better} |")
    lines += ["", "Curves (validation users; coverage / % of items scored, mean over builds):", "",
              "| items | last-layer ef | score metric | L2 |", "|---|---|---|---|"]
    for r in res["rows"]:
        for ps, pl in zip(r["metrics"]["score"]["points"], r["metrics"]["l2"]["points"]):
            lines.append(f"| {r['size']:,} | {ps['ef0']} | {ps['coverage']:.4f} / {ps['scored_fraction'] * 100:.3f}% | "
                         f"{pl['coverage']:.4f} / {pl['scored_fraction'] * 100:.3f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from perf.run import machine_info
    from perf.sections import command_line, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="trained run directory (graphs go to RUN/quality/graph_metric)")
    p.add_argument("--data", required=True, help="the prepared data the run was trained on")
    p.add_argument("--sizes", default="100000,300000,600000,0",
                   help="catalogue sizes to measure, 0 = the whole catalogue (default 100000,300000,600000,0)")
    p.add_argument("--graph-seeds", default="100,101", help="build seeds per size and metric (default 100,101)")
    p.add_argument("--users", type=int, default=300, help="validation users (default 300)")
    p.add_argument("--out", default="perf/results", help="directory for graph_metric.json (default perf/results)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    command = command_line("perf.graph_metric", argv)
    res = measure(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "graph_metric.json").write_text(json.dumps(res, indent=1))
    report(NAME, markdown(res, info, command), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
