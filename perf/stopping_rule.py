"""The walk's stopping rule (`SearchParams.patience`) against the fixed round budget and HNSW-retrieval, by replaying
the engine against cached scores.

    python -m perf.stopping_rule --run RUN --data DATA --name NAME [--graphs l2:32:40] [--patience 8,16,32,64,128]

For one trained run and each graph setting (metric:M:efConstruction, several build seeds): the curves of
coverage@200 against % of items scored on validation users of the catalogue's search defaults with the rule off
(the fixed round budget) and with it on at each --patience, the last-layer ef swept, and of HNSW-retrieval with the
neural score (ef0 swept); the cheapest point of each curve reaching coverage ≥ 0.99 on validation, measured on the
test users (tune on validation, report on test); and the defaults themselves at each patience on the test users.
Every figure is a mean over graph builds (min–max over builds in brackets) and users; "worst 5%" is the 5th
percentile of per-user coverage. Writes ``OUT/NAME.json`` and its own section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from nann.engine.params import SearchParams, default_search, with_last_ef
from nann.replay import ScoreCache
from perf.search_quality import TARGET, _pt, defaults_text, header, mean_over_graphs, replay_benchmark, run_arguments

EF_SWEEP = (200, 250, 300, 400, 600, 800, 1200)
HNSW_SWEEP = (200, 250, 300, 400, 600, 800, 1600)
HNSW = "HNSW-retrieval"


def curves(defaults: SearchParams, patiences: list[int]) -> dict[str, list[tuple[int, SearchParams | None]]]:
    """Curve name → its points (last-layer ef or HNSW's ef0, the beam's parameters or None for HNSW)."""
    out = {f"patience {p}" if p else "fixed rounds (patience off)":
           [(e, with_last_ef(replace(defaults, patience=p), e)) for e in EF_SWEEP] for p in [0, *patiences]}
    out[HNSW] = [(e, None) for e in HNSW_SWEEP]
    return out


def _measure(cache: ScoreCache, graphs, ef: int, params: SearchParams | None) -> dict:
    if params is None:
        return mean_over_graphs(cache, graphs, method="hnsw", ef0=ef)
    return mean_over_graphs(cache, graphs, params)


def cheapest(points: list[dict]) -> int | None:
    """Index of the point scoring the fewest items among those reaching coverage TARGET; None if none does."""
    reached = [i for i, p in enumerate(points) if p["coverage"] >= TARGET]
    return min(reached, key=lambda i: points[i]["items_scored"]) if reached else None


def measure(val: ScoreCache, test: ScoreCache, graphs, patiences: list[int]) -> dict:
    defaults = default_search(test.num_items)
    res = {"curves": {}, "cheapest": {},
           "defaults": {p: _measure(test, graphs, 0, replace(defaults, patience=p)) for p in [0, *patiences]}}
    for name, points in curves(defaults, patiences).items():
        measured = [{"ef0": e, **_measure(val, graphs, e, params)} for e, params in points]
        res["curves"][name] = measured
        i = cheapest(measured)
        if i is not None:
            ef, params = points[i]
            res["cheapest"][name] = {"ef0": ef, "val": measured[i], "test": _measure(test, graphs, ef, params)}
    return res


def markdown(res: dict, command: str, graph_seeds: str) -> str:
    n = res["num_items"]
    p = default_search(n)
    lines = header(res, command, graph_seeds,
                   f". Search defaults: {defaults_text(n)}. Patience counts layer-0 list entries "
                   f"expanded since a new item last entered the top 200 (frontier {p.frontier}: {p.frontier} entries "
                   f"per round).")
    for g in res["graphs"]:
        r = g["result"]
        lines += [f"**Graph {g['spec']}**", "",
                  "| search (test users) | coverage | worst 5% | recall-Δ | items scored | % of items | rounds |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| defaults, patience {k} | {_pt(v, n)} |" for k, v in r["defaults"].items()]
        lines += [f"| {name}: cheapest ≥ {TARGET} on validation ({'ef0' if name == HNSW else 'last-layer ef'} "
                  f"{c['ef0']}) | {_pt(c['test'], n)} |" for name, c in r["cheapest"].items()]
        missing = [name for name in r["curves"] if name not in r["cheapest"]]
        if missing:
            lines.append(f"| never ≥ {TARGET} on validation: {', '.join(missing)} | | | | | | |")
        names = list(r["curves"])
        lines += ["", "Curves on validation users (coverage / % of items scored / rounds; the beam's column header "
                  "is its rule, the row its last-layer ef; HNSW's row is its ef0):", "",
                  "| ef | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i in range(len(EF_SWEEP)):
            cells = [r["curves"][name][i] for name in names]
            lines.append(f"| {EF_SWEEP[i]}/{HNSW_SWEEP[i]} | " + " | ".join(
                f"{c['coverage']:.4f} / {c['scored_fraction'] * 100:.2f}% / {c['rounds']:.0f}" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from perf.sections import command_line, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(p, "Stopping rule, 10k items", "l2:32:40")
    p.add_argument("--patience", default="8,16,32,64,128", help="patience values to compare (default 8,16,32,64,128)")
    args = p.parse_args(argv)
    command = command_line("perf.stopping_rule", argv)
    patiences = [int(s) for s in args.patience.split(",")]
    res = replay_benchmark(args, lambda val, test, graphs: measure(val, test, graphs, patiences))
    report(args.name, markdown(res, command, args.graph_seeds), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
