"""The pieces of this session's benchmarks that decide a figure: the 0.99 crossing of a curve, the catalogue subsets
of perf.graph_metric, the config rewrite of perf.serving_params (which must never touch the exported original),
and perf.bls_floor end to end against a real tritonserver (no timing assertions)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from perf.graph_metric import items_for_target, subset_cache
from perf.serving_params import repositories, with_setting
from perf.search_defaults import components, matched
from perf.stopping_rule import cheapest

ROOT = Path(__file__).resolve().parents[1]


def test_items_for_target_interpolates_the_crossing():
    points = [{"coverage": 0.98, "scored_fraction": 0.010}, {"coverage": 0.985, "scored_fraction": 0.012},
              {"coverage": 0.995, "scored_fraction": 0.016}]
    assert items_for_target(points) == pytest.approx(1.4)  # halfway between 1.2% and 1.6%
    assert items_for_target([{"coverage": 0.991, "scored_fraction": 0.02}]) == pytest.approx(2.0)
    assert items_for_target(points[:2]) is None


def test_cheapest_is_the_fewest_items_among_the_points_reaching_the_target():
    points = [{"coverage": 0.992, "items_scored": 900}, {"coverage": 0.989, "items_scored": 500},
              {"coverage": 0.995, "items_scored": 700}, {"coverage": 0.999, "items_scored": 800}]
    assert cheapest(points) == 2
    assert cheapest(points[1:2]) is None


def test_matched_reads_the_hnsw_curve_at_the_beams_items_and_coverage():
    curve = [{"items_scored": 100, "coverage": 0.95}, {"items_scored": 200, "coverage": 0.98},
             {"items_scored": 400, "coverage": 0.99}, {"items_scored": 800, "coverage": 0.985}]  # a dip: noise
    m = matched({"items_scored": 300, "coverage": 0.965}, curve)
    assert m["hnsw_coverage"] == pytest.approx(0.985)  # halfway between 200 and 400 items
    assert m["hnsw_items"] == pytest.approx(150) and not m["hnsw_items_at_most"]
    assert matched({"items_scored": 900, "coverage": 0.995}, curve)["hnsw_items"] is None  # beyond the curve
    low = matched({"items_scored": 50, "coverage": 0.9}, curve)
    assert low["hnsw_items"] == 100 and low["hnsw_items_at_most"] and low["hnsw_coverage"] == 0.95


def test_components_change_one_thing_each():
    from dataclasses import fields

    from nann.engine.params import default_search

    defaults = default_search(10_000)
    rows = components(defaults)
    assert rows["defaults"] == defaults
    changed = {name: {f.name for f in fields(p) if getattr(p, f.name) != getattr(defaults, f.name)}
               for name, p in rows.items()}
    assert changed == {"defaults": set(), "no history seeds": {"seeds"}, "ef 1 above layer 0": {"ef"},
                       **{f"frontier {f} (round cap 4096)": {"frontier", "rounds"} for f in (8, 4, 1)}}
    assert all(p.ef[-1] == defaults.ef[-1] for p in rows.values())


def test_subset_keeps_every_history_item_and_remaps_ids():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 100)).astype(np.float32)
    histories = [np.array([5, 7]), np.array([90]), np.array([7, 11, 42])]
    targets = np.array([3, 90, 11])
    ids, cache = subset_cache(scores, histories, targets, size=20, seed=1)
    assert ids.size == 20 and cache.num_items == 20
    assert set(np.concatenate(histories)) <= set(ids.tolist())
    for h, mapped in zip(histories, cache.histories):
        assert ids[mapped].tolist() == h.tolist()
    np.testing.assert_array_equal(cache.scores, scores[:, ids])
    assert cache.targets[0] == (-1 if 3 not in ids else int(np.searchsorted(ids, 3)))
    whole, full = subset_cache(scores, histories, targets, size=0, seed=1)
    assert whole.size == 100 and full.num_items == 100
    with pytest.raises(SystemExit, match="smaller than"):
        subset_cache(scores, histories, targets, size=3, seed=1)


def test_served_efficiency_compares_with_the_offline_engine_in_the_served_arrangement_and_at_its_best():
    """The efficiency line: served req/s at concurrency 16 over (scorer candidates/s ÷ items per query), and the
    offline engine's rows against the same bound: the sharded engine at the batch nearest `retrieve`'s instances ×
    its average batch (the same arrangement) and the fastest row, a one-walk row included."""
    from perf.compare import BEAM_SERVED
    from perf.run import SCORER_SHAPE, offline_markdown, served_efficiency

    from nann.serving.export import RETRIEVE_INSTANCES

    rows = [(1, 1, 100.0, False), (4, 2, 150.0, False), (8, 2, 200.0, False), (16, 2, 240.0, False),
            (16, 1, 250.0, True)]
    res = {"load": {"on": [{"concurrency": 16, "throughput_rps": 120.0, "retrieve_avg_batch": 3.6}]},
           "methods": [{"method": BEAM_SERVED, "items_scored": 1500.0}],
           "scorer": {"ours": {SCORER_SHAPE: {"candidates_per_s": 600_000.0}}},
           "offline_throughput": [{"batch": b, "shards": w, "users": 64, "requests_per_s": rps,
                                   "candidates_per_s": rps * 1500, "scorer_calls_per_batch": 26.0,
                                   **({"one_walk": True} if one else {})} for b, w, rps, one in rows]}
    eff = served_efficiency(res)
    assert eff["bound_rps"] == 400.0 and eff["ratio"] == 0.3
    assert [r["of_bound"] for r in eff["offline"]] == [0.25, 0.375, 0.5, 0.6, 0.625]
    assert RETRIEVE_INSTANCES == 2 and eff["offline_matched"]["batch"] == 8  # 2 x 3.6 -> the batch-8 row
    assert eff["offline_best"].get("one_walk") and eff["served_rps"] / eff["offline_best"]["requests_per_s"] == 0.48
    text = "\n".join(offline_markdown(eff))
    assert "| 16 | one walk | 250.0 |" in text and "batch 8): **0.60**" in text
    del res["offline_throughput"]  # results of an older run: the line without the decomposition
    assert served_efficiency(res)["offline"] == [] and served_efficiency(res)["offline_best"] is None
    assert offline_markdown(served_efficiency(res)) == []


def test_with_setting_rewrites_copies_only(tmp_path):
    repo = tmp_path / "repo"
    for model in ("scorer", "retrieve"):
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "1" / "model.py").write_text("# stub\n")
        (repo / model / "config.pbtxt").write_text(
            'dynamic_batching { max_queue_delay_microseconds: 2000 }\n'
            'parameters: { key: "spinning" value: { string_value: "false" } }\n')
    original = (repo / "scorer" / "config.pbtxt").read_text()
    a = with_setting(repo, tmp_path / "a", ["scorer", "retrieve"], "spinning", "true")
    b = with_setting(repo, tmp_path / "b", ["scorer"], "max_queue_delay_microseconds", "0")
    assert 'string_value: "true"' in (a / "retrieve" / "config.pbtxt").read_text()
    assert "max_queue_delay_microseconds: 0 }" in (b / "scorer" / "config.pbtxt").read_text()
    assert (b / "retrieve" / "config.pbtxt").read_text() == original
    assert (repo / "scorer" / "config.pbtxt").read_text() == original  # the hard-linked original is untouched
    assert os.path.samefile(repo / "scorer" / "1" / "model.py", a / "scorer" / "1" / "model.py")
    with pytest.raises(SystemExit, match="no parameter or field"):
        with_setting(repo, tmp_path / "c", ["scorer"], "no_such_setting", "1")


def test_queue_policy_is_replaced_in_the_exported_dynamic_batcher(tmp_path):
    """perf.overload rewrites the templates' `default_queue_policy` (nested in `dynamic_batching`), and
    perf.load.without_dynamic_batching removes the whole block, nested policy included."""
    from perf.load import block_span, without_dynamic_batching
    from perf.overload import exported_policy, with_queue_policy

    template = (ROOT / "model_repository" / "retrieve" / "config.pbtxt.template").read_text()
    assert "default_queue_policy { max_queue_size: 128 }" in template

    def batcher(text):
        start, end = block_span(text, "dynamic_batching")
        return " ".join(text[start:end].split())

    assert batcher(with_queue_policy(template, "none")) == \
        "dynamic_batching { max_queue_delay_microseconds: $retrieve_queue_delay_us }"
    assert batcher(with_queue_policy(template, "max_queue_size=64+default_timeout_microseconds=250000")) == (
        "dynamic_batching { max_queue_delay_microseconds: $retrieve_queue_delay_us default_queue_policy { "
        "max_queue_size: 64 default_timeout_microseconds: 250000 timeout_action: REJECT } }")
    with pytest.raises(SystemExit, match="unknown queue policy field"):
        with_queue_policy(template, "max_queue_depth=3")
    repo = tmp_path / "repo"
    (repo / "retrieve" / "1").mkdir(parents=True)
    (repo / "retrieve" / "config.pbtxt").write_text(template)
    assert exported_policy(repo, ["retrieve"]) == "retrieve: max_queue_size: 128"
    text = (without_dynamic_batching(repo, tmp_path / "off") / "retrieve" / "config.pbtxt").read_text()
    assert block_span(text, "dynamic_batching") is None and "default_queue_policy" not in text
    assert "instance_group [ { kind: KIND_CPU count: $retrieve_instances } ]\nversion_policy" in text  # the rest kept


def test_with_setting_swaps_the_candidate_grid(tmp_path):
    """`--param grid` takes the named grids and rewrites the escaped JSON string the export writes."""
    from nann.engine.grid import CandidateGrid
    from nann.serving.export import pbtxt_string

    repo = tmp_path / "repo"
    (repo / "retrieve" / "1").mkdir(parents=True)
    padded = pbtxt_string(json.dumps(CandidateGrid().to_json()))
    (repo / "retrieve" / "config.pbtxt").write_text(
        f'parameters: {{ key: "grid" value: {{ string_value: "{padded}" }} }}\n'
        'parameters: { key: "limits" value: { string_value: "{\\"k\\": 1}" } }\n')
    out = with_setting(repo, tmp_path / "u", ["retrieve"], "grid", "unpadded")
    text = (out / "retrieve" / "config.pbtxt").read_text()
    grid = re.search(r'key: "grid" value: \{ string_value: "((?:[^"\\]|\\.)*)"', text).group(1)
    assert CandidateGrid.from_json(json.loads(grid.replace('\\"', '"'))).sizes is None
    assert 'string_value: "{\\"k\\": 1}"' in text  # the other parameters untouched
    with pytest.raises(SystemExit, match="grid values are padded, unpadded"):
        with_setting(repo, tmp_path / "x", ["retrieve"], "grid", "small")


def test_placement_exports_the_run_once_per_place(tiny_run, tmp_path):
    """`--param placement`: the scorer inside `retrieve` (no `scorer` model) and behind BLS, one export each."""
    repos = repositories(tiny_run.run, tmp_path, ["retrieve"], "placement", ["in-process", "bls"], bls=False)
    assert not (repos["in-process"] / "scorer").exists() and (repos["bls"] / "scorer" / "1").is_dir()
    for place in ("in-process", "bls"):
        config = (repos[place] / "retrieve" / "config.pbtxt").read_text()
        assert f'key: "scorer" value: {{ string_value: "{place}" }}' in config
    with pytest.raises(SystemExit, match="placement values are in-process, bls, not gpu"):
        repositories(tiny_run.run, tmp_path / "x", ["retrieve"], "placement", ["gpu"], bls=False)


@pytest.mark.serving
@pytest.mark.timeout(300)
def test_bls_floor_runs_against_a_real_server(capsys):
    from perf.bls_floor import main

    assert main(["--calls", "2", "--repeats", "3", "--candidates", "8", "--tensors", "0,2", "--no-results-md"]) == 0
    out = capsys.readouterr().out
    assert "A request without BLS calls:" in out
    rows = [line for line in out.splitlines() if line.startswith("| 8 |")]
    assert len(rows) == 2 and all(float(r.split("|")[3].split()[0]) > 0 for r in rows)


@pytest.mark.serving
@pytest.mark.timeout(600)
def test_served_overhead_splits_the_served_time_of_the_same_requests(tiny_run, tmp_path):
    """Triton's statistics cover exactly the timed requests: the client's time holds the ensemble's, which holds
    `retrieve`'s, which holds its execute; the offline engine's parts add up to its time."""
    from perf import served_overhead
    from perf.compare import raw_test_histories

    from nann.serving.export import export_repository

    repo = tmp_path / "repo"
    export_repository(tiny_run.run, repo, scorer="onnxruntime")
    histories = raw_test_histories(tiny_run.data, 12)
    m = served_overhead.measure_once(repo, tiny_run.run, histories)
    assert m["timed"] == m["served_requests"] == 12 and m["same_answers"] == 1.0
    assert m["served_ms"] > m["nann_in_server_ms"] >= m["retrieve_in_server_ms"] >= m["retrieve_execute_ms"] > 0
    assert m["encode_ms"] > 0 and m["walk_ms"] > 0 and m["encode_ms"] + m["walk_ms"] <= m["offline_ms"]
    text = served_overhead.markdown([m, m], 12, "python -m perf.served_overhead", {
        "nproc": 2, "cpu": "x", "date": "d", "git_describe": "g", "loadavg_at_start": None})
    assert f"| served end to end (NannClient, gRPC) | {m['served_ms']:.2f} [{m['served_ms']:.2f}–" in text
    assert f"mean latency **{m['served_ms'] / m['offline_ms']:.2f}**" in text


def test_placement_ratios_pair_each_repeat_and_concurrency():
    """In-process / BLS req/s are taken per alternating pair (same repeat), never across repeats."""
    from perf.run import median_rows, placement_markdown, placement_ratios

    def row(rep, c, rps):
        return {"repeat": rep, "concurrency": c, "throughput_rps": rps, "p50_us": 1e6 / rps, "p99_us": 2e6 / rps}

    runs = {"in-process": [row(0, 1, 90), row(0, 16, 300), row(1, 1, 60), row(1, 16, 200)],
            "bls": [row(0, 1, 30), row(0, 16, 150), row(1, 1, 40), row(1, 16, 200)]}
    ratios = placement_ratios(runs)
    assert [(r["concurrency"], r["median"], r["spread"]) for r in ratios] == [(1, 2.25, [1.5, 3.0]),
                                                                              (16, 1.5, [1.0, 2.0])]
    assert [r["throughput_rps"] for r in median_rows(runs["bls"])] == [35, 175]
    text = "\n".join(placement_markdown({"repeats": 2, "runs": runs, "ratios": ratios}))
    assert "| in-process | 16 | 250.0 |" in text and "concurrency 16: **1.50** [1.00–2.00]" in text
    assert placement_markdown(None) == []


def test_scorer_rounds_layout_counts_the_padding_of_ragged_runs():
    """[users, longest run] slots over candidates: two users with runs of 3 and 1 pad to 2 x 3 = 6 slots for 4."""
    from perf.scorer_rounds import Call, layout

    def call(owner, users):
        return Call({"state": np.zeros((users, 2), np.float32)}, np.asarray(owner, np.int64),
                    np.zeros((len(owner), 4), np.float32))

    shape = layout([call([0, 0, 0, 1], 2), call([0, 1], 2)])
    assert shape["calls"] == 2 and shape["candidates"] == 6 and shape["users_per_call"] == 2.0
    assert shape["layout_padding"] == pytest.approx((6 + 2) / 6)


def test_stress_counts_a_junit_report(tmp_path):
    from perf.stress import junit_counts

    report = tmp_path / "run.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest" tests="4">'
        '<testcase classname="tests.test_faults" name="test_ok" time="1.0"/>'
        '<testcase classname="tests.test_faults" name="test_bad" time="1.0">'
        '<failure message="AssertionError: 3 failed requests&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_serving" name="test_setup" time="0.1"><error message="fixture died"/></testcase>'
        '<testcase classname="tests.test_tensorrt" name="test_gpu" time="0.0"><skipped message="no GPU"/></testcase>'
        '</testsuite></testsuites>')
    counts = junit_counts(report)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped")} == \
        {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert counts["failures"] == ["tests.test_faults::test_bad (failure): AssertionError: 3 failed requests",
                                  "tests.test_serving::test_setup (error): fixture died"]
