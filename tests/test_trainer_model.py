"""Model, FGSM and loss tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nann.model import ARCHS, ModelConfig, NANNModel, recency_rank
from nann.model_split import build_split, per_candidate_macs, state_names
from trainer.train import bernoulli_kl_logits, compute_loss, fgsm_delta, make_optimizers


def randomize_bn(model: NANNModel, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    if model.cfg.recency:  # trained recency embeddings are not zero: make the parity checks see them
        for table in (model.recency_scale, model.recency_shift):
            table.weight.data.copy_(torch.randn(table.weight.shape, generator=g) * 0.5)
    for weights in getattr(model, "dot_weights", {}).values():  # trained: no longer ones
        weights.data.copy_(torch.randn(weights.shape, generator=g))
    return model.eval()


def tiny_model(arch, n_items=120, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=n_items, num_categories=6, arch=arch, max_seq=12)
    return randomize_bn(NANNModel(cfg, torch.randint(0, 6, (n_items,))), seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_fgsm_delta_max_norm_and_sign(arch):
    model = tiny_model(arch)
    B, L, K = 4, 9, 6
    hist_e = model.item_embed(torch.randint(0, 120, (B, L))).detach()
    mask = torch.ones(B, L)
    cand_e = model.item_embed(torch.randint(0, 120, (B, K))).detach().requires_grad_(True)
    s = model.score_emb(hist_e, mask, cand_e)
    eps = 3e-4
    delta = fgsm_delta(s, cand_e, eps)
    assert not delta.requires_grad
    (g,) = torch.autograd.grad(s.sum(), cand_e)
    nz = g != 0
    assert nz.float().mean() > 0.9
    assert torch.allclose(delta.abs()[nz], torch.full_like(delta[nz], eps))
    assert delta.abs().max().item() == pytest.approx(eps, rel=1e-6)
    assert torch.equal(torch.sign(delta), torch.sign(g))
    # the perturbation moves every score up (first-order): s(e+Δ) >= s(e)
    s_adv = model.score_emb(hist_e, mask, cand_e.detach() + delta)
    assert (s_adv - s.detach() >= -1e-6).all()


def test_bernoulli_kl_finite_nonnegative():
    a = torch.tensor([-80.0, -3.0, 0.0, 2.0, 90.0])
    b = torch.tensor([80.0, -3.1, 0.5, 2.0, -90.0])
    kl = bernoulli_kl_logits(a, b)
    assert torch.isfinite(kl).all() and (kl >= -1e-7).all()
    assert kl[3] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_finite_and_decreases(arch):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    N, B, L, k = 60, 32, 8, 10
    model = NANNModel(ModelConfig(num_items=N, num_categories=4, arch=arch, max_seq=L), torch.arange(N) % 4)
    opts = make_optimizers(model, 3e-3, sparse=True).values()
    # a fixed, learnable task: the target is a function of the history
    hist = torch.from_numpy(rng.integers(0, N, (B, L)))
    mask = torch.ones(B, L)
    pos = (hist[:, -1] * 7 + 3) % N
    log_q = torch.full((N,), -np.log(N))
    losses = []
    for _ in range(60):
        neg = torch.from_numpy(rng.integers(0, N, (B, k)))
        cand = torch.cat([pos[:, None], neg], 1)
        loss, nce, aux = compute_loss(model, hist, mask, cand, log_q[cand] + np.log(k), 3e-2)
        assert torch.isfinite(loss) and torch.isfinite(aux) and aux >= -1e-5
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_sparse_step_updates_only_touched_embedding_rows():
    model = NANNModel(ModelConfig(num_items=50, num_categories=5, arch="attention", max_seq=4), torch.arange(50) % 5)
    opts = make_optimizers(model, 1e-2, sparse=True)
    assert set(opts) == {"adam", "sparse_adam"}
    before_ids, before_dense = model.id_emb.weight.detach().clone(), model.score_out.weight.detach().clone()
    hist, cand = torch.tensor([[1, 2, 3, 4]] * 2), torch.tensor([[5, 6], [7, 8]])
    loss, _, _ = compute_loss(model, hist, torch.ones(2, 4), cand, torch.zeros(2, 2), 0.0)
    loss.backward()
    assert model.id_emb.weight.grad.is_sparse
    for opt in opts.values():
        opt.step()
    changed = (model.id_emb.weight.detach() != before_ids).any(dim=1).nonzero().flatten().tolist()
    assert changed == list(range(1, 9))
    assert not torch.equal(model.score_out.weight.detach(), before_dense)


@pytest.mark.parametrize("arch", ARCHS)
def test_split_equals_full_model(arch):
    model = tiny_model(arch)
    enc, sc = build_split(model)
    with torch.no_grad():
        E = model.all_item_embeddings()
        R, L, C = 3, 11, 40
        hist = torch.randint(0, 120, (R, L))
        mask = (torch.rand(R, L) > 0.3).float()
        mask[:, 0] = 1
        owner = torch.sort(torch.randint(0, R, (C,))).values  # the scorer's contract: each user's run contiguous
        cand = torch.randint(0, 120, (C,))
        full = model(hist[owner], mask[owner], cand[:, None]).squeeze(1)
        split = sc(*enc(E[hist] * mask[..., None], mask), E[cand], owner)
        assert (split - full).abs().max() <= 1e-5 * max(1.0, full.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_history_is_finite(arch):
    model = tiny_model(arch)
    enc, sc = build_split(model)
    with torch.no_grad():
        E = model.all_item_embeddings()
        state = enc(torch.zeros(1, 1, 64), torch.zeros(1, 1))
        s = sc(*state, E[:10], torch.zeros(10, dtype=torch.long))
    assert torch.isfinite(s).all()


def test_macs_saved():
    cfg = ModelConfig(num_items=10, num_categories=2)
    m = per_candidate_macs(cfg)
    assert m["after"] < m["before"]


def test_recency_rank_counts_the_behaviours_after_each_position_for_any_padding():
    left = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    right = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    assert recency_rank(left)[0, :3].tolist() == [2, 1, 0]
    assert recency_rank(right)[0, 2:].tolist() == [2, 1, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_recency_makes_the_order_of_the_history_matter(arch):
    """With recency the same behaviours in another order score differently; without it they score alike (the
    attention and sum-pooling see a set)."""
    history = torch.tensor([[3, 17, 42, 8]])
    reordered = history[:, [2, 0, 3, 1]]
    mask, cand = torch.ones(1, 4), torch.arange(20)[None]
    for recency, differs in ((True, True), (False, False)):
        torch.manual_seed(0)
        cfg = ModelConfig(num_items=120, num_categories=6, arch=arch, max_seq=12, recency=recency)
        model = randomize_bn(NANNModel(cfg, torch.randint(0, 6, (120,))))
        torch.nn.init.normal_(model.id_emb.weight, std=1.0)  # items told apart (at the init scale they are alike)
        with torch.no_grad():
            gap = (model(history, mask, cand) - model(reordered, mask, cand)).abs().max().item()
        assert (gap > 1e-4) == differs, (recency, gap)


def test_runs_written_before_recency_load_without_it():
    cfg = ModelConfig.from_dict({"num_items": 10, "num_categories": 2, "arch": "attention"})
    assert cfg.recency is False and not hasattr(NANNModel(cfg), "recency_scale")


def test_dot_terms_start_as_the_inner_product_of_e_v_with_the_user_vector():
    """Without the user tower, mlp with its score network's output zeroed scores <u, e_v> (u: the sum-pooled
    behaviours), as a two-tower model without a tower would; attention adds <attention output, e_v>."""
    torch.manual_seed(0)
    model = NANNModel(ModelConfig(num_items=50, num_categories=3, arch="mlp", max_seq=8, user_tower=False)).eval()
    assert model.cfg.dot_terms == ["user*item"] and not model.cfg.tower_dot
    hist, mask, cand = torch.randint(0, 50, (4, 8)), torch.ones(4, 8), torch.randint(0, 50, (4, 5))
    with torch.no_grad():
        model.score_out.weight.zero_()
        model.score_out.bias.zero_()
        u = model.behaviours(model.item_embed(hist), mask).sum(1)
        want = (u[:, None, :] * model.item_embed(cand)).sum(-1)
        torch.testing.assert_close(model(hist, mask, cand), want)
    assert ModelConfig(num_items=5, num_categories=1, arch="attention").dot_terms == ["attn*item", "user*item"]
    assert ModelConfig(num_items=5, num_categories=1, arch="attention", interactions=False).dot_terms == []


def test_the_user_tower_makes_the_score_hold_a_two_tower_score():
    """With the user tower (the default), mlp with its score network's output zeroed scores <T(u), e_v>: what the
    two-tower model with the same tower and item network scores."""
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=50, num_categories=3, arch="mlp", max_seq=8)
    model = randomize_bn(NANNModel(cfg), 0)
    assert cfg.tower_dot and cfg.weighted_dot_terms == [] and len(model.dot_weights) == 0
    two_tower = NANNModel(ModelConfig(num_items=50, num_categories=3, arch="two-tower", max_seq=8)).eval()
    two_tower.load_state_dict({k: v for k, v in model.state_dict().items() if k in two_tower.state_dict()})
    hist, mask, cand = torch.randint(0, 50, (4, 8)), torch.ones(4, 8), torch.randint(0, 50, (4, 5))
    with torch.no_grad():
        model.score_out.weight.zero_()
        model.score_out.bias.zero_()
        torch.testing.assert_close(model(hist, mask, cand), two_tower(hist, mask, cand))
    attention = ModelConfig(num_items=5, num_categories=1, arch="attention")
    assert attention.tower_dot and attention.weighted_dot_terms == ["attn*item"]


@pytest.mark.parametrize("arch", ["attention", "mlp"])
@pytest.mark.parametrize("user_tower", [True, False])
def test_the_serving_split_scores_the_model_with_and_without_the_user_tower(arch, user_tower):
    torch.manual_seed(1)
    cfg = ModelConfig(num_items=60, num_categories=3, arch=arch, max_seq=8, user_tower=user_tower)
    model = randomize_bn(NANNModel(cfg, torch.randint(0, 3, (60,))), 1)
    assert ("tower_vec" in state_names(cfg)) == user_tower
    encoder, scorer = build_split(model)
    hist, mask = torch.randint(0, 60, (3, 8)), (torch.rand(3, 8) < 0.8).float()
    owner, cand = torch.tensor([0, 0, 1, 2, 2]), torch.randint(0, 60, (5,))
    with torch.no_grad():
        e = model.all_item_embeddings()
        got = scorer(*encoder(e[hist] * mask[..., None], mask), e[cand], owner)
        want = model(hist[owner], mask[owner], cand[:, None]).squeeze(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_runs_written_before_dot_load_without_it():
    cfg = ModelConfig.from_dict({"num_items": 10, "num_categories": 2, "arch": "attention", "interactions": True})
    assert cfg.dot is False and cfg.dot_terms == [] and len(NANNModel(cfg).dot_weights) == 0
    assert cfg.user_tower is False and not cfg.tower_dot and not hasattr(NANNModel(cfg), "tower_blocks")


@pytest.mark.parametrize("arch", ["attention", "mlp"])
def test_a_warm_start_scores_exactly_what_the_two_tower_model_scores(arch):
    """`nann train` starts the model from its trained two-tower baseline (`warm_start`): before any step the model is
    that two-tower model's function, so the best epoch kept is never below it on validation."""
    from nann.errors import UserError
    from trainer.train import warm_start

    torch.manual_seed(3)
    cats = torch.randint(0, 3, (60,))
    two_tower = randomize_bn(NANNModel(ModelConfig(num_items=60, num_categories=3, arch="two-tower", max_seq=8),
                                       cats), 3)
    model = randomize_bn(NANNModel(ModelConfig(num_items=60, num_categories=3, arch=arch, max_seq=8), cats), 4)
    warm_start(model, two_tower)
    hist, mask, cand = torch.randint(0, 60, (4, 8)), (torch.rand(4, 8) < 0.8).float(), torch.randint(0, 60, (4, 6))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(hist, mask, cand), two_tower(hist, mask, cand))
    other = NANNModel(ModelConfig(num_items=60, num_categories=3, arch="two-tower", max_seq=8, emb_dim=32), cats)
    with pytest.raises(UserError, match="cannot warm-start from a two-tower run of another shape"):
        warm_start(model, other)
