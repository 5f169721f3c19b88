"""`nann evaluate` reports the model beside popularity and the two-tower baseline trained with it, with intervals."""
from __future__ import annotations

import json

import numpy as np
import torch

from nann.baselines import popularity_hits
from nann.evaluate import Evaluator, brute_force_hits
from nann.model import load_model
from nann.run_dir import RunDir
from nann_cli.main import main as cli_main
from trainer.sampling import load_data
from trainer.train import recall_hits


def test_evaluate_prints_and_writes_the_comparison(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cli_main(["evaluate", "--run", str(tiny_run.run), "--data", str(tiny_run.data), "--users", "40",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recall-all@200 (brute force) on 40 users (95% bootstrap intervals)" in text
    for name in ("attention", "popularity", "popularity (unseen)", "two-tower"):
        assert name in text, name
    compared = json.loads(out.read_text())["baselines"]
    assert compared["users"] == 40
    assert set(compared["recall_all"]) == {"attention", "popularity", "popularity (unseen)", "two-tower"}
    assert len(compared["verdict"]) == 3
    for mean, low, high in (tuple(v.values()) for v in compared["recall_all"].values()):
        assert low <= mean <= high


def test_brute_force_of_a_graphless_two_tower_run(tiny_run, tmp_path):
    """The baseline run has no graph: `--method brute` evaluates it all the same (it refused before)."""
    baseline = RunDir(tiny_run.run).baseline
    assert not baseline.graph.exists()
    assert cli_main(["evaluate", "--run", str(baseline.path), "--data", str(tiny_run.data), "--method", "brute",
                     "--users", "20"]) == 0


def test_the_comparison_is_exact_against_the_trainers_brute_force(tiny_run):
    """brute_force_hits (the runtime's ONNX scorer through the engine) and the trainer's recall_hits (torch) give
    the same hits for the two-tower baseline; the model's hits are those of its own brute force."""
    users = 30
    ev = Evaluator(tiny_run.run, tiny_run.data, users=users)
    model_hits, baselines = ev.comparison(200)
    data = load_data(str(tiny_run.data))
    baseline = RunDir(tiny_run.run).baseline
    expected = recall_hits(load_model(str(baseline.path)), data.test, users, data.max_seq, torch.device("cpu"))
    two_tower = next(b for b in baselines if b.name == "two-tower")
    assert np.array_equal(two_tower.hits, expected)
    assert np.array_equal(two_tower.hits, brute_force_hits(baseline.path, ev.histories(), ev.test.targets, 200))
    assert np.array_equal(model_hits, recall_hits(load_model(str(tiny_run.run)), data.test, users, data.max_seq,
                                                  torch.device("cpu")))
    popular = next(b for b in baselines if b.name == "popularity")
    assert np.array_equal(popular.hits, popularity_hits(data.item_counts, None, ev.test.targets, 200))
