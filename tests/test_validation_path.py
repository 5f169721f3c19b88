"""The trainer's fast validation path (split encoder + `Scorer.score_one_pre` over `cand_pre` of every item, as
`trainer.train.recall_all` runs it) against the unfolded reference `NANNModel.forward`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nann.model import ARCHS, ModelConfig, NANNModel
from nann.model_split import build_split
from trainer.sampling import EvalSplit
from trainer.train import recall_all

try:
    from tests.test_trainer_model import randomize_bn
except ImportError:  # tests/ is not a package
    from test_trainer_model import randomize_bn

N_ITEMS, MAX_SEQ = 150, 12
VARIANTS = [(arch, inter) for arch in ARCHS for inter in (True, False) if not (arch == "two-tower" and not inter)]


def make_model(arch: str, interactions: bool, seed: int = 0) -> NANNModel:
    """A random model whose BatchNorms hold non-trivial running statistics (eval mode); embeddings of unit scale
    spread the items' scores (at the init scale they lie within ~1e-3 of each other)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=N_ITEMS, num_categories=6, arch=arch, max_seq=MAX_SEQ, interactions=interactions)
    model = NANNModel(cfg, torch.randint(0, 6, (N_ITEMS,)))
    for table in (model.id_emb, model.cat_emb):
        torch.nn.init.normal_(table.weight, std=1.0)
    return randomize_bn(model, seed)


def histories(n: int, seed: int) -> list[np.ndarray]:
    """Histories of 1..2*MAX_SEQ items (the longer ones exercise the truncation to the last MAX_SEQ)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, N_ITEMS, rng.integers(1, 2 * MAX_SEQ)).astype(np.int32) for _ in range(n)]


@torch.no_grad()
def reference_scores(model: NANNModel, history: np.ndarray) -> torch.Tensor:
    """NANNModel.forward of one user (last MAX_SEQ behaviours, no padding) over every item: [N_ITEMS]."""
    hist = torch.from_numpy(history[-MAX_SEQ:].astype(np.int64))[None]
    return model(hist, torch.ones(hist.shape), torch.arange(N_ITEMS)[None])[0]


@pytest.mark.parametrize("arch, interactions", VARIANTS)
def test_score_one_pre_equals_forward(arch, interactions):
    model = make_model(arch, interactions)
    enc, sc = build_split(model)
    with torch.no_grad():
        E = model.all_item_embeddings()
        Y = sc.cand_pre(E)
        for history in histories(4, seed=1):
            h = torch.from_numpy(history[-MAX_SEQ:].astype(np.int64))
            ids = torch.zeros(1, MAX_SEQ, dtype=torch.int64)   # padded as recall_all pads: zeros, mask 0
            mask = torch.zeros(1, MAX_SEQ)
            ids[0, :len(h)], mask[0, :len(h)] = h, 1.0
            fast = sc.score_one_pre(enc(E[ids] * mask[..., None], mask), Y)
            ref = reference_scores(model, history)
            assert fast.shape == ref.shape == (N_ITEMS,)
            assert (fast - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max())


@pytest.mark.parametrize("arch, interactions", VARIANTS)
def test_recall_all_equals_brute_force_of_forward(arch, interactions):
    """Targets sit just inside or just outside the reference top-TOP (the nearest ranks to the cut that are more
    than 1e-5 away from it, so float noise cannot move them across), so a validation path that ranks differently,
    truncates differently or mixes users up gets a different recall."""
    top, margin = 10, 1e-5
    model = make_model(arch, interactions, seed=2)
    hists = histories(16, seed=3)
    targets, expected = [], []
    for u, history in enumerate(hists):
        scores, order = torch.sort(reference_scores(model, history), descending=True)
        inside = [r for r in range(top) if scores[r] - scores[top] > margin]
        outside = [r for r in range(top, N_ITEMS) if scores[top - 1] - scores[r] > margin]
        rank = inside[-1] if u % 3 else outside[0]
        targets.append(int(order[rank]))
        expected.append(rank < top)

    def recall(users):  # recall_all over these users, batched together as in training
        hs = [hists[u] for u in users]
        offsets = np.concatenate([[0], np.cumsum([len(h) for h in hs])]).astype(np.int64)
        split = EvalSplit(np.concatenate(hs), offsets, np.array([targets[u] for u in users], np.int32))
        return recall_all(model, split, n_users=len(users), max_seq=MAX_SEQ, device=torch.device("cpu"), top_m=top)

    assert [recall([u]) for u in range(len(hists))] == [float(e) for e in expected]
    assert recall(range(len(hists))) == pytest.approx(np.mean(expected))
