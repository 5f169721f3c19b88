"""nann.runtime.ModelRuntime: the ONNX Runtime and torch backends agree with each other and with the model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from nann.errors import UserError
from nann.runtime import ModelRuntime
from nann.model import ARCHS

try:
    from tests.test_trainer_export import make_run, rel_err
except ImportError:
    from test_trainer_export import make_run, rel_err


@pytest.fixture(scope="module", params=ARCHS)
def run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"rt_{request.param}")
    return d, make_run(d, request.param, n_items=200, max_seq=10)


def test_torch_backend_equals_ort(run):
    d, model = run
    a = ModelRuntime.load(d, "onnxruntime", threads=1)
    b = ModelRuntime.load(d, "torch")
    assert a.num_items == 200 and a.emb_dim == 64 and a.max_seq == 10
    assert a.state_names == b.state_names
    assert isinstance(a.item_embeddings, np.memmap) or a.item_embeddings.base is not None
    rng = np.random.default_rng(0)
    hists = [rng.integers(0, 200, n) for n in (1, 5, 10, 25)]  # the last is longer than max_seq
    sa, sb = a.encode(hists), b.encode(hists)
    for n in a.state_names:
        assert sa[n].shape[0] == 4
        assert rel_err(sa[n], sb[n]) <= 1e-4
    owner = rng.integers(0, 4, 500)
    ids = rng.integers(0, 200, 500)
    xa, xb = a.score(sa, owner, ids), b.score(sb, owner, ids)
    assert xa.dtype == np.float32 and xa.shape == (500,)
    assert rel_err(xa, xb) <= 1e-4
    # the model's function: history truncated to the last max_seq behaviours
    with torch.no_grad():
        h = torch.from_numpy(np.stack([np.pad(h[-10:], (0, 10 - len(h[-10:]))) for h in hists]))
        m = torch.from_numpy(np.stack([(np.arange(10) < len(h[-10:])) for h in hists]).astype(np.float32))
        ref = model(h[owner], m[owner], torch.from_numpy(ids)[:, None]).squeeze(1).numpy()
    assert rel_err(xa, ref) <= 1e-4
    # score_emb with gathered embeddings == score
    assert np.array_equal(a.score_emb(sa, owner, a.item_embeddings[ids]), xa)
    # encode == encode_padded of the gathered embeddings
    ids_p, mask_p = a.pad_histories(hists)
    sp = a.encode_padded(np.asarray(a.item_embeddings)[ids_p] * mask_p[..., None], mask_p)
    for n in a.state_names:
        assert np.allclose(sp[n], sa[n])


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_runtime_loads_only_the_parts_asked_for(run, backend):
    """A Triton stub loads the half it runs; the halves compute what the whole runtime does."""
    d, _ = run
    whole = ModelRuntime.load(d, backend)
    spinning = backend == "torch"  # torch's spinning=False would set OMP_WAIT_POLICY for this test process
    encoder = ModelRuntime.load(d, backend, parts=("encoder",), spinning=spinning)
    scorer = ModelRuntime.load(d, backend, parts=("scorer",), spinning=spinning)
    rng = np.random.default_rng(0)
    hists = [rng.integers(0, 200, n) for n in (0, 3, 10)]
    state, want = encoder.encode(hists), whole.encode(hists)
    assert all(np.array_equal(state[n], want[n]) for n in whole.state_names)
    owner, ids = rng.integers(0, 3, 50), rng.integers(0, 200, 50)
    assert np.array_equal(scorer.score(state, owner, ids), whole.score(state, owner, ids))
    with pytest.raises(RuntimeError, match="loaded without its scorer"):
        encoder.score(state, owner, ids)
    with pytest.raises(RuntimeError, match="loaded without its encoder"):
        scorer.encode(hists)


def test_empty_history_finite(run):
    d, _ = run
    rt = ModelRuntime.load(d)
    st = rt.encode([np.zeros(0, np.int64), np.array([3, 4])])
    s = rt.score(st, np.array([0, 0, 1]), np.array([1, 2, 3]))
    assert np.isfinite(s).all()
    assert rt.score(st, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)


def test_errors(tmp_path, run):
    with pytest.raises(UserError):
        ModelRuntime.load(tmp_path)
    d, _ = run
    rt = ModelRuntime.load(d)
    with pytest.raises(UserError):
        rt.encode([np.array([1, 10_000])])


def test_ort_backend_does_not_import_trainer(run):
    d, _ = run
    code = ("import sys; from nann.runtime import ModelRuntime; rt = ModelRuntime.load(sys.argv[1]); "
            "rt.score(rt.encode([[1, 2]]), [0], [5]); "
            "assert not any(m == 'trainer' or m.startswith('trainer.') for m in sys.modules), 'trainer imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(d)], check=True)
