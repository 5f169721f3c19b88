"""The score-sensitivity metric: the space the HNSW graph is built in, so that graph neighbours score alike.

The beam walk moves from an item to its graph neighbours hoping they score well too; with the paper's plain L2
between item embeddings e_v, two items can be close while the model scores them far apart (the directions of e_v
the score network weighs most are no wider than the ones it ignores). For one user, a small move δ of e_v changes
the score by ≈ ∇s_u(e_v)·δ, so over users and the items they rank high (where a top-M search walks)

    E[(∇s·δ)²] = δᵀ S δ,   S = E[∇s ∇sᵀ]   (64 × 64),

and with S = G Gᵀ (G = V Λ^½ from S's eigendecomposition) the embeddings z_v = e_v G have ‖z_v − z_w‖² equal to
that expected squared score difference. The graph is built with plain L2 over z; the search still scores with the
model, so results are the same kind of thing — only which items are linked changes (perf/RESULTS.md, "Graph").

S is estimated from ``users`` training histories (random positions, like training samples): each user's top items
among a random sample of the catalogue (the share of the catalogue a top-``TOP_ITEMS`` list holds), gradients
through the exported model's own scorer. Deterministic for a seed.
"""
from __future__ import annotations

import numpy as np

TOP_ITEMS = 1000      # gradients at the items ranked about this high for each user
SAMPLE_ITEMS = 100_000  # items scored per user to find them (the whole catalogue when smaller)
USERS = 256


def score_sensitivity(model, item_embeddings: np.ndarray, histories: list[np.ndarray], seed: int = 0,
                      sample_items: int = SAMPLE_ITEMS, top_items: int = TOP_ITEMS) -> np.ndarray:
    """G [D, D] with G Gᵀ = E[∇s ∇sᵀ] over the users' top items (see the module doc)."""
    import torch

    from nann.model_split import build_split
    from nann.runtime import pad_histories

    rng = np.random.default_rng(seed)
    n, d = item_embeddings.shape
    table = torch.from_numpy(np.array(item_embeddings, dtype=np.float32))  # a writable copy
    sample = np.sort(rng.choice(n, size=min(n, sample_items), replace=False))
    keep = max(1, min(sample.shape[0] // 2, round(top_items * sample.shape[0] / n)))
    enc, sc = build_split(model)
    with torch.no_grad():
        pre = sc.cand_pre(table[sample])
    s = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for h in histories:
        ids, mask = pad_histories([h], model.cfg.max_seq)
        mask_t = torch.from_numpy(mask)
        with torch.no_grad():
            state = enc(table[torch.from_numpy(ids)] * mask_t[..., None], mask_t)
            top = torch.topk(sc.score_one_pre(state, pre), keep).indices
        e = table[torch.from_numpy(sample)[top]].clone().requires_grad_(True)
        scores = sc(*state, e, torch.zeros(keep, dtype=torch.int64))
        (g,) = torch.autograd.grad(scores.sum(), e)   # row i: ∇ of candidate i's own score
        s += (g.T.double() @ g.double())
        count += keep
    eigval, eigvec = np.linalg.eigh((s / max(1, count)).numpy())
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))).astype(np.float32)


def training_histories(train, max_seq: int, users: int = USERS, seed: int = 0) -> list[np.ndarray]:
    """Histories of ``users`` random training samples (a user's behaviours before a random position >= 1)."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(train.offsets)
    eligible = np.flatnonzero(lengths >= 2)
    if eligible.shape[0] == 0:
        return []
    out = []
    for u in rng.choice(eligible, size=min(users, eligible.shape[0]), replace=False):
        seq = train.sequence(int(u))
        cut = int(rng.integers(1, seq.shape[0]))
        out.append(np.asarray(seq[max(0, cut - max_seq):cut], dtype=np.int64))
    return out
