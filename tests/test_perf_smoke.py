"""Smoke test of `nann perf --quick`: every number is produced and finite. No timing assertions (shared CI
machine). The load-test part skips with the reason when perf_analyzer cannot run here (e.g. no libb64-0d);
the side-by-side comparison and the served-vs-offline measurement must still run."""
from __future__ import annotations

import json
import math
import os

import pytest

from nann_cli.main import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.serving, pytest.mark.timeout(600)]

METHOD_NUMBERS = ("recall", "recall_all", "coverage_own", "overlap_nann_brute", "latency_ms_median", "latency_ms_p99")
LOAD_NUMBERS = ("throughput_rps", "p50_us", "p90_us", "p99_us", "avg_us", "server_compute_infer_us",
                "retrieve_avg_batch")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def perf_quick(tmp_path_factory):
    from perf.load import PerfAnalyzerUnavailable, ensure_perf_analyzer

    try:  # never installs from a test: only checks
        ensure_perf_analyzer(install=False)
        load_reason = None
    except PerfAnalyzerUnavailable as e:
        load_reason = str(e)
    out = tmp_path_factory.mktemp("perf")
    argv = ["perf", "--quick", "--out", str(out)] + (["--skip-load"] if load_reason else [])
    assert cli_main(argv) == 0
    return out, json.loads((out / "results.json").read_text()), load_reason


def test_comparison_numbers(perf_quick):
    out, summary, _ = perf_quick
    assert summary["machine"]["nproc"] and summary["command"].startswith("nann perf --quick")
    (res,) = summary["results"]
    methods = {r["method"]: r for r in res["methods"]}
    assert len(methods) == 9, list(methods)
    for name, r in methods.items():
        for key in METHOD_NUMBERS:
            assert _finite(r[key]), (name, key, r[key])
            if key not in ("latency_ms_median", "latency_ms_p99"):
                assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert r["latency_queries"] > 0
        if r["items_scored"] is not None:
            assert 0 < r["items_scored"] <= res["items"] * 2, (name, r["items_scored"])  # HNSW may rescore
    assert methods["brute force (NANN model)"]["coverage_own"] == 1.0
    for key, value in res["ratios"].items():
        # a recall gain over a two-tower retriever has no value when that retriever's recall is 0
        assert _finite(value) or (value is None and key.startswith("nann_recall_over_")), (key, value)
    (so,) = res["served_vs_offline"]  # one run in --quick (three in the full run)
    assert _finite(so["served_over_offline_median"]) and so["served"]["latency_queries"] > 0
    assert _finite(so["served_over_offline_paired"])
    assert so["answer_overlap"] > 0.9   # the server and the offline engine run the same search
    scorer = res["scorer"]
    for backend in ("onnxruntime", "torch"):
        assert _finite(scorer["reference"][backend]["gflops"]) and scorer["reference"][backend]["gflops"] > 0
    for shape in ("onnxruntime 1x16000", "onnxruntime 8x2000", "torch 1x16000", "torch 8x2000"):
        assert _finite(scorer["ours"][shape]["of_reference"]) and scorer["ours"][shape]["of_reference"] > 0, shape
    rounds = res["scorer_rounds"]  # the walk's recorded scorer calls replayed against 8 x 2,000
    assert rounds["calls"] > 0 and rounds["layout_padding"] >= 1.0
    for key in ("rounds_over_bound", "rounds_parallel_over_bound"):
        assert _finite(rounds[key]["median"]) and rounds[key]["median"] > 0, key
    offline = res["offline_throughput"]
    cpus = len(os.sched_getaffinity(0))  # the sharded engine walks min(batch, CPUs) shards in parallel
    assert [(r["batch"], r["shards"], bool(r.get("one_walk"))) for r in offline] == \
        [(b, min(b, cpus), False) for b in (1, 4, 8, 16)] + [(16, 1, True)]
    for r in offline:
        assert r["users"] > 0 and all(_finite(r[n]) and r[n] > 0 for n in
                                      ("requests_per_s", "candidates_per_s", "scorer_calls_per_batch")), r
    assert (out / f"compare_v{res['items_requested']}.csv").is_file()
    md = (out / "RESULTS.md").read_text()
    assert "| NANN beam (served defaults) |" in md and "nann perf --quick" in md
    assert "| reference, onnxruntime |" in md and "| ours, onnxruntime 8x2000 |" in md


def test_load_numbers(perf_quick):
    out, summary, load_reason = perf_quick
    if load_reason:
        pytest.skip(f"perf_analyzer cannot run here: {load_reason}")
    (res,) = summary["results"]
    load = res["load"]
    assert "skipped" not in load, load
    assert [r["concurrency"] for r in load["on"]] == [1, 4]
    for key in ("on", "off", "on_again"):
        assert load[key], key
        for row in load[key]:
            for n in LOAD_NUMBERS:
                assert _finite(row.get(n)), (key, row["concurrency"], n, row.get(n))
    for r in load["batching_ratios"]:
        for n in ("throughput_on_over_off", "p50_off_over_on", "p99_off_over_on"):
            assert _finite(r[n]) and r[n] > 0, (n, r)
    tag = f"_v{res['items_requested']}"
    for name in (f"load_batching_on{tag}.csv", f"load_batching_off{tag}.csv", f"load_batching_ratio{tag}.csv",
                 f"latency_throughput{tag}.png", f"latency_throughput_placement{tag}.png"):
        assert (out / name).stat().st_size > 0, name
    placed = res["placement"]  # the same run with its scorer behind BLS, side by side (once in --quick)
    for name in ("in-process", "bls"):
        assert sorted((r["repeat"], r["concurrency"]) for r in placed["runs"][name]) == [(0, 1), (0, 16)], name
    assert [r["concurrency"] for r in placed["ratios"]] == [1, 16]
    assert all(_finite(r["median"]) and r["median"] > 0 and r["pairs"] == 1 for r in placed["ratios"])
    assert "Scorer inside `retrieve` (the export) vs behind BLS" in (out / "RESULTS.md").read_text()
