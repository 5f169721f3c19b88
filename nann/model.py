"""The NANN model (UserBehavior variant of the paper's appendix) and ``load_model`` (a run's trained model): the
trainable model, shared by the trainer and the serving library; its serving split is ``nann.model_split``.

Three architectures share one item network and one serving contract:

* ``attention`` (default): item input = concat(id emb 32, category emb 32); item network FC 64 -> 64 -> 64
  (Linear -> BatchNorm -> PReLU on the hidden layers) -> ``e_v``. The behaviour sequence goes through the same item
  network. Target attention: query = FC(64, PReLU) -> FC(64) of the candidate's ``e_v``, keys = the same kind of
  projection of the behaviours, values = the behaviours' ``e_v``; scaled dot-product, masked softmax.
  User vector = masked sum-pooling of the behaviours' ``e_v``. Score network over
  concat(user, attention, e_v, attention*e_v, user*e_v) (5 x 64): FC 128 -> 64 -> 32 -> 1 (Linear -> BatchNorm ->
  PReLU on the hidden layers).
* ``mlp`` ("DNN w/o attention"): the score network sees concat(user, e_v, user*e_v) only.
* ``two-tower``: score = <MLP(user sum-pool), e_v>.

The element-wise products (``interactions``, on by default; DIN's activation unit does the same with [q, k, q-k, q*k])
are there because an MLP over a plain concatenation learns a dot-product-like similarity poorly (Rendle et al. 2020):
at the same training budget the plain-concat attention model scored well below the two-tower baseline. Runs whose
config predates the field load with ``interactions=False`` (plain concat, no ``user_vec`` state).

The dot terms (``dot``, on by default) go one step further: the score adds ``w_u . (u*e_v) + w_a . (attention*e_v)``,
per-dimension weights starting at ones, i.e. the inner products a two-tower model scores with, beside the score
network. Without them the attention model lost to the two-tower model on a sparse real log (Taobao 2-hour slice,
~3 behaviours per user: validation recall@200 0.091 vs 0.114, perf/RESULTS.md "Real logs"): the score network has
to learn the inner product from few samples. Runs whose config predates the field load with ``dot=False``.

The user tower (``user_tower``, on by default) makes the user vector's term ``<T(u), e_v>``, T the two-tower model's
user tower (FC 128 with BatchNorm and PReLU -> FC 64), in place of ``w_u . (u*e_v)``: the score then holds a whole
two-tower model's score as one term, so the score network and the attention add to what a two-tower model learns
instead of competing with it from a weaker start. The per-dimension weighting is a diagonal bilinear form of u and
e_v; on a dense log (MovieLens 100K) the model with it learned slower than the two-tower model and stopped below it
(validation recall@200 at epoch 1 0.43 vs 0.61, best 0.746 vs 0.792, perf/RESULTS.md "Real logs"). Runs whose config
predates the field load with ``user_tower=False``.

The score is the raw logit ``s_u(e_v)`` (before any sigmoid and without the NCE correction). That same number is the
training logit (before the ``-log(k q(v))`` correction), the brute-force score and the served score.

Items added after training (``nann items add``) have no trained id row: their e_v is ``item_embed_new``, the item
network on concat(zero id embedding, category embedding) - the category-only path (see its docstring).

Masking: padded behaviours get an additive ``-1e4`` on their attention logits *and* their values are multiplied by
the mask, so an all-masked (empty) history gives attention output 0 and user vector 0 - finite, never NaN.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from nann.errors import UserError
from nann.run_dir import RunDir

ARCHS = ("attention", "mlp", "two-tower")
DOT_PARAMS = {"attn*item": "attn", "user*item": "user"}  # interaction block -> its dot_weights entry
MASK_NEG = -1.0e4  # additive attention mask; finite so fp16 engines and all-masked rows stay NaN-free


@dataclass
class ModelConfig:
    num_items: int
    num_categories: int
    arch: str = "attention"
    max_seq: int = 50
    id_dim: int = 32
    cat_dim: int = 32
    emb_dim: int = 64
    item_hidden: list[int] = field(default_factory=lambda: [64, 64])
    attn_dim: int = 64
    score_hidden: list[int] = field(default_factory=lambda: [128, 64, 32])
    tower_hidden: list[int] = field(default_factory=lambda: [128])
    # score network input also holds element-wise interactions (u*e_v, and attention*e_v for attention)
    interactions: bool = True
    # on the user side each behaviour's e_v is scaled and shifted by learned vectors of its recency rank
    # (0 = the most recent): ``NANNModel.behaviours``
    recency: bool = True
    # the score adds inner products of e_v with the user vector and the attention output, weighted per dimension
    # (``NANNModel.dot_terms``): the score network then starts from, and can keep, what a two-tower model scores
    dot: bool = True
    # the user vector's inner product goes through a tower first, <T(u), e_v> (T: the two-tower model's user tower),
    # instead of a per-dimension weighting of u: the score then holds a two-tower model's score as one term
    user_tower: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        keys = cls.__dataclass_fields__.keys()
        d = dict(d)
        d.setdefault("interactions", False)  # runs written before the field existed: plain concat input
        d.setdefault("recency", False)       # likewise: behaviours without recency embeddings
        d.setdefault("dot", False)           # likewise: the score network alone
        d.setdefault("user_tower", False)    # likewise: the user vector's inner product weighted per dimension
        return cls(**{k: v for k, v in d.items() if k in keys})

    def score_blocks_in(self) -> list[str]:
        """The blocks of the score network's input, in order (each emb_dim wide)."""
        if self.arch == "attention":
            return ["user", "attn", "item"] + (["attn*item", "user*item"] if self.interactions else [])
        if self.arch == "mlp":
            return ["user", "item"] + (["user*item"] if self.interactions else [])
        return []

    @property
    def dot_terms(self) -> list[str]:
        """The interaction blocks whose sums (weighted per dimension) add to the score: none without ``dot``."""
        if not (self.dot and self.interactions):
            return []
        return [b for b in self.score_blocks_in() if b in ("attn*item", "user*item")]

    @property
    def tower_dot(self) -> bool:
        """The user vector's dot term is <T(u), e_v> through the user tower (``user_tower``)."""
        return self.user_tower and "user*item" in self.dot_terms

    @property
    def weighted_dot_terms(self) -> list[str]:
        """The dot terms weighted per dimension (``dot_weights``): all but the one through the user tower."""
        return [b for b in self.dot_terms if not (b == "user*item" and self.tower_dot)]


def recency_rank(mask: torch.Tensor) -> torch.Tensor:
    """int64 [B,L]: how many real behaviours follow each position (0 = the most recent), for any padding layout;
    padded positions get the rank of the real behaviour before them (they are masked everywhere)."""
    return (mask.sum(-1, keepdim=True) - torch.cumsum(mask, -1)).to(torch.int64)


def prelu(x, a):
    """PReLU with per-feature slopes on the last axis (nn.PReLU treats axis 1 as the channel)."""
    return torch.where(x >= 0, x, x * a)


class DenseBlock(nn.Module):
    """Linear -> BatchNorm1d -> PReLU over the last axis (any leading shape)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        self.act = nn.PReLU(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.bn(self.lin(x.reshape(-1, shape[-1])))
        return self.act(y).reshape(*shape[:-1], -1)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, b, prelu_slope) with the eval-mode BatchNorm folded into the Linear."""
        bn = self.bn
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = self.lin.weight * g[:, None]
        b = (self.lin.bias - bn.running_mean) * g + bn.bias
        return w.clone(), b.clone(), self.act.weight.detach().clone()


class Projection(nn.Module):
    """FC(d, PReLU) -> FC(d): the attention's query / key projections (no BatchNorm)."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.l1 = nn.Linear(d_in, d)
        self.act = nn.PReLU(d)
        self.l2 = nn.Linear(d, d)

    def forward(self, x):
        return self.l2(prelu(self.l1(x), self.act.weight))


class NANNModel(nn.Module):
    def __init__(self, cfg: ModelConfig, item_category: torch.Tensor | None = None):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown arch {cfg.arch!r}")
        self.cfg = cfg
        D = cfg.emb_dim
        self.id_emb = nn.Embedding(cfg.num_items, cfg.id_dim)
        self.cat_emb = nn.Embedding(max(cfg.num_categories, 1), cfg.cat_dim)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        if item_category is None:
            item_category = torch.zeros(cfg.num_items, dtype=torch.int64)
        self.register_buffer("item_category", torch.as_tensor(item_category, dtype=torch.int64).clone())
        dims = [cfg.id_dim + cfg.cat_dim] + list(cfg.item_hidden)
        self.item_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.item_out = nn.Linear(dims[-1], D)
        if cfg.recency:  # both start at zero: the behaviours start as plain e_v
            self.recency_scale = nn.Embedding(cfg.max_seq, D)
            self.recency_shift = nn.Embedding(cfg.max_seq, D)
            nn.init.zeros_(self.recency_scale.weight)
            nn.init.zeros_(self.recency_shift.weight)
        if cfg.arch == "attention":
            self.q_proj = Projection(D, cfg.attn_dim)
            self.k_proj = Projection(D, cfg.attn_dim)
        if cfg.arch in ("attention", "mlp"):
            d_in = D * len(cfg.score_blocks_in())
            sd = [d_in] + list(cfg.score_hidden)
            self.score_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(sd[:-1], sd[1:]))
            self.score_out = nn.Linear(sd[-1], 1)
            # per-dimension weights of the inner products added to the score, starting as plain inner products
            self.dot_weights = nn.ParameterDict({DOT_PARAMS[b]: nn.Parameter(torch.ones(D))
                                                 for b in cfg.weighted_dot_terms})
        if cfg.arch == "two-tower" or cfg.tower_dot:
            td = [D] + list(cfg.tower_hidden)
            self.tower_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(td[:-1], td[1:]))
            self.tower_out = nn.Linear(td[-1], D)

    # ---- item network -------------------------------------------------------------------------------------
    def item_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._item_network(self.id_emb(ids), self.item_category[ids])

    def item_embed_new(self, category_ids: torch.Tensor) -> torch.Tensor:
        """e_v of items the model was not trained on (``nann items add``), from their dense categories alone: the
        item network on concat(0, category embedding). Id rows start at N(0, 0.05) and a rarely-seen item's row
        stays near that start, so the zero row (its mean) is what the model learned for an item it knows only
        by its category."""
        return self._item_network(self.id_emb.weight.new_zeros(category_ids.shape[0], self.cfg.id_dim),
                                  category_ids)

    def _item_network(self, id_e: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([id_e, self.cat_emb(category_ids)], dim=-1)
        for blk in self.item_blocks:
            x = blk(x)
        return self.item_out(x)

    def all_item_embeddings(self, chunk: int = 65536) -> torch.Tensor:
        """e_v (eval mode, no grad) of the trained items 0..num_items-1."""
        dev = self.id_emb.weight.device
        return self._eval_chunks(lambda s, e: self.item_embed(torch.arange(s, e, device=dev)), self.cfg.num_items,
                                 chunk)

    def new_item_embeddings(self, category_ids, chunk: int = 65536) -> torch.Tensor:
        """e_v (eval mode, no grad) of new items of these dense categories (``item_embed_new``)."""
        cats = torch.as_tensor(np.asarray(category_ids), dtype=torch.int64, device=self.id_emb.weight.device)
        return self._eval_chunks(lambda s, e: self.item_embed_new(cats[s:e]), int(cats.shape[0]), chunk)

    @torch.no_grad()
    def _eval_chunks(self, embed, n: int, chunk: int) -> torch.Tensor:
        """torch.cat of embed(start, end) over [0, n) in chunks, in eval mode; [0, emb_dim] when n is 0."""
        was = self.training
        self.eval()
        out = [embed(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        self.train(was)
        return torch.cat(out) if out else self.item_out.weight.new_zeros(0, self.cfg.emb_dim)

    # ---- the model's function (reference, unfolded) --------------------------------------------------------
    def behaviours(self, hist_e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The behaviour sequence as the user side sees it [B,L,D], masked: with ``recency``, e_v * (1 + scale[r]) +
        shift[r] for recency rank r. Keys, values and the pooled user vector are all made of these (the scale
        makes even the sum-pooled vector depend on the order); candidates stay plain e_v."""
        if self.cfg.recency:
            rank = recency_rank(mask).clamp(max=self.cfg.max_seq - 1)
            hist_e = hist_e * (1.0 + self.recency_scale(rank)) + self.recency_shift(rank)
        return hist_e * mask[..., None]

    def user_side(self, hist_e: torch.Tensor, mask: torch.Tensor):
        """Per-user pieces: (behaviours [B,L,D] (``behaviours``), sum-pooled user vector [B,D], keys [B,L,A] or
        None)."""
        h = self.behaviours(hist_e, mask)
        u = h.sum(1)
        k = self.k_proj(h) if self.cfg.arch == "attention" else None
        return h, u, k

    def cand_side(self, u, k, hist_e, mask, cand_e) -> torch.Tensor:
        """Scores [B,K] for candidates cand_e [B,K,D] of users with pieces u [B,D], k [B,L,A]."""
        arch = self.cfg.arch
        if arch == "two-tower":
            return (self.tower(u)[:, None, :] * cand_e).sum(-1)
        K = cand_e.shape[1]
        uk = u[:, None, :].expand(-1, K, -1)
        feats = {"user": uk, "item": cand_e, "user*item": uk * cand_e}
        if arch == "attention":
            q = self.q_proj(cand_e)                                          # [B,K,A]
            logits = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(self.cfg.attn_dim)  # [B,K,L]
            logits = logits + (mask[:, None, :] - 1.0) * (-MASK_NEG)
            w = torch.softmax(logits, dim=-1) * mask[:, None, :]
            att = torch.matmul(w, hist_e)                                    # [B,K,D]
            feats["attn"], feats["attn*item"] = att, att * cand_e
        x = torch.cat([feats[n] for n in self.cfg.score_blocks_in()], dim=-1)
        for blk in self.score_blocks:
            x = blk(x)
        score = self.score_out(x).squeeze(-1)
        for b in self.cfg.weighted_dot_terms:
            score = score + torch.matmul(feats[b], self.dot_weights[DOT_PARAMS[b]])
        if self.cfg.tower_dot:
            score = score + (self.tower(u)[:, None, :] * cand_e).sum(-1)
        return score

    def tower(self, u: torch.Tensor) -> torch.Tensor:
        """The user tower [B,D] -> [B,D]: the two-tower model's user vector, and the other archs' ``tower_dot``."""
        x = u
        for blk in self.tower_blocks:
            x = blk(x)
        return self.tower_out(x)

    def score_emb(self, hist_e, mask, cand_e) -> torch.Tensor:
        h, u, k = self.user_side(hist_e, mask)
        return self.cand_side(u, k, h, mask, cand_e)

    def forward(self, hist_ids: torch.Tensor, hist_mask: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """hist_ids [B,L] (any id where masked), hist_mask [B,L] float, cand_ids [B,K] -> logits [B,K]."""
        return self.score_emb(self.item_embed(hist_ids), hist_mask, self.item_embed(cand_ids))

    def score_owner(self, hist_e, mask, cand_e, owner) -> torch.Tensor:
        """Reference multi-user scoring without the rewrites: user pieces once per user, then per candidate."""
        h, u, k = self.user_side(hist_e, mask)
        kk = k[owner] if k is not None else None
        return self.cand_side(u[owner], kk, h[owner], mask[owner], cand_e[:, None, :]).squeeze(1)


def load_model(run_dir: str, map_location="cpu") -> NANNModel:
    """The trained model of a run (its config and weights), in eval mode."""
    from safetensors.torch import load_file

    run = RunDir(run_dir)
    for p in (run.config_file, run.weights_file):
        if not p.exists():
            raise UserError(f"{p} not found: is {run_dir} a finished training run?")
    model = NANNModel(ModelConfig.from_dict(run.read_config()))
    model.load_state_dict(load_file(run.weights_file, device=str(map_location)))
    return model.eval()
