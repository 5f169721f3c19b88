"""The NANN model (UserBehavior variant of the paper's appendix), its serving split and ``load_model`` (a run's
trained model): shared by the trainer and the serving library.

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
config.json predates the field load with ``interactions=False`` (plain concat, no ``user_vec`` state).

The score is the raw logit ``s_u(e_v)`` (before any sigmoid and without the NCE correction). That same number is the
training logit (before the ``-log(k q(v))`` correction), the brute-force score and the served score.

Serving split (``build_split``): ``UserEncoder(hist_emb [B,L,D], hist_mask [B,L]) -> state tensors`` and
``Scorer(*state [R,...], cand_emb [C,D], owner [C]) -> scores [C]``. Eval-mode BatchNorms are folded into the
adjacent Linear layers, the user-only part of the first score layer (``W_u u + b``) goes into the state (with ``u``
itself as ``user_vec`` for the products: per candidate ``u[owner] * e_v`` is 64 gathered floats and 64 multiplies,
and the mixed blocks [attention, attention*e_v, u*e_v] of score layer 1 run as one [C,192]x[192,128] GEMM; the
alternative, a per-user ``W_ue diag(u)`` [128,64] in the state, would gather 8,192 floats per candidate), the query's
second projection is folded into the keys (``q.k = h1 . (W_q2^T k) + b_q2 . k``, with the 1/sqrt(d) scale), the
candidate-only maps (query FC1 and the e_v block of score layer 1) run as one GEMM, and the additive mask plus the
key-bias term form one ``attn_bias`` [B,L] tensor.

Not done, on measurement: folding the attention output's block of score layer 1 into the values
(``softmax(qK) (V W_a^T)``) saves 1,792 MACs per candidate at L=50 but doubles the per-candidate gather of ``values``
(L x 128 instead of L x 64 floats); on CPU (torch and ONNX Runtime) the scorer is bound by that gather and ran 1.5-3x
slower with the fold, so ``values`` stays the masked behaviour embeddings and W_a is one [C,64]x[64,128] GEMM.

Items added after training (``nann items add``) have no trained id row: their e_v is ``item_embed_new``, the item
network on concat(zero id embedding, category embedding) - the category-only path (see its docstring).

Masking: padded behaviours get an additive ``-1e4`` on their attention logits *and* their values are multiplied by
the mask, so an all-masked (empty) history gives attention output 0 and user vector 0 - finite, never NaN.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nann.errors import UserError

ARCHS = ("attention", "mlp", "two-tower")
MIXED_WEIGHTS = {"attn": "w_a", "attn*item": "w_ae", "user*item": "w_ue"}  # Scorer's score-layer-1 blocks
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        keys = cls.__dataclass_fields__.keys()
        d = dict(d)
        d.setdefault("interactions", False)  # runs written before the field existed: plain concat input
        return cls(**{k: v for k, v in d.items() if k in keys})

    def score_blocks_in(self) -> list[str]:
        """The blocks of the score network's input, in order (each emb_dim wide)."""
        if self.arch == "attention":
            return ["user", "attn", "item"] + (["attn*item", "user*item"] if self.interactions else [])
        if self.arch == "mlp":
            return ["user", "item"] + (["user*item"] if self.interactions else [])
        return []


def _prelu(x, a):
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
        return self.l2(_prelu(self.l1(x), self.act.weight))


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
        if cfg.arch == "attention":
            self.q_proj = Projection(D, cfg.attn_dim)
            self.k_proj = Projection(D, cfg.attn_dim)
        if cfg.arch in ("attention", "mlp"):
            d_in = D * len(cfg.score_blocks_in())
            sd = [d_in] + list(cfg.score_hidden)
            self.score_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(sd[:-1], sd[1:]))
            self.score_out = nn.Linear(sd[-1], 1)
        else:
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
    def user_side(self, hist_e: torch.Tensor, mask: torch.Tensor):
        """Per-user pieces: (sum-pooled user vector [B,D], keys [B,L,A] or None)."""
        u = (hist_e * mask[..., None]).sum(1)
        k = self.k_proj(hist_e) if self.cfg.arch == "attention" else None
        return u, k

    def cand_side(self, u, k, hist_e, mask, cand_e) -> torch.Tensor:
        """Scores [B,K] for candidates cand_e [B,K,D] of users with pieces u [B,D], k [B,L,A]."""
        arch = self.cfg.arch
        if arch == "two-tower":
            x = u
            for blk in self.tower_blocks:
                x = blk(x)
            uv = self.tower_out(x)
            return (uv[:, None, :] * cand_e).sum(-1)
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
        return self.score_out(x).squeeze(-1)

    def score_emb(self, hist_e, mask, cand_e) -> torch.Tensor:
        u, k = self.user_side(hist_e, mask)
        return self.cand_side(u, k, hist_e, mask, cand_e)

    def forward(self, hist_ids: torch.Tensor, hist_mask: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """hist_ids [B,L] (any id where masked), hist_mask [B,L] float, cand_ids [B,K] -> logits [B,K]."""
        return self.score_emb(self.item_embed(hist_ids), hist_mask, self.item_embed(cand_ids))

    def score_owner(self, hist_e, mask, cand_e, owner) -> torch.Tensor:
        """Reference multi-user scoring without the rewrites: user pieces once per user, then per candidate."""
        u, k = self.user_side(hist_e, mask)
        kk = k[owner] if k is not None else None
        return self.cand_side(u[owner], kk, hist_e[owner], mask[owner], cand_e[:, None, :]).squeeze(1)


# ---- the serving split ------------------------------------------------------------------------------------------

STATE_NAMES = {  # with interactions (the default); state_names(cfg) also covers runs without them
    "attention": ["keys", "attn_bias", "values", "user_bias", "user_vec"],
    "mlp": ["user_bias", "user_vec"],
    "two-tower": ["user_vec"],
}


def state_names(cfg: ModelConfig) -> list[str]:
    names = list(STATE_NAMES[cfg.arch])
    if cfg.arch != "two-tower" and not cfg.interactions:
        names.remove("user_vec")
    return names


def state_shapes(cfg: ModelConfig) -> dict[str, list]:
    D, A, H = cfg.emb_dim, cfg.attn_dim, (cfg.score_hidden[0] if cfg.score_hidden else 0)
    shapes = {"keys": ["B", "L", A], "attn_bias": ["B", "L"], "values": ["B", "L", D], "user_bias": ["B", H],
              "user_vec": ["B", D]}
    return {n: shapes[n] for n in state_names(cfg)}


class UserEncoder(nn.Module):
    """hist_emb [B,L,D], hist_mask [B,L] -> the user-state tensors (order: STATE_NAMES[arch])."""

    def __init__(self, model: NANNModel):
        super().__init__()
        cfg = model.cfg
        self.arch = cfg.arch
        self.interactions = cfg.interactions
        D = cfg.emb_dim
        with torch.no_grad():
            if self.arch == "two-tower":
                tower = [blk.folded() for blk in model.tower_blocks]
                for i, (w, b, a) in enumerate(tower):
                    self.register_buffer(f"tw{i}", w); self.register_buffer(f"tb{i}", b); self.register_buffer(f"ta{i}", a)
                self.n_tower = len(tower)
                self.register_buffer("tow_w", model.tower_out.weight.detach().clone())
                self.register_buffer("tow_b", model.tower_out.bias.detach().clone())
                return
            w1, b1, _ = model.score_blocks[0].folded()
            self.register_buffer("wu", w1[:, :D].clone())
            self.register_buffer("b1", b1)
            if self.arch == "attention":
                kp, qp = model.k_proj, model.q_proj
                scale = 1.0 / math.sqrt(cfg.attn_dim)
                self.register_buffer("k1w", kp.l1.weight.detach().clone()); self.register_buffer("k1b", kp.l1.bias.detach().clone())
                self.register_buffer("ka", kp.act.weight.detach().clone())
                self.register_buffer("k2w", kp.l2.weight.detach().clone()); self.register_buffer("k2b", kp.l2.bias.detach().clone())
                # q.k = (Wq2 h + bq2).k = h.(Wq2^T k) + bq2.k  -> keys' = k Wq2, bias = bq2.k (both scaled)
                self.register_buffer("q2w", (qp.l2.weight.detach() * scale).clone())
                self.register_buffer("q2b", (qp.l2.bias.detach() * scale).clone())

    def forward(self, hist_emb: torch.Tensor, hist_mask: torch.Tensor):
        m = hist_mask
        u = (hist_emb * m[..., None]).sum(1)
        if self.arch == "two-tower":
            x = u
            for i in range(self.n_tower):
                x = _prelu(F.linear(x, getattr(self, f"tw{i}"), getattr(self, f"tb{i}")), getattr(self, f"ta{i}"))
            return (F.linear(x, self.tow_w, self.tow_b),)
        user_bias = F.linear(u, self.wu, self.b1)
        uv = (u,) if self.interactions else ()
        if self.arch == "mlp":
            return (user_bias, *uv)
        k = F.linear(_prelu(F.linear(hist_emb, self.k1w, self.k1b), self.ka), self.k2w, self.k2b)  # [B,L,A]
        keys = torch.matmul(k, self.q2w)                                                     # [B,L,A]
        attn_bias = torch.matmul(k, self.q2b) + (m - 1.0) * (-MASK_NEG)                       # [B,L]
        values = hist_emb * m[..., None]                                                     # [B,L,D]
        return (keys, attn_bias, values, user_bias, *uv)


class Scorer(nn.Module):
    """(*state [R,...], cand_emb [C,D], owner [C]) -> scores [C]. ``owner`` must be non-decreasing: each user's
    candidates form one contiguous run, as the engine sends them (``nann.engine.grid`` pads with the last owner).

    Gather-free. The target attention, the only part that needs a user's [L, ·] keys and values, runs as batched
    GEMMs over a [R, Cmax] layout of the runs (``segment_layout``; Cmax = the longest run, the shorter runs padded
    with rows whose results are dropped), so no candidate copies its user's 2·L·64 floats of keys and values.
    Everything else is row-wise over all C candidates as plain GEMMs. Score layer 1 is split by input block: W_u u + b
    (user-only, in the state as ``user_bias``), W_e e_v (item-only) and one GEMM per block that mixes user and item:
    attn, attn*e_v, u*e_v (attention) or u*e_v (mlp), with ``u = user_vec[owner]`` (64 floats per candidate) and
    ``user_bias[owner]`` the only per-candidate user rows. PReLUs whose slopes are all <= 1 run as max(x, a*x)."""

    def __init__(self, model: NANNModel):
        super().__init__()
        cfg = model.cfg
        self.arch = cfg.arch
        self.interactions = cfg.interactions
        D = self.D = cfg.emb_dim
        self.n_state = len(state_names(cfg))
        if self.arch == "two-tower":
            return
        with torch.no_grad():
            w1, _, a1 = model.score_blocks[0].folded()
            blocks = cfg.score_blocks_in()

            def blk(name):
                i = blocks.index(name) * D
                return w1[:, i:i + D]

            self.register_buffer("we", blk("item").clone())
            if self.arch == "attention":
                qp = model.q_proj
                self.A = cfg.attn_dim
                self.register_buffer("wq", qp.l1.weight.detach().clone())
                self.register_buffer("bq", qp.l1.bias.detach().clone())
                self.register_buffer("qa", qp.act.weight.detach().clone())
            self.register_buffer("act1", a1)
            # the blocks of score layer 1 whose input mixes user and candidate, one [H, D] matrix each: separate
            # GEMMs summed ran 1.2x faster than one GEMM over their concatenation (no copy into a [C, 3D] input)
            self.mixed = [n for n in blocks if n not in ("user", "item")]
            for n in self.mixed:
                self.register_buffer(MIXED_WEIGHTS[n], blk(n).clone())
            rest = [blk.folded() for blk in model.score_blocks[1:]]
            self.n_rest = len(rest)
            for i, (w, b, a) in enumerate(rest):
                self.register_buffer(f"rw{i}", w); self.register_buffer(f"rb{i}", b); self.register_buffer(f"ra{i}", a)
            self.register_buffer("wo", model.score_out.weight.detach()[0].clone())
            self.register_buffer("bo", model.score_out.bias.detach().clone())
            slopes = [b for n, b in self.named_buffers() if n in ("qa", "act1") or n.startswith("ra")]
            # PReLU with per-feature slopes a <= 1 equals max(x, a*x): two vectorised element-wise ops, where the
            # runtimes' broadcasting PRelu kernels took a quarter of the scorer's time (ONNX Runtime profile)
            self.slopes_at_most_one = all(float(b.max()) <= 1.0 for b in slopes)

    def _act(self, x, a):
        return torch.maximum(x, x * a) if self.slopes_at_most_one else F.prelu(x, a)

    def _head(self, z):
        x = self._act(z, self.act1)
        for i in range(self.n_rest):
            x = self._act(F.linear(x, getattr(self, f"rw{i}"), getattr(self, f"rb{i}")), getattr(self, f"ra{i}"))
        return torch.matmul(x, self.wo) + self.bo

    def _first(self, state, yq, e, owner, ye=None):
        """Score layer 1 pre-activation: yq = W_q1 e_v + b (attention's query input; None for mlp), e = e_v [C,D],
        ye = W_e e_v when precomputed (``cand_pre``). Every block accumulates into z with addmm (z + x Wᵀ in one
        BLAS call, in place; ONNX Gemm with a C input) instead of a GEMM and an add."""
        attention = self.arch == "attention"
        user_bias = state[3] if attention else state[0]
        z = user_bias[owner] + ye if ye is not None else torch.addmm(user_bias[owner], e, self.we.t())
        if attention:
            att = segment_attention(self._act(yq, self.qa), state[0], state[1], state[2], owner)   # [C,D]
            z = z.addmm_(att, self.w_a.t())
            if self.interactions:
                z = z.addmm_(att * e, self.w_ae.t())
        if "user*item" in self.mixed:
            z = z.addmm_(state[4 if attention else 1][owner] * e, self.w_ue.t())
        return z

    def forward(self, *args):
        state, cand_emb, owner = args[:self.n_state], args[self.n_state], args[self.n_state + 1]
        if self.arch == "two-tower":
            return (state[0][owner] * cand_emb).sum(-1)
        yq = F.linear(cand_emb, self.wq, self.bq) if self.arch == "attention" else None
        return self._head(self._first(state, yq, cand_emb, owner))

    def cand_pre(self, cand_emb):
        """The candidate-only part (item-only; can be computed once for all items): the linear maps, followed by
        e_v itself when the score network has interaction inputs."""
        if self.arch == "two-tower":
            return cand_emb
        parts = ([F.linear(cand_emb, self.wq, self.bq)] if self.arch == "attention" else []) + \
            [F.linear(cand_emb, self.we)] + ([cand_emb] if self.interactions else [])
        return torch.cat(parts, dim=-1)

    def score_one_pre(self, state, y):
        """Scores of one user (state rows [1,...]) for candidates given by their ``cand_pre`` rows y: the trainer's
        validation scores every item with ``cand_pre`` computed once. Same function as forward."""
        if self.arch == "two-tower":
            return y @ state[0][0]
        a = self.A if self.arch == "attention" else 0
        h = self.we.shape[0]
        owner = torch.zeros(y.shape[0], dtype=torch.int64, device=y.device)
        return self._head(self._first(state, y[:, :a] if a else None, y[:, a + h:], owner, ye=y[:, a:a + h]))


def segment_layout(owner: torch.Tensor, n_users: torch.Tensor):
    """The [R, Cmax] layout of candidate runs for a non-decreasing ``owner`` [C] (R = n_users.shape[0]).

    Returns (rows [R, Cmax]: the candidate row that fills each slot, row 0 for the padding slots;
    slot [C]: each candidate's position in the flattened [R*Cmax] layout). Written with tensor ops only, so the
    ONNX export keeps R, C and Cmax dynamic (ScatterElements, CumSum, ReduceMax, Range)."""
    counts = torch.zeros_like(n_users, dtype=torch.int64).scatter_add(0, owner, torch.ones_like(owner))
    starts = torch.cumsum(counts, 0) - counts
    cmax = counts.max()
    j = torch.arange(cmax, device=owner.device)[None, :]                            # [1,Cmax]
    rows = torch.where(j < counts[:, None], starts[:, None] + j, torch.zeros_like(j))
    index = torch.cumsum(torch.ones_like(owner), 0) - 1                             # 0..C-1
    slot = owner * cmax + (index - starts[owner])
    return rows, slot


def segment_attention(q1, keys, attn_bias, values, owner):
    """Target attention of candidate queries q1 [C,A] over their owners' keys [R,L,A] / values [R,L,D] (with
    attn_bias [R,L] holding the query bias term and the mask) as batched GEMMs; returns [C,D]."""
    rows, slot = segment_layout(owner, attn_bias[:, 0])
    logits = torch.matmul(q1[rows], keys.transpose(1, 2)) + attn_bias[:, None, :]  # [R,Cmax,L]
    out = torch.matmul(torch.softmax(logits, dim=-1), values)                      # [R,Cmax,D]
    return out.reshape(-1, out.shape[-1])[slot]


class NaiveScorer(nn.Module):
    """The scorer *before* the rewrites (for benchmarks): inputs hist_emb [R,L,D], hist_mask [R,L], cand_emb, owner.

    User pieces (sum-pool, keys) once per user; per candidate: two-layer query projection, attention over raw values,
    the full first score layer over concat(user, attention, e_v), unfolded BatchNorms."""

    def __init__(self, model: NANNModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, hist_emb, hist_mask, cand_emb, owner):
        return self.model.score_owner(hist_emb, hist_mask, cand_emb, owner)


def build_split(model: NANNModel) -> tuple[UserEncoder, Scorer]:
    model.eval()
    return UserEncoder(model).eval(), Scorer(model).eval()


def load_model(run_dir: str, map_location="cpu") -> NANNModel:
    """The trained model of a run (config.json + model.safetensors), in eval mode."""
    from safetensors.torch import load_file

    cfg_path, w_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise UserError(f"{p} not found: is {run_dir} a finished training run?")
    with open(cfg_path) as f:
        cfg = ModelConfig.from_dict(json.load(f))
    model = NANNModel(cfg)
    model.load_state_dict(load_file(w_path, device=str(map_location)))
    return model.eval()


def per_candidate_macs(cfg: ModelConfig, L: int | None = None) -> dict[str, int]:
    """Multiply-accumulates per candidate, before and after the rewrites (history length L)."""
    L = L or cfg.max_seq
    D, A = cfg.emb_dim, cfg.attn_dim
    if cfg.arch == "two-tower":
        return {"before": D, "after": D}
    sh = list(cfg.score_hidden)
    rest = sum(a * b for a, b in zip(sh[:-1], sh[1:])) + sh[-1]
    n_in = len(cfg.score_blocks_in())
    n_prod = n_in - (3 if cfg.arch == "attention" else 2)  # element-wise products (D multiplies each)
    first = n_in * D * sh[0] + n_prod * D  # the full first score layer over the concatenated input
    if cfg.arch == "mlp":
        return {"before": first + rest, "after": first - D * sh[0] + rest}  # W_u u hoisted into user_bias
    attn = L * A + L * D
    before = 2 * A * D + attn + first + rest
    after = A * D + attn + first - D * sh[0] + rest  # values not folded with W_a (see module doc)
    return {"before": before, "after": after}
