"""ONNX export parity: ONNX Runtime vs the full torch model, for all three architectures."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer.export import write_run_artifacts
from nann.model import ARCHS, ModelConfig, NANNModel
from nann.model_split import state_names

try:
    from tests.test_trainer_model import randomize_bn
except ImportError:  # tests/ is not a package
    from test_trainer_model import randomize_bn


def make_run(run_dir, arch, n_items=150, seed=0, max_seq=16):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=n_items, num_categories=5, arch=arch, max_seq=max_seq)
    model = randomize_bn(NANNModel(cfg, torch.randint(0, 5, (n_items,))), seed)
    write_run_artifacts(model, str(run_dir))
    return model


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-6, np.abs(b).max()))


@pytest.fixture(scope="module", params=ARCHS)
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"run_{request.param}")
    return d, make_run(d, request.param)


def test_onnx_io_json(run):
    d, model = run
    io = json.loads((d / "onnx_io.json").read_text())
    assert [s["name"] for s in io["state"]] == state_names(model.cfg)
    names = [i["name"] for i in io["scorer"]["inputs"]]
    assert names[-2:] == ["cand_emb", "owner"]
    assert [i["name"] for i in io["scorer_ids"]["inputs"]][-2:] == ["cand_ids", "owner"]
    sess = ort.InferenceSession(str(d / "scorer.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names
    import onnx
    assert onnx.load(str(d / "scorer.onnx")).opset_import[0].version >= 17
    emb = np.load(d / "item_embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (150, 64)
    assert np.load(d / "item_embeddings_fp16.npy").dtype == np.float16


@pytest.mark.parametrize("R,L,C", [(1, 16, 200), (5, 7, 333), (3, 1, 4)])
def test_ort_equals_full_torch_model(run, R, L, C):
    d, model = run
    rng = np.random.default_rng(R * 100 + L)
    so = ort.SessionOptions()
    enc = ort.InferenceSession(str(d / "user_encoder.onnx"), so, providers=["CPUExecutionProvider"])
    sc = ort.InferenceSession(str(d / "scorer.onnx"), so, providers=["CPUExecutionProvider"])
    sci = ort.InferenceSession(str(d / "scorer_ids.onnx"), so, providers=["CPUExecutionProvider"])
    names = state_names(model.cfg)
    E = np.load(d / "item_embeddings.npy")
    hist = rng.integers(0, len(E), (R, L))
    mask = (rng.random((R, L)) > 0.3).astype(np.float32)
    mask[:, 0] = 1
    owner = np.sort(rng.integers(0, R, C)).astype(np.int64)  # non-decreasing, as the engine sends them
    cand = rng.integers(0, len(E), C).astype(np.int64)
    state = enc.run(names, {"hist_emb": E[hist] * mask[..., None], "hist_mask": mask})
    for s in state:
        assert s.shape[0] == R
    feed = dict(zip(names, state))
    got = sc.run(["scores"], {**feed, "cand_emb": E[cand], "owner": owner})[0]
    got_ids = sci.run(["scores"], {**feed, "cand_ids": cand, "owner": owner})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(hist)[owner], torch.from_numpy(mask)[owner],
                    torch.from_numpy(cand)[:, None]).squeeze(1).numpy()
    assert got.shape == (C,) and got.dtype == np.float32
    assert rel_err(got, ref) <= 1e-4
    assert rel_err(got_ids, got) <= 1e-6
