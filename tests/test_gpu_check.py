"""`python -m perf.gpu_check` on CPU (`--device cpu --quick`): the device check's own code, so that it never rots
where no GPU is; its kNN-layered graph builder; its pack. CUDA-graph capture and GPU timings need a GPU machine."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from graph_builder.knn_layers import build_knn_graph, knn
from nann.engine.graph import HnswGraph
from nann.errors import UserError
from nann.scorers.torch_cuda import TorchCudaRuntime
from perf import gpu_check
from perf.gpu_runs import PACK_META, knn_graph, make_pack, random_run
from perf.soak import random_histories


def test_knn_is_exact_across_tiles():
    x = np.random.default_rng(0).standard_normal((700, 8)).astype(np.float32)
    got = knn(torch.from_numpy(x), 6, row_chunk=128, col_chunk=200).numpy()  # rows and columns over several tiles
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.array_equal(got, np.argsort(d, axis=1, kind="stable")[:, :6])


def test_knn_graph_is_a_graph_the_engine_reads(tmp_path):
    emb = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    meta = build_knn_graph(emb, tmp_path / "graph", m=4, seed=3)
    graph = HnswGraph.load(tmp_path / "graph")
    assert meta["builder"] == "knn-layers" and graph.num_items == 2000 and graph.max_level >= 1
    assert graph.levels[graph.entry_point] == graph.max_level
    for level in range(graph.max_level + 1):
        members = graph.nodes_at_level(level)
        indptr, indices = graph.layer(level)
        degree = np.diff(indptr)
        assert (degree[members] == min(8 if level == 0 else 4, len(members) - 1)).all()
        assert degree.sum() == degree[members].sum()  # rows of nodes outside the layer are empty
        assert np.isin(indices, members).all()
    first = graph.neighbours(0)
    assert set(first) == set(np.argsort(((emb - emb[0]) ** 2).sum(1))[1:9])  # layer 0: the 2M nearest


def test_the_pack_refuses_to_exceed_its_limit(tiny_run, tmp_path):
    with pytest.raises(UserError, match="over the 0 MiB"):
        make_pack(tiny_run.run, tiny_run.data, tmp_path / "pack", limit=1000)
    assert not (tmp_path / "pack").exists()


def test_a_missing_pack_is_refused_before_any_work(tmp_path, capsys):
    assert gpu_check.main(["--from", str(tmp_path), "--device", "cpu", "--quick", "--work", str(tmp_path / "w")]) == 2
    assert "is not a pack: make one with `python -m perf.gpu_check --pack" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_quick_check_on_cpu_from_a_pack(tiny_run, tmp_path, capsys):
    """The pack of a trained run, then the whole check on CPU from it: every part runs and reports; the CUDA scorer's
    code (device cpu) scores as the torch model does."""
    pack = tmp_path / "pack"
    assert gpu_check.main(["--pack", str(pack), "--run", str(tiny_run.run), "--data", str(tiny_run.data)]) == 0
    assert "MiB (limit 48 MiB)" in capsys.readouterr().out
    assert json.loads((pack / PACK_META).read_text())["users"] > 0
    code = gpu_check.main(["--device", "cpu", "--quick", "--from", str(pack), "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert code == 0 and res["failed"] == {}, res["failed"]
    printed = out[out.index(f"## {gpu_check.SECTION}\n"):]  # the training steps print before it
    assert (tmp_path / "out" / "gpu_check.md").read_text().strip() in printed and "Failed" not in printed
    parity = {r["scorer"]: r for r in res["parity"]}
    assert parity["fp32 graphs"]["max_rel"] <= 1e-5 and parity[gpu_check.CPU_SCORER]["max_rel"] <= 1e-5
    assert parity["half graphs"]["max_rel"] <= 1e-2
    assert [c["name"] for c in res["catalogues"]] == ["20k", "demo"]
    assert all(r[k] > 0 for r in res["scorer"] for k in r)
    assert {(r["catalogue"], r["search"], r["batch"]) for r in res["engine"]} == {
        (c, s, b) for c in ("20k", "demo") for s in ("defaults", "paper ~1.3%") for b in gpu_check.QUICK.batches}
    assert all(0 < r["scored"] <= 1 for r in res["engine"])
    measured = [r[s] for r in res["engine"] for s in ("gpu", "cpu") if r[s] != "skipped"]  # past the part's budget
    assert all(m["req_s"] > 0 and m["p99_ms"] >= m["p50_ms"] > 0 for m in measured)
    assert all(r["gpu"] != "skipped" and r["cpu"] != "skipped" for r in res["engine"][:len(gpu_check.QUICK.batches)])
    assert {r["gpu_scorer"] for r in res["engine"]} == {"fp32 graphs"}
    assert res["train"]["device"] > 0


class CaptureFails(TorchCudaRuntime):
    def load(self, *args):
        raise RuntimeError("capture failed")


def test_a_scorer_that_fails_leaves_the_others_measured(tmp_path, monkeypatch):
    """A device run is one try: the CUDA-graph variants failing (here: at load) costs their numbers only; the engine
    falls back to the eager scorer and says so."""
    variants = gpu_check.gpu_variants
    monkeypatch.setattr(gpu_check, "gpu_variants", lambda device: {
        label: CaptureFails(device, rt.half, True) if rt.graphs else rt for label, rt in variants(device).items()})
    run = random_run(tmp_path / "run", 2000)
    knn_graph(run, "cpu")
    cat = gpu_check.Catalogue("2k", run, random_histories(np.arange(2000), 40, 0, 50), "")
    plan = replace(gpu_check.QUICK, batches=(1,), tune_steps=1)
    failed = {}
    assert [r["scorer"] for r in gpu_check.parity(cat, "cpu", plan, failed)] == [gpu_check.CPU_SCORER]
    rates = gpu_check.scorer_rates(cat, "cpu", plan, failed)
    assert all("fp32 eager" in r and "fp32 graphs" not in r for r in rates)
    assert "| failed |" in "\n".join(gpu_check._scorer_md(rates))
    rows = gpu_check.engine([cat], "cpu", plan, failed)
    assert {r["gpu_scorer"] for r in rows} == {"fp32 eager"} and all(r["gpu"]["req_s"] > 0 for r in rows)
    assert set(failed) == {"parity half graphs", "parity fp32 graphs", "scorer fp32 graphs", "scorer half graphs",
                           "engine 2k fp32 graphs"}
    assert all(error == "RuntimeError: capture failed" for error in failed.values())
    # past the part's budget, rows are skipped, not measured
    spent = gpu_check.engine([cat], "cpu", replace(plan, budgets={**plan.budgets, "engine": 0}), {})
    assert all(r["gpu"] == r["cpu"] == "skipped" for r in spent)
    assert all("| skipped | | " in line for line in gpu_check._engine_md(spent)[2:])
