"""Search quality per item scored, measured by replaying the engine against cached scores.

    python -m perf.search_quality --run RUN --data DATA --name NAME [--graphs score:32:100,l2:32:40] ...

For one trained run: builds HNSW graphs for each setting (metric:M:efConstruction) with several build seeds (build
time recorded), scores every item once for the validation and test users (``nann.replay.ScoreCache``), then runs
the real engine against those scores, so every variant's items-scored count is exact and all variants see the same
users:

* the catalogue's search defaults (``default_search(num_items)``), the previous served defaults (rounds {1,3,10},
  no seeds) and the paper's parameters;
* the seeded beam with its last-layer ef swept (the defaults' other parameters), the same beam without seeds,
  and HNSW-retrieval with the neural score (ef0 swept) — the curves of coverage@200 against % of items scored;
* on validation users, the cheapest swept point reaching coverage ≥ 0.99, which is then measured on the test users
  (tune on validation, report on test).

The model's recall-all@200 is reported beside a popularity baseline's (the 200 most frequent training items), so
coverage is read for a model that beats popularity. Every figure is a mean over graph builds (its spread across
builds in brackets) and over users; "worst 5%" is the 5th percentile of per-user coverage. Writes
``OUT/NAME.json``, ``OUT/NAME.png`` and its own section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from graph_builder import default_metric
from nann.engine.params import with_last_ef
from nann.engine.search import PAPER_SEARCH, SearchParams, default_search
from nann.replay import ScoreCache
from perf.sections import provenance

TARGET = 0.99
EF0_SWEEP = (200, 250, 300, 350, 400, 500, 600, 800, 1000, 1200, 1600)
HNSW_SWEEP = (200, 400, 800, 1600, 3200)
PREVIOUS_SERVED = SearchParams(ef=(100, 200, 400), rounds=(1, 3, 10), top_m=200, frontier=0, seeds=0)


def graph_dir(run: Path, metric: str, m: int, efc: int, seed: int) -> Path:
    return run / "quality" / "graphs" / f"{metric}_m{m}_efc{efc}_s{seed}"


def build_graphs(run: Path, data: Path, spec: tuple[str, int, int], seeds: list[int]) -> list[dict]:
    """Build (or reuse) one graph per seed; returns [{"dir", "seconds"}]."""
    from graph_builder.build import build_graph, score_metric
    from nann.run_dir import GraphDir, RunDir

    metric, m, efc = spec
    emb = RunDir(run).item_embeddings(mmap=False).astype(np.float32)
    out = []
    for seed in seeds:
        d = graph_dir(run, metric, m, efc, seed)
        graph = GraphDir(d)
        if not graph.exists():
            t0 = time.perf_counter()
            transform = score_metric(RunDir(run), emb, str(data), seed) if metric == "score" else None
            build_graph(emb, d, m=m, ef_construction=efc, seed=seed, transform=transform)
            # metric + hnswlib build + export
            graph.write_meta({**graph.read_meta(), "total_seconds": round(time.perf_counter() - t0, 1)})
        meta = graph.read_meta()
        out.append({"dir": d, "seconds": meta.get("total_seconds", meta.get("build_seconds"))})
    return out


def mean_over_graphs(cache: ScoreCache, graphs, params=None, method: str = "beam", ef0: int = 400) -> dict:
    """Summary averaged over the graph builds, with each field's spread across builds; params: one SearchParams for
    every build, or a list of one per build."""
    per_graph = params if isinstance(params, list) else [params] * len(graphs)
    runs = [cache.replay(g, p, method=method, ef0=ef0).summary(cache.num_items) for g, p in zip(graphs, per_graph)]
    out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out["spread"] = {k: [float(min(r[k] for r in runs)), float(max(r[k] for r in runs))]
                     for k in ("coverage", "items_scored")}
    return out


def measure_graph(val: ScoreCache, test: ScoreCache, graphs, frontier: int | None = None) -> dict:
    """The fixed rows at their own parameters; the swept curves and the cheapest point at `frontier` (None: the
    defaults')."""
    defaults = default_search(test.num_items)
    swept = replace(defaults, frontier=defaults.frontier if frontier is None else frontier)
    sweep = sorted(set(EF0_SWEEP) | {defaults.ef[-1]})
    res = {"defaults": {"val": mean_over_graphs(val, graphs, defaults),
                        "test": mean_over_graphs(test, graphs, defaults)},
           "previous_served": mean_over_graphs(test, graphs, PREVIOUS_SERVED),
           "paper": mean_over_graphs(test, graphs, PAPER_SEARCH),
           "seeded": [{"ef0": e, **mean_over_graphs(val, graphs, with_last_ef(swept, e))} for e in sweep],
           "unseeded": [{"ef0": e, **mean_over_graphs(val, graphs, replace(with_last_ef(swept, e), seeds=0))}
                        for e in sweep],
           "hnsw": [{"ef0": e, **mean_over_graphs(val, graphs, method="hnsw", ef0=e)} for e in HNSW_SWEEP]}
    cheapest = next((p for p in res["seeded"] if p["coverage"] >= TARGET), None)
    if cheapest is not None:
        res["cheapest_target"] = {"ef0": cheapest["ef0"], "val": cheapest,
                                  "test": mean_over_graphs(test, graphs, with_last_ef(swept, cheapest["ef0"]))}
    return res


def _pt(r: dict, n: int) -> str:
    cs, ss = r["spread"]["coverage"], r["spread"]["items_scored"]
    return (f"{r['coverage']:.4f} [{cs[0]:.4f}–{cs[1]:.4f}] | {r['coverage_p5']:.3f} | {r['recall_delta'] * 100:.2f}% | "
            f"{r['items_scored']:,.0f} [{ss[0]:,.0f}–{ss[1]:,.0f}] | {r['scored_fraction'] * 100:.3f}% | {r['rounds']:.1f}")


def defaults_text(num_items: int) -> str:
    """The catalogue's search defaults in words: "ef [...], rounds [...], ... (`default_search(N)`)"."""
    p = default_search(num_items)
    return (f"ef {list(p.ef)}, rounds {list(p.rounds)}, frontier {p.frontier}, seeds {p.seeds}, patience {p.patience} "
            f"(`default_search({num_items})`)")


def header(res: dict, command: str, graph_seeds: str, about: str) -> list[str]:
    """A section's first lines: provenance, catalogue and users, `about` (what was run), the columns of `_pt`."""
    info = {"date": res["date"], "git_describe": res["commit"], "loadavg_at_start": res["loadavg"]}
    return [provenance(command, info), "",
            f"{res['num_items']:,} items; validation users {res['val_users']}, test users {res['test_users']}; graph "
            f"builds per setting: seeds {graph_seeds}. Model recall-all@200 (test) {res['recall_all']:.3f}"
            + ("" if "popularity" not in res else f" (popularity {res['popularity']:.3f})") + about, "",
            "Columns: coverage@200 mean [min–max over builds] | worst 5% of users (5th percentile) | recall-Δ | "
            "items scored per query [min–max over builds] | % of items | scoring rounds per query.", ""]


def markdown(res: dict, args, command: str) -> str:
    n = res["num_items"]
    p = default_search(n)
    frontier = p.frontier if args.frontier is None else args.frontier
    lines = header(res, command, args.graph_seeds,
                   f" vs popularity baseline {res['popularity_recall']:.3f}. Search defaults: {defaults_text(n)}; "
                   f"`nann graph`'s default metric at this size: {default_metric(n)}. Swept curves and the cheapest "
                   f"point: the defaults at frontier {frontier}, last-layer ef varied.")
    for g in res["graphs"]:
        r = g["result"]
        lines += [f"**Graph {g['spec']}** (build {g['build_seconds']} s per build incl. the metric)", "",
                  "| search | users | coverage | worst 5% | recall-Δ | items scored | % of items | rounds |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| defaults | test | {_pt(r['defaults']['test'], n)} |",
                  f"| defaults | validation | {_pt(r['defaults']['val'], n)} |"]
        if "cheapest_target" in r:
            c = r["cheapest_target"]
            lines += [f"| cheapest ≥ {TARGET} on validation: ef0 {c['ef0']}, frontier {frontier} | validation | "
                      f"{_pt(c['val'], n)} |",
                      f"| the same, measured on test | test | {_pt(c['test'], n)} |"]
        lines += [f"| previous served defaults (rounds {{1,3,10}}, no seeds) | test | {_pt(r['previous_served'], n)} |",
                  f"| paper (ef {{100,200,400}}, rounds {{1,1,3}}) | test | {_pt(r['paper'], n)} |", ""]
        lines += ["Curves on validation users (coverage / % of items scored):", "",
                  f"| last-layer ef | seeded beam (frontier {frontier}) | same without seeds | | HNSW-retrieval ef0 | "
                  "HNSW-retrieval |",
                  "|---|---|---|---|---|---|"]
        for i in range(max(len(r["seeded"]), len(r["hnsw"]))):
            s = r["seeded"][i] if i < len(r["seeded"]) else None
            u = r["unseeded"][i] if i < len(r["unseeded"]) else None
            h = r["hnsw"][i] if i < len(r["hnsw"]) else None
            cell = (lambda x: f"{x['coverage']:.4f} / {x['scored_fraction'] * 100:.3f}%" if x else "")
            lines.append(f"| {s['ef0'] if s else ''} | {cell(s)} | {cell(u)} | | {h['ef0'] if h else ''} | {cell(h)} |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in res["graphs"]:
        r = g["result"]
        for key, style in (("seeded", "-o"), ("unseeded", "--s"), ("hnsw", ":^")):
            ax.plot([p["scored_fraction"] * 100 for p in r[key]], [p["coverage"] for p in r[key]], style,
                    label=f"{g['spec']} {key}", markersize=4)
    ax.axhline(TARGET, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("items scored (% of the catalogue)")
    ax.set_ylabel("coverage@200 (validation users)")
    ax.set_title(f"{res['num_items']:,} items")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_arguments(p: argparse.ArgumentParser, example: str, graphs: str) -> None:
    """The arguments of a benchmark on one run's cached scores (this one, perf.stopping_rule)."""
    p.add_argument("--run", required=True, help="trained run directory (graphs and score caches go to RUN/quality)")
    p.add_argument("--data", required=True, help="the prepared data the run was trained on")
    p.add_argument("--name", required=True, help=f"section of perf/RESULTS.md to write (e.g. '{example}')")
    p.add_argument("--graphs", default=graphs,
                   help=f"graph settings metric:M:efConstruction, comma-separated (default {graphs})")
    p.add_argument("--graph-seeds", default="100,101,102", help="build seeds per setting (default 100,101,102)")
    p.add_argument("--val-users", type=int, default=300, help="validation users (default 300)")
    p.add_argument("--test-users", type=int, default=300, help="test users (default 300)")
    p.add_argument("--out", default="perf/results",
                   help="directory for the NAME.json (and .png) outputs (default perf/results)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")


def score_caches(args):
    """(prepared data, validation ScoreCache, test ScoreCache) of `run_arguments`' run, built once under RUN/quality."""
    from nann.data.prepared import PreparedData

    run = Path(args.run)
    data = PreparedData.load(str(args.data))
    qdir = run / "quality"
    qdir.mkdir(parents=True, exist_ok=True)
    val = ScoreCache.build(run, data.val, args.val_users, qdir / f"scores_val{args.val_users}.npy")
    test = ScoreCache.build(run, data.test, args.test_users, qdir / f"scores_test{args.test_users}.npy")
    return data, val, test


def replay_benchmark(args, measure) -> dict:
    """The run of a benchmark on `run_arguments`' run: its cached scores, then ``measure(val, test, graphs)`` for each
    graph setting (graphs built or reused per build seed); the result (also written to ``OUT/NAME.json``)."""
    from nann.engine.graph import HnswGraph
    from perf.run import machine_info

    info = machine_info()
    data, val, test = score_caches(args)
    seeds = [int(s) for s in args.graph_seeds.split(",")]
    res = {"num_items": test.num_items, "date": info["date"], "commit": info["git_describe"],
           "loadavg": info["loadavg_at_start"], "val_users": val.num_users, "test_users": test.num_users,
           "recall_all": test.recall_all(), "popularity": popularity_recall(data.item_counts, test), "graphs": []}
    for text in args.graphs.split(","):
        metric, m, efc = text.split(":")
        graphs = [HnswGraph.load(b["dir"])
                  for b in build_graphs(Path(args.run), Path(args.data), (metric, int(m), int(efc)), seeds)]
        print(f"[{args.name}] graph {text}: measuring", file=sys.stderr)
        res["graphs"].append({"spec": text, "result": measure(val, test, graphs)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{slug(args.name)}.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def popularity_recall(item_counts: np.ndarray, cache: ScoreCache) -> float:
    """Recall-all@top_m of the most popular items on ``cache``'s users: what the model's recall must beat for its
    coverage to mean anything."""
    from nann.baselines import popularity_hits

    return float(popularity_hits(item_counts, cache.histories, cache.targets, cache.top_m).mean())


def slug(name: str) -> str:
    """A section name as a file name."""
    return name.lower().replace(" ", "_").replace(",", "")


def main(argv=None) -> int:
    from nann.engine.graph import HnswGraph
    from nann.evaluate import popularity_recall
    from perf.run import machine_info
    from perf.sections import command_line, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(p, "Search quality, 100k", "score:32:100,l2:32:40")
    p.add_argument("--frontier", type=int, default=None,
                   help="frontier of the swept curves and the cheapest point (default: the catalogue's search "
                        "defaults', default_search; the defaults row always runs the defaults)")
    args = p.parse_args(argv)
    run, data_dir = Path(args.run), Path(args.data)
    info = machine_info()
    command = command_line("perf.search_quality", argv)
    data, val, test = score_caches(args)
    seeds = [int(s) for s in args.graph_seeds.split(",")]
    res = {"num_items": test.num_items, "date": info["date"], "commit": info["git_describe"],
           "loadavg": info["loadavg_at_start"], "val_users": val.num_users, "test_users": test.num_users,
           "recall_all": test.recall_all(),
           "popularity_recall": popularity_recall(data.item_counts, test.targets, test.top_m), "graphs": []}
    for text in args.graphs.split(","):
        metric, m, efc = text.split(":")
        spec = (metric, int(m), int(efc))
        built = build_graphs(run, data_dir, spec, seeds)
        graphs = [HnswGraph.load(b["dir"]) for b in built]
        print(f"[quality] graph {text}: measuring", file=sys.stderr)
        times = [b["seconds"] for b in built if b["seconds"] is not None]
        res["graphs"].append({"spec": text, "build_seconds": float(np.median(times)) if times else None,
                              "result": measure_graph(val, test, graphs, args.frontier)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{slug(args.name)}.json").write_text(json.dumps(res, indent=1, default=str))
    plot(res, out / f"{slug(args.name)}.png")
    report(args.name, markdown(res, args, command), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
