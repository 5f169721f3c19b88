"""The CUDA scorer (`nann.scorers.torch_cuda`) through its own code with the device set to CPU: the item table's
candidate-only rows precomputed on the device, ids in, the fixed-shape attention, state rows padded to a power-of-two
cap and uploaded once per batch. Exact (to float rounding) against the torch model; CUDA-graph capture needs a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nann import scorers
from nann.errors import UserError
from nann.model import ARCHS
from nann.model_split import build_split, gather_attention, segment_attention
from nann.run_dir import RunDir
from nann.runtime import ModelRuntime
from nann.scorers.torch_cuda import TorchCudaRuntime, row_cap

try:
    from tests.test_trainer_export import make_run, rel_err
except ImportError:
    from test_trainer_export import make_run, rel_err

CPU = TorchCudaRuntime(device="cpu")


@pytest.fixture(scope="module", params=ARCHS)
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"cuda_{request.param}")
    return d, make_run(d, request.param, n_items=300, max_seq=10)


def model_scores(model, hists, owner, ids):
    """The trained model's own function (history truncated to its last 10 behaviours)."""
    with torch.no_grad():
        h = torch.from_numpy(np.stack([np.pad(x[-10:], (0, 10 - len(x[-10:]))) for x in hists]))
        m = torch.from_numpy(np.stack([(np.arange(10) < len(x[-10:])) for x in hists]).astype(np.float32))
        return model(h[owner], m[owner], torch.from_numpy(ids)[:, None]).squeeze(1).numpy()


def test_scores_equal_the_model_and_the_torch_runtime(run):
    d, model = run
    gpu_code, reference = ModelRuntime.load(d, CPU), ModelRuntime.load(d, "torch")
    rng = np.random.default_rng(0)
    hists = [rng.integers(0, 300, n) for n in (0, 1, 5, 10, 25)]
    state = gpu_code.encode(hists)
    for name in reference.state_names:
        assert rel_err(state[name], reference.encode(hists)[name]) <= 1e-5
    owner, ids = rng.integers(0, 5, 700), rng.integers(0, 300, 700)  # unsorted owners: sorted, scored, restored
    got = gpu_code.score(state, owner, ids)
    assert got.dtype == np.float32 and got.shape == (700,)
    assert rel_err(got, reference.score(state, owner, ids)) <= 1e-5
    assert rel_err(got, model_scores(model, hists, owner, ids)) <= 1e-4
    # another batch of users (new state arrays) is uploaded, not served from the last one's rows
    other = gpu_code.encode(hists[::-1])
    assert rel_err(gpu_code.score(other, owner, ids), reference.score(other, owner, ids)) <= 1e-5
    with pytest.raises(UserError, match="takes candidate ids"):
        gpu_code.score_emb(state, owner, gpu_code.item_embeddings[ids])


def test_half_precision_stays_close(run):
    d, _ = run
    half, full = ModelRuntime.load(d, TorchCudaRuntime(device="cpu", half=True)), ModelRuntime.load(d, CPU)
    rng = np.random.default_rng(1)
    state = full.encode([rng.integers(0, 300, 10), rng.integers(0, 300, 4), []])  # a cold-start user among them
    owner, ids = np.sort(rng.integers(0, 3, 200)), rng.integers(0, 300, 200)
    got, want = half.score(state, owner, ids), full.score(state, owner, ids)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert 0 < rel_err(got, want) <= 2e-2  # float16 rounds (never bit-equal), by a few parts in a thousand


def test_gather_attention_equals_the_segment_layout():
    g = torch.Generator().manual_seed(0)
    owner = torch.tensor([0, 0, 0, 2, 2, 3])  # user 1 has no candidates; runs of unequal length
    q1, keys = torch.randn(6, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    bias, values = torch.randn(4, 5, generator=g), torch.randn(4, 5, 3, generator=g)
    assert torch.allclose(gather_attention(q1, keys, bias, values, owner),
                          segment_attention(q1, keys, bias, values, owner), atol=1e-6)


def test_the_split_scores_from_precomputed_item_rows(run):
    """score_pre over cand_pre rows is forward's function, for several owners."""
    d, model = run
    encoder, scorer = build_split(model)
    items = torch.from_numpy(np.array(RunDir(d).item_embeddings()))
    rng = np.random.default_rng(2)
    mask = torch.from_numpy((rng.random((3, 10)) < 0.7).astype(np.float32))
    state = encoder(items[torch.from_numpy(rng.integers(0, 300, (3, 10)))], mask)
    owner, cand = torch.tensor([0, 0, 1, 2, 2, 2]), items[torch.tensor([5, 6, 7, 8, 9, 1])]
    with torch.no_grad():
        want = scorer(*state, cand, owner)
        assert torch.allclose(scorer.score_pre(state, scorer.cand_pre(cand), owner), want, atol=1e-5)


def test_state_rows_are_padded_to_a_power_of_two():
    assert [row_cap(n) for n in (1, 8, 9, 16, 17, 64, 65)] == [8, 8, 16, 16, 32, 64, 128]


def test_the_cuda_runtimes_are_registered_and_refused_without_a_gpu(run):
    d, _ = run
    assert {"torch-cuda", "torch-cuda-half"} <= set(scorers.in_python()) - set(scorers.cpu_in_python())
    cuda = scorers.runtime("torch-cuda")
    assert cuda.padded_grid and cuda.in_process and cuda.scores_ids and cuda.gpu
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU: the refusal is for hosts without one")
    with pytest.raises(UserError, match="torch-cuda scorer needs a CUDA GPU and torch built with CUDA: use onnxruntime or torch"):
        ModelRuntime.load(d, "torch-cuda")


def test_the_offline_engine_walks_with_it(tiny_run, test_histories):
    """The served pipeline offline (encode, beam walk over the graph, grid-padded rounds) with the CUDA scorer's
    code: the same answers as the torch runtime, up to near-ties that float rounding may swap."""
    from nann.engine.params import DEFAULT_SEARCH
    from nann.serving.retrieval import OfflineRetriever

    histories = test_histories[:12]
    answers = {name: OfflineRetriever(tiny_run.run, backend=backend).retrieve(histories, [DEFAULT_SEARCH] * 12)
               for name, backend in (("torch", "torch"), ("cuda code", CPU))}
    overlap = [len(set(a.item_ids) & set(b.item_ids)) / len(b.item_ids)
               for a, b in zip(answers["cuda code"], answers["torch"])]
    assert np.mean(overlap) >= 0.99 and min(overlap) >= 0.95
