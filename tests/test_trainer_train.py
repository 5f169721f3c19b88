"""End-to-end `nann train` on a tiny prepared directory: artifacts, resume, data-parallel under torchrun.

Run as a script (by torchrun, from test_ddp_replicas_identical) it trains and dumps this rank's weights."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nann_cli.main import main as cli_main  # noqa: E402
from test_trainer_data import make_prepared  # noqa: E402


def _train_args(data, run, **kw):
    a = dict(data=str(data), run=str(run), arch="attention", fgsm_eps=3e-4, negatives=10, epochs=1, batch_size=64,
             lr=3e-3, max_samples=0, eval_every=0, eval_users=0, device="cpu", seed=0)
    a.update(kw)
    return argparse.Namespace(**a)


def _cli(data, run, *extra):
    return cli_main(["train", "--data", str(data), "--run", str(run), "--negatives", "10", "--batch-size", "64",
                     "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data") / "d", n_items=200, n_users=120, seq_len=15)


def _log(run):
    with open(os.path.join(run, "train_log.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_train_writes_artifacts_and_resumes(data, tmp_path):
    run = tmp_path / "run"
    assert _cli(data, run, "--epochs", "1", "--eval-every", "10", "--baseline", "none") == 0
    for name in ("config.json", "model.safetensors", "item_embeddings.npy", "item_embeddings_fp16.npy",
                 "user_encoder.onnx", "scorer.onnx", "scorer_ids.onnx", "onnx_io.json", "items.npy",
                 "item_category.npy", "train_log.jsonl", "checkpoint/model.safetensors",
                 "checkpoint/optimizer.safetensors", "checkpoint/state.json"):
        assert (run / name).exists(), name
    assert np.array_equal(np.load(run / "items.npy"), np.load(os.path.join(data, "items.npy")))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["arch"] == "attention" and cfg["num_items"] == 200 and cfg["emb_dim"] == 64
    st1 = json.loads((run / "checkpoint/state.json").read_text())
    steps1 = st1["global_step"]
    assert st1["epoch"] == 1 and steps1 == int(np.ceil(120 * 14 / 64))
    log1 = _log(run)
    assert any(r["kind"] == "val" for r in log1) and log1[-1]["kind"] == "test"
    assert 0.0 <= log1[-1]["recall_all@200"] <= 1.0
    # a second call with more epochs continues from the checkpoint
    assert _cli(data, run, "--epochs", "2", "--baseline", "none") == 0
    st2 = json.loads((run / "checkpoint/state.json").read_text())
    assert st2["epoch"] == 2 and st2["global_step"] == 2 * steps1
    train_steps = [r["step"] for r in _log(run) if r["kind"] == "train"]
    assert train_steps == sorted(train_steps) and train_steps[-1] > steps1
    # the ONNX runtime serves the trained model
    from nann.runtime import ModelRuntime
    rt = ModelRuntime.load(run)
    s = rt.score(rt.encode([[1, 2, 3]]), np.zeros(200, np.int64), np.arange(200))
    assert np.isfinite(s).all()


def test_train_prints_and_writes_the_baselines(data, tmp_path, capsys):
    from trainer.train import denormals_flushed

    run = tmp_path / "run"
    before = denormals_flushed()
    assert _cli(data, run, "--epochs", "1", "--max-samples", "640") == 0
    assert denormals_flushed() == before  # training flushes denormals, then restores the process's setting
    out = capsys.readouterr().out
    assert "two-tower baseline" in out and "recall-all@200 (brute force) on" in out
    for name in ("attention", "popularity", "popularity (unseen)", "two-tower"):
        assert f"  {name} " in out, name
    summary = json.loads((run / "baselines.json").read_text())
    assert set(summary["recall_all"]) == {"attention", "popularity", "popularity (unseen)", "two-tower"}
    assert json.loads((run / "baseline" / "config.json").read_text())["arch"] == "two-tower"
    assert _cli(data, tmp_path / "alone", "--epochs", "1", "--max-samples", "640", "--baseline", "none") == 0
    assert not (tmp_path / "alone" / "baseline").exists()
    assert "two-tower" not in json.loads((tmp_path / "alone" / "baselines.json").read_text())["recall_all"]


def test_best_model_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    from trainer.train import BestModel

    model = torch.nn.Linear(2, 1)
    best = BestModel(str(tmp_path), patience=2)
    for epoch, (value, weight) in enumerate([(0.3, 1.0), (0.5, 2.0), (0.4, 3.0), (0.45, 4.0)], start=1):
        model.weight.data.fill_(weight)
        best.update(model, value, epoch)
        assert best.exhausted() == (epoch == 4)
    assert (best.value, best.epoch, best.stale) == (0.5, 2, 2)
    best.restore(model)
    assert model.weight.data.eq(2.0).all()
    again = BestModel.resume(str(tmp_path), {"best": best.state()}, patience=2)  # a resumed run
    model.weight.data.fill_(9.0)
    again.restore(model)
    assert model.weight.data.eq(2.0).all() and again.exhausted()
    assert not BestModel(str(tmp_path), patience=0, stale=10).exhausted()


def test_a_candidate_is_kept_unless_beaten_and_does_not_start_the_patience(tmp_path):
    """Epoch 0 (the two-tower model as this model) is kept unless a trained epoch beats it; the patience counts the
    trained epochs' own progress, so training that starts below the candidate still runs until it stops improving."""
    from trainer.train import BestModel

    model = torch.nn.Linear(2, 1)
    best = BestModel(str(tmp_path), patience=2)
    model.weight.data.fill_(7.0)
    best.candidate(model, 0.6)
    for epoch, (value, weight) in enumerate([(0.3, 1.0), (0.4, 2.0), (0.5, 3.0), (0.55, 4.0), (0.5, 5.0),
                                             (0.52, 6.0)], start=1):
        model.weight.data.fill_(weight)
        best.update(model, value, epoch)
        assert best.exhausted() == (epoch == 6)  # improving on its own best (0.3 .. 0.55) keeps it training
    best.restore(model)
    assert (best.value, best.epoch) == (0.6, 0) and model.weight.data.eq(7.0).all()
    best.update(model, 0.7, 7)
    assert (best.value, best.epoch, best.stale) == (0.7, 7, 0)
    resumed = BestModel.resume(str(tmp_path), {"best": best.state()}, patience=2)
    assert resumed.trained == 0.7


def test_user_errors(data, tmp_path, capsys):
    assert _cli(tmp_path / "nope", tmp_path / "r") == 2
    assert "error" in capsys.readouterr().err
    run = tmp_path / "r2"
    assert _cli(data, run, "--max-samples", "64") == 0
    assert cli_main(["train", "--data", str(data), "--run", str(run), "--arch", "mlp", "--device", "cpu",
                     "--max-samples", "64"]) == 2


@pytest.mark.parametrize("arch", ["mlp", "two-tower"])
def test_other_archs_train(data, tmp_path, arch):
    assert _cli(data, tmp_path / arch, "--arch", arch, "--max-samples", "640", "--fgsm-eps", "0") == 0
    assert (tmp_path / arch / "scorer.onnx").exists()


def test_ddp_replicas_identical(data, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), str(data), str(run), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    from safetensors.numpy import load_file
    a, b = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if np.issubdtype(a[k].dtype, np.floating):
            assert np.allclose(a[k], b[k], rtol=0, atol=1e-6), k
        else:
            assert np.array_equal(a[k], b[k]), k
    st = json.loads((run / "checkpoint/state.json").read_text())
    assert st["global_step"] == (480 // 2) // 32
    assert (run / "scorer.onnx").exists()


def _ddp_worker(data, run, out):
    import faulthandler

    import torch

    faulthandler.enable()  # a rank that dies of a signal (SIGABRT in C++) prints where its Python was
    from safetensors.torch import save_file

    from trainer.train import end_worker, train_run

    model = train_run(_train_args(data, run, max_samples=480, batch_size=32)).model
    rank = int(os.environ["RANK"])
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              os.path.join(out, f"rank{rank}.safetensors"))
    assert torch.distributed.is_initialized() is False
    end_worker(0)  # as `nann train` ends its workers (its docstring says why)


if __name__ == "__main__":
    _ddp_worker(*sys.argv[1:4])


def test_a_resumed_run_that_stopped_early_trains_no_more(data, tmp_path, capsys):
    """Resuming a run whose patience ran out (the checkpoint of its last epoch says so) keeps its model and trains
    no further epoch, even with a larger --epochs."""
    run = tmp_path / "run"
    assert _cli(data, run, "--epochs", "1", "--baseline", "none", "--patience", "1") == 0
    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["best"]["stale"] = 1  # as if epoch 1 had not improved on an earlier best: the run stopped early
    state_file.write_text(json.dumps(state))
    steps = state["global_step"]
    capsys.readouterr()
    assert _cli(data, run, "--epochs", "3", "--baseline", "none", "--patience", "1") == 0
    assert "stopped early at epoch 1" in capsys.readouterr().out
    after = json.loads(state_file.read_text())
    assert (after["epoch"], after["global_step"]) == (1, steps)
    assert not [r for r in _log(run) if r["kind"] == "train" and r["step"] > steps]


def test_nann_train_lets_idle_torch_threads_sleep_unless_told_otherwise(tmp_path, monkeypatch):
    """`nann train` sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads beside a busy process ran 7x
    slower: perf.bench_threads); a value the user set is kept."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli_main(["train", "--data", str(tmp_path / "none"), "--run", str(tmp_path / "run")]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli_main(["train", "--data", str(tmp_path / "none"), "--run", str(tmp_path / "run")]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_run_no_epoch_of_which_beats_the_two_tower_model_trains_on_from_it(data, tmp_path, monkeypatch, capsys):
    """Where no epoch from random weights beats epoch 0 (the two-tower model as this model), `nann train` goes on from
    the two-tower weights, what it copied at recipe.WARM_LR_SCALE of the learning rate, with the patience counted from
    epoch 0's recall; it keeps the best epoch of either phase, and a resumed run stays in the second phase."""
    import trainer.train as train
    from nann.model import load_model
    from safetensors.torch import load_file

    two_tower = tmp_path / "two-tower"
    assert _cli(data, two_tower, "--arch", "two-tower", "--epochs", "1", "--baseline", "none") == 0
    tt_emb = load_model(str(two_tower)).state_dict()["id_emb.weight"]
    recalls = iter([0.5, 0.1, 0.1, 0.6, 0.55, 0.52])  # epoch 0; two epochs from random weights; the second phase
    moved = []

    def fake_recall(model, *a, **kw):
        moved.append(float((model.state_dict()["id_emb.weight"] - tt_emb).abs().max()))
        return next(recalls)

    monkeypatch.setattr(train, "recall_all", fake_recall)
    run = tmp_path / "run"
    args = _train_args(data, run, fgsm_eps=0.0, epochs=2, patience=1, warm_from=str(two_tower))
    capsys.readouterr()
    train.train_run(args)
    out = capsys.readouterr().out
    assert "no epoch from random weights beat the two-tower model (epoch 0): training on from it (epochs 3..4)" in out
    assert "keeping the model of epoch 3 (val recall-all@200 0.6000), trained on from the two-tower model after " \
           "epoch 2" in out
    # epoch 0 is the two-tower model; the random-weight epochs are far from it, the second phase's first epoch near
    assert moved[0] == 0.0 and moved[3] < 0.2 * min(moved[1:3])
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert (state["refine_from"], state["epoch"], state["best"]["epoch"]) == (2, 4, 3)
    assert [g["lr"] for g in state["optimizers"]["adam"]] == [args.lr, args.lr * train.recipe.WARM_LR_SCALE]
    best = load_file(str(run / "checkpoint" / "best.safetensors"))
    assert torch.equal(best["id_emb.weight"], load_model(str(run)).state_dict()["id_emb.weight"])
    assert [r["refine_from"] for r in _log(run) if r["kind"] == "best"] == [2]
    # resumed with more epochs: the second phase goes on (its optimizer groups reload) until its patience is spent
    state["best"]["stale"] = 0
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    train.train_run(argparse.Namespace(**{**vars(args), "epochs": 3}))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert (state["refine_from"], state["epoch"], state["best"]["epoch"]) == (2, 5, 3)
