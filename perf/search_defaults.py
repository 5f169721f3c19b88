"""The catalogue's search defaults against HNSW-retrieval at matched items scored, by replaying the engine against
cached scores.

    python -m perf.search_defaults --run RUN --data DATA --name NAME [--graphs score:32:100]

For one trained run and each graph setting (several build seeds): on the test users, the calibrated defaults (each
build's last-layer ef calibrated as `nann graph` does it, `nann.calibration.calibrate`, on as many validation users as
it takes: `calibration_users`), the size rule (`default_search(num_items)`, a graph without calibration) and the
defaults before the small-catalogue rule (`DEFAULT_SEARCH`, what every catalogue below SCALING_BASE_ITEMS got), each
beside HNSW-retrieval with the neural score read off its curve at the same items scored (its coverage there) and at
the same coverage (the items it needs); the HNSW curve itself (ef0 swept, test users). Then, on validation users,
where the beam's items go at the size rule's last-layer ef: the same walk
without history seeds, with a narrower frontier (more rounds; a cap above the served 64 rounds so that the walk ends
on its own), and with ef 1 on the layers above 0 (HNSW's greedy descent). Every figure is a mean over graph builds
and users; rounds are the scoring rounds per query (scorer calls a served request takes part in). Writes
``OUT/NAME.json`` and its own section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from nann.calibration import SAVING_PER_DOUBLING, TARGET, calibrate, calibration_users
from nann.engine.params import DEFAULT_SEARCH, SearchParams, calibrated, default_search
from nann.replay import ScoreCache
from perf.search_quality import (_pt, defaults_text, header, mean_over_graphs, replay_benchmark, run_arguments,
                                 score_caches)

HNSW_SWEEP = (200, 250, 300, 400, 500, 600, 800, 1200, 1600)
NARROW_FRONTIERS = (8, 4, 1)
UNCAPPED = 4096  # the layer-0 round cap of the narrow-frontier rows (a served request may ask at most 64)


def components(defaults: SearchParams) -> dict[str, SearchParams]:
    """The defaults and one change each: what each part of the walk costs in items scored and gives in coverage."""
    uncapped = defaults.rounds[:-1] + (UNCAPPED,)
    out = {"defaults": defaults, "no history seeds": replace(defaults, seeds=0)}
    out.update({f"frontier {f} (round cap {UNCAPPED})": replace(defaults, frontier=f, rounds=uncapped)
                for f in NARROW_FRONTIERS})
    out["ef 1 above layer 0"] = replace(defaults, ef=(1,) * (len(defaults.ef) - 1) + defaults.ef[-1:])
    return out


def _along(curve: list[dict], x: float, given: str, wanted: str) -> float | None:
    """The HNSW curve's `wanted` where its `given` equals x, linear between the swept points (both grow with ef0);
    None beyond its last point, its first point's value before it."""
    xs = np.maximum.accumulate([p[given] for p in curve])
    if x > xs[-1]:
        return None
    return float(np.interp(x, xs, [p[wanted] for p in curve]))


def matched(point: dict, curve: list[dict]) -> dict:
    """HNSW-retrieval at the point's items scored (its coverage there) and at its coverage (the items it needs; at
    most its first point's where that one already covers more)."""
    return {"hnsw_coverage": _along(curve, point["items_scored"], "items_scored", "coverage"),
            "hnsw_items": _along(curve, point["coverage"], "coverage", "items_scored"),
            "hnsw_items_at_most": point["coverage"] < curve[0]["coverage"]}


def measure(val: ScoreCache, test: ScoreCache, graphs, calibration_cache: ScoreCache) -> dict:
    hnsw = {name: [{"ef0": e, **mean_over_graphs(cache, graphs, method="hnsw", ef0=e)} for e in HNSW_SWEEP]
            for name, cache in (("val", val), ("test", test))}
    defaults = default_search(test.num_items)
    calibrations = [calibrate(g, calibration_cache, progress=False) for g in graphs]
    rows = {"calibrated (`nann graph`)": [calibrated(defaults, c) for c in calibrations],
            "size rule (no calibration)": [defaults] * len(graphs),
            "before (DEFAULT_SEARCH)": [DEFAULT_SEARCH] * len(graphs)}
    res = {"hnsw": hnsw["test"], "calibrations": calibrations, "test": {}, "components": {}}
    for name, params in rows.items():
        point = mean_over_graphs(test, graphs, params)
        res["test"][name] = {"walks": [_walk(p) for p in params], **point, **matched(point, hnsw["test"])}
    for name, params in components(defaults).items():
        point = mean_over_graphs(val, graphs, params)
        res["components"][name] = {**point, **matched(point, hnsw["val"])}
    return res


def _hnsw_cells(r: dict, n: int) -> str:
    cov, items = r["hnsw_coverage"], r["hnsw_items"]
    at_most = "≤ " if r["hnsw_items_at_most"] else ""
    need = (f"{at_most}{items / n * 100:.2f}% (beam / HNSW {r['items_scored'] / items:.2f})" if items is not None
            else f"> {HNSW_SWEEP[-1]} ef0")
    return f"{'—' if cov is None else f'{cov:.4f}'} | {need}"


def _walk(p: SearchParams) -> str:
    """A walk in words: its lists per layer and its frontier."""
    return f"ef {'/'.join(map(str, p.ef))}, frontier {p.frontier}"


def _walks(walks: list[str]) -> str:
    """The walk of each build: one where they agree."""
    return walks[0] if len(set(walks)) == 1 else "; ".join(walks) + " (per build)"


def _same_walk(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("ef", "frontier", "descent_ef"))


def _tried(t: dict, chosen: bool) -> str:
    text = (f"{t['frontier']}, {'/'.join(map(str, t['descent_ef']))}, {t['ef']} → {t['validation_coverage']:.4f} / "
            f"{t['scored_fraction'] * 100:.2f}% / {t['rounds']:.0f}" + ("" if t["reached"] else " (short)"))
    return f"**{text}**" if chosen else text


def markdown(res: dict, command: str, graph_seeds: str) -> str:
    n = res["num_items"]
    last_ef = default_search(n).ef[-1]
    users = res["graphs"][0]["result"]["calibrations"][0]["users"]
    lines = header(res, command, graph_seeds,
                   f". Calibrated defaults: each build's walk as `nann graph` calibrates it (of the walks of "
                   f"`nann.calibration.SHAPES`, each at the smallest last-layer ef reaching validation coverage@200 "
                   f"≥ {TARGET} over {users} validation users, the one scoring the fewest items, where more rounds "
                   f"must save {SAVING_PER_DOUBLING:.0%} of them per doubling of the rounds), the rest as the size rule's; size rule (a graph without "
                   f"calibration): "
                   f"{defaults_text(n)}; before the small-catalogue rule (`DEFAULT_SEARCH`): last-layer ef "
                   f"{DEFAULT_SEARCH.ef[-1]}. HNSW-retrieval at matched items: its curve (below) read at the beam's "
                   f"items scored (its coverage there) and at the beam's coverage (the items it needs; the ratio is "
                   f"the beam's items over HNSW's), linear between swept points.")
    for g in res["graphs"]:
        r = g["result"]
        lines += [f"**Graph {g['spec']}**", "",
                  "| search (test users) | coverage | worst 5% | recall-Δ | items scored | % of items | rounds "
                  "| HNSW coverage at the same items | HNSW items for the same coverage |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name}, {_walks(v['walks'])} | {_pt(v, n)} | {_hnsw_cells(v, n)} |"
                  for name, v in r["test"].items()]
        lines += ["", "Calibrations (validation users; per build, each walk tried: frontier, lists above layer 0, "
                  "last-layer ef → coverage / % of items / rounds; the chosen one in bold):"]
        lines += [f"- build {i + 1}: " + "; ".join(_tried(t, _same_walk(t, c)) for t in c["tried"])
                  for i, c in enumerate(r["calibrations"])]
        lines += ["", "HNSW-retrieval on the test users (ef0: coverage / worst 5% / % of items scored / rounds): "
                  + "; ".join(f"{h['ef0']}: {h['coverage']:.4f} / {h['coverage_p5']:.3f} / "
                              f"{h['scored_fraction'] * 100:.2f}% / {h['rounds']:.0f}" for h in r["hnsw"]) + ".", "",
                  f"Where the items go (validation users, the size rule's last-layer ef {last_ef}, one change per "
                  "row):", "",
                  "| walk | coverage | worst 5% | % of items | rounds | HNSW coverage at the same items | "
                  "HNSW items for the same coverage |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['coverage']:.4f} | {v['coverage_p5']:.3f} | {v['scored_fraction'] * 100:.2f}% | "
                  f"{v['rounds']:.0f} | {_hnsw_cells(v, n)} |" for name, v in r["components"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from perf.sections import command_line, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(p, "Search defaults, 10k items", "score:32:100")
    args = p.parse_args(argv)
    command = command_line("perf.search_defaults", argv)
    data, val, _ = score_caches(args)
    users = calibration_users(val.num_items, len(data.val))
    calibration_cache = ScoreCache.build(args.run, data.val, users,
                                         Path(args.run) / "quality" / f"scores_val{users}.npy")
    res = replay_benchmark(args, lambda v, t, graphs: measure(v, t, graphs, calibration_cache))
    report(args.name, markdown(res, command, args.graph_seeds), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
