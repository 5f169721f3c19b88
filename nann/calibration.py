"""The walk of a catalogue below SCALING_BASE_ITEMS, measured on its model when its graph is built.

The walk a catalogue needs for coverage@200 ≥ 0.99 is set by the model's score landscape and its graph, not by the
catalogue size (perf/RESULTS.md, "Search defaults against HNSW-retrieval": last-layer ef 350–900 across graph builds of
synthetic 10k items, 200–250 on a weakly trained model's 20k). So `nann graph` replays walks (the real engine against
the exact scores of the run's validation users, `nann.replay.ScoreCache`) and keeps the one that reaches TARGET
validation coverage@200 scoring the fewest items. Its shapes (SHAPES): the defaults' frontier and descent, a narrower
descent, narrower frontiers; for each the smallest ef of EF_LADDER that reaches TARGET. A shape of more scoring rounds
(a narrower frontier: each round expands fewer entries, so a walk takes more of them, and each costs a request latency)
is kept only if it scores SAVING_PER_DOUBLING fewer items per doubling of the rounds than the best of fewer rounds
(`better_walk`). The graph's meta holds what was
chosen and measured (`nann.run_dir.GraphDir.CALIBRATION`), and `GraphDir.search_defaults` gives it to every search of
the catalogue (`nann.engine.params.calibrated`). TARGET sits above 0.99 so that users the calibration never saw (test
users, served users) still get ≥ 0.99: the largest drop from validation to test measured on six catalogues is 0.0015
(perf/RESULTS.md), 0.003 keeps twice that in reserve.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from tqdm import tqdm

from nann.engine.params import SCALING_BASE_ITEMS, SearchParams, calibrated, default_search
from nann.errors import UserError
from nann.replay import ScoreCache

TARGET = 0.993  # validation coverage@200 the calibrated walk must reach (0.99 on unseen users, with a margin)
EF_LADDER = (*range(200, 500, 25), *range(500, 1001, 50), 1200, 1400, 1600, 2000, 2400, 3200, 4096)  # ≤ the served max
# The walks tried, fewest scoring rounds first: the defaults' frontier and descent; a descent of one entry on the top
# layers and ten on the layer above 0 (on a weak model the wider one scores a sixth of the items for nothing); then
# frontiers of 8 and 4 (the walk needs about twice and four times the rounds, within the defaults' round cap).
NARROW_DESCENT = (1, 1, 10)
SHAPES = tuple({"frontier": frontier, "descent_ef": descent}
               for frontier in (None, 8, 4) for descent in (None, NARROW_DESCENT))
SAVING_PER_DOUBLING = 0.10  # the share of items a walk must save for each doubling of its rounds (the price of latency)
SCORE_BUDGET = 50_000_000  # scores computed for the brute force: users × items (trainer.recipe's validation budget)
MOST_USERS, LEAST_USERS = 2_000, 200


def calibration_users(num_items: int, available: int) -> int:
    """Validation users a calibration checks by brute force: SCORE_BUDGET scores, between LEAST_USERS and MOST_USERS,
    at most the `available` ones."""
    return min(available, max(LEAST_USERS, min(MOST_USERS, SCORE_BUDGET // max(1, num_items))))


def _shape(base: SearchParams, shape: dict) -> dict:
    """A SHAPES entry as a calibration record's fields, its Nones read as ``base``'s."""
    return {"frontier": base.frontier if shape["frontier"] is None else shape["frontier"],
            "descent_ef": list(base.ef[:-1] if shape["descent_ef"] is None else shape["descent_ef"])}


def calibrate(graph, cache: ScoreCache, base: SearchParams | None = None, target: float = TARGET,
              shapes=SHAPES, progress: bool = True) -> dict:
    """The walk ``graph`` needs over ``cache``'s users: for each of ``shapes`` (on ``base``, default the catalogue's
    size-rule defaults) the smallest ef of EF_LADDER (at least ``base``'s top_m) whose validation coverage@top_m
    reaches ``target``; of those, the fewest items scored, where a shape of more rounds must save items in proportion
    (`better_walk`). When no shape reaches the target: the first shape at the largest ef
    ("reached" false). Returns what goes into the graph's meta (`nann.engine.params.calibrated` reads it): ef,
    frontier, descent_ef, validation coverage, worst 5% of users, share of items scored, scoring rounds, users,
    target, reached, and every shape's point ("tried")."""
    base = base or default_search(cache.num_items)
    ladder = [ef for ef in EF_LADDER if ef >= base.top_m]
    tried, best = [], None
    with tqdm(total=len(shapes), desc="calibrating the search defaults", unit="walk", file=sys.stderr,
              disable=not progress) as bar:
        for shape in map(lambda s: _shape(base, s), shapes):
            previous = None
            for ef in ladder:
                record = {"ef": ef, **shape}
                point = cache.replay(graph, calibrated(base, record)).summary(cache.num_items)
                bar.set_postfix(frontier=shape["frontier"], ef=ef, coverage=f"{point['coverage']:.4f}")
                if (point["coverage"] >= target or (best and point["scored_fraction"] >= best["scored_fraction"])
                        or (previous and point["scored_fraction"] <= previous * 1.001)):
                    break  # reached; dearer than a walk that reached it; or the round cap ends it: a wider list
                previous = point["scored_fraction"]  # would only cost more, or nothing at all
            bar.update()
            record.update({"validation_coverage": round(point["coverage"], 5),
                           "validation_coverage_p5": round(point["coverage_p5"], 5),
                           "scored_fraction": round(point["scored_fraction"], 5), "rounds": round(point["rounds"], 2),
                           "reached": point["coverage"] >= target})
            tried.append(record)
            if record["reached"] and (best is None or better_walk(record, best)):
                best = record
    chosen = best or tried[0]  # none reached: the defaults' shape at the last ef it tried
    return {**chosen, "users": cache.num_users, "target": target, "tried": tried}


def better_walk(record: dict, best: dict) -> bool:
    """Whether ``record`` (reaching the target) replaces ``best``: it scores fewer items, and where it takes more
    rounds, at least SAVING_PER_DOUBLING of them per doubling of the rounds (3 times the rounds: 16% of the items)."""
    saving = 1 - record["scored_fraction"] / best["scored_fraction"]
    more_rounds = max(1.0, record["rounds"] / best["rounds"])
    return saving > 0 and saving >= SAVING_PER_DOUBLING * math.log2(more_rounds)


def check_calibration_data(data_dir):
    """The validation users of the prepared data at ``data_dir`` (a run's data), UserError when there are none."""
    from nann.data.prepared import PreparedData

    if not data_dir or not Path(data_dir).is_dir():
        raise UserError(f"calibrating the search defaults needs the run's validation users, and the prepared data "
                        f"{data_dir!r} is not a directory: pass --data DATA_DIR (the prepared data the run was trained "
                        f"on), or --no-calibrate (the last-layer ef then follows the catalogue size)")
    val = PreparedData.load(str(data_dir)).val
    if len(val) == 0:
        raise UserError(f"{data_dir} has no validation users to calibrate the search defaults on: prepare it with "
                        f"--val-users N, or pass --no-calibrate (the last-layer ef then follows the catalogue size)")
    return val


def calibrate_run(run_dir, graph, data_dir, progress: bool = True) -> dict:
    """`calibrate` on a run's validation users (the prepared data at ``data_dir``, the run's data): the brute force of
    `calibration_users` of them with the run's model, then the ladder. UserError when there are none."""
    val = check_calibration_data(data_dir)
    if graph.num_items >= SCALING_BASE_ITEMS:
        raise ValueError(f"calibration is for catalogues below {SCALING_BASE_ITEMS:,} items, got {graph.num_items:,}")
    cache = ScoreCache.build(run_dir, val, calibration_users(graph.num_items, len(val)), None, progress=progress)
    if cache.num_items != graph.num_items:
        raise UserError(f"the graph has {graph.num_items} items but the model {cache.num_items}: rebuild the graph "
                        f"with `nann graph --run {run_dir}`")
    return calibrate(graph, cache, progress=progress)


def describe(calibration: dict) -> str:
    """One line about a calibration, as `nann graph` prints it."""
    walk = f"last-layer ef {calibration['ef']}"
    if "frontier" in calibration:
        walk += (f", frontier {calibration['frontier']}, lists above layer 0 "
                 f"{'/'.join(map(str, calibration['descent_ef']))}")
    line = (f"search defaults: {walk}: validation coverage@200 "
            f"{calibration['validation_coverage']:.4f} over {calibration['users']} users scoring "
            f"{calibration['scored_fraction'] * 100:.2f}% of the items in {calibration['rounds']:.0f} rounds "
            f"(target {calibration['target']})")
    if calibration["reached"]:
        return line
    return (f"{line}\nWARNING: no walk up to ef {calibration['ef']} reaches the target on this graph, so the defaults "
            f"take the largest: rebuild it with --metric score or a larger --m / --ef-construction, or check the model")
