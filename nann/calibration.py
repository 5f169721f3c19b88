"""The last-layer ef of a catalogue below SCALING_BASE_ITEMS, measured on its model when its graph is built.

The list a walk needs for coverage@200 ≥ 0.99 is set by the model's score landscape and its graph, not by the
catalogue size (perf/RESULTS.md, "Search defaults against HNSW-retrieval": ef 350–900 across graph builds of
synthetic 10k items, 200–250 on a weakly trained model's 20k). So `nann graph` replays the default walk (the real engine
against the exact scores of the run's validation users, `nann.replay.ScoreCache`) over EF_LADDER and keeps the smallest
ef whose validation coverage@200 reaches TARGET; the graph's meta holds it and what was measured
(`nann.run_dir.GraphDir.CALIBRATION`), and `GraphDir.search_defaults` gives it to every search of the catalogue. TARGET
sits above 0.99 so that users the calibration never saw (test users, served users) still get ≥ 0.99: the largest drop
from validation to test measured on six catalogues is 0.0015 (perf/RESULTS.md), 0.003 keeps twice that in reserve.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from nann.engine.params import SCALING_BASE_ITEMS, SearchParams, default_search, with_last_ef
from nann.errors import UserError
from nann.replay import ScoreCache

TARGET = 0.993  # validation coverage@200 the calibrated ef must reach (0.99 on unseen users, with a margin)
EF_LADDER = (*range(200, 1001, 50), 1200, 1400, 1600, 2000, 2400, 3200, 4096)  # at most the served maximum ef
SCORE_BUDGET = 50_000_000  # scores computed for the brute force: users × items (trainer.recipe's validation budget)
MOST_USERS, LEAST_USERS = 2_000, 200


def calibration_users(num_items: int, available: int) -> int:
    """Validation users a calibration checks by brute force: SCORE_BUDGET scores, between LEAST_USERS and MOST_USERS,
    at most the `available` ones."""
    return min(available, max(LEAST_USERS, min(MOST_USERS, SCORE_BUDGET // max(1, num_items))))


def calibrate(graph, cache: ScoreCache, base: SearchParams | None = None, target: float = TARGET,
              progress: bool = True) -> dict:
    """The smallest ef of EF_LADDER (at least ``base``'s top_m) at which ``base`` (default: the catalogue's size-rule
    defaults) on ``graph`` reaches validation coverage@top_m ≥ ``target`` over ``cache``'s users; the largest when none
    does ("reached" false). Returns what goes into the graph's meta: ef, validation coverage, worst 5% of users,
    share of items scored, scoring rounds, users, target, reached."""
    base = base or default_search(cache.num_items)
    ladder = [ef for ef in EF_LADDER if ef >= base.top_m]
    with tqdm(total=len(ladder), desc="calibrating the last-layer ef", unit="ef", file=sys.stderr,
              disable=not progress) as bar:
        for ef in ladder:
            point = cache.replay(graph, with_last_ef(base, ef)).summary(cache.num_items)
            bar.update()
            bar.set_postfix(ef=ef, coverage=f"{point['coverage']:.4f}")
            if point["coverage"] >= target:
                break
    return {"ef": ef, "validation_coverage": round(point["coverage"], 5),
            "validation_coverage_p5": round(point["coverage_p5"], 5),
            "scored_fraction": round(point["scored_fraction"], 5), "rounds": round(point["rounds"], 2),
            "users": cache.num_users, "target": target, "reached": point["coverage"] >= target}


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
    line = (f"search defaults: last-layer ef {calibration['ef']}: validation coverage@200 "
            f"{calibration['validation_coverage']:.4f} over {calibration['users']} users scoring "
            f"{calibration['scored_fraction'] * 100:.2f}% of the items in {calibration['rounds']:.0f} rounds "
            f"(target {calibration['target']})")
    if calibration["reached"]:
        return line
    return (f"{line}\nWARNING: no ef up to {calibration['ef']} reaches the target on this graph, so the defaults take "
            f"the largest: rebuild it with --metric score or a larger --m / --ef-construction, or check the model")
