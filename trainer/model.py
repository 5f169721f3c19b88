"""The NANN model (UserBehavior variant of the paper's appendix) and its serving split.

Three architectures share one item network and one serving contract:

* ``attention`` (default): item input = concat(id emb 32, category emb 32); item network FC 64 -> 64 -> 64
  (Linear -> BatchNorm -> PReLU on the hidden layers) -> ``e_v``. The behaviour sequence goes through the same item
  network. Target attention: query = FC(64, PReLU) -> FC(64) of the candidate's ``e_v``, keys = the same kind of
  projection of the behaviours, values = the behaviours' ``e_v``; scaled dot-product, masked softmax.
  User vector = masked sum-pooling of the behaviours' ``e_v``. Score network over concat(user, attention, e_v):
  FC 128 -> 64 -> 32 -> 1 (Linear -> BatchNorm -> PReLU on the hidden layers).
* ``mlp`` ("DNN w/o attention"): the score network sees concat(user, e_v) only.
* ``two-tower``: score = <MLP(user sum-pool), e_v>.

The score is the raw logit ``s_u(e_v)`` (before any sigmoid and without the NCE correction). That same number is the
training logit (before the ``-log(k q(v))`` correction), the brute-force score and the served score.

Serving split (``build_split``): ``UserEncoder(hist_emb [B,L,D], hist_mask [B,L]) -> state tensors`` and
``Scorer(*state [R,...], cand_emb [C,D], owner [C]) -> scores [C]``. Eval-mode BatchNorms are folded into the
adjacent Linear layers, the user-only part of the first score layer (``W_u u + b``) goes into the state, the query's
second projection is folded into the keys (``q.k = h1 . (W_q2^T k) + b_q2 . k``, with the 1/sqrt(d) scale), the
candidate-only maps (query FC1 and the e_v block of score layer 1) run as one GEMM, and the additive mask plus the
key-bias term form one ``attn_bias`` [B,L] tensor.

Not done, on measurement: folding the attention output's block of score layer 1 into the values
(``softmax(qK) (V W_a^T)``) saves 1,792 MACs per candidate at L=50 but doubles the per-candidate gather of ``values``
(L x 128 instead of L x 64 floats); on CPU (torch and ONNX Runtime) the scorer is bound by that gather and ran 1.5-3x
slower with the fold, so ``values`` stays the masked behaviour embeddings and W_a is one [C,64]x[64,128] GEMM.

Masking: padded behaviours get an additive ``-1e4`` on their attention logits *and* their values are multiplied by
the mask, so an all-masked (empty) history gives attention output 0 and user vector 0 - finite, never NaN.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("attention", "mlp", "two-tower")
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})


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
            d_in = D * (3 if cfg.arch == "attention" else 2)
            sd = [d_in] + list(cfg.score_hidden)
            self.score_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(sd[:-1], sd[1:]))
            self.score_out = nn.Linear(sd[-1], 1)
        else:
            td = [D] + list(cfg.tower_hidden)
            self.tower_blocks = nn.ModuleList(DenseBlock(a, b) for a, b in zip(td[:-1], td[1:]))
            self.tower_out = nn.Linear(td[-1], D)

    # ---- item network -------------------------------------------------------------------------------------
    def item_embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.id_emb(ids), self.cat_emb(self.item_category[ids])], dim=-1)
        for blk in self.item_blocks:
            x = blk(x)
        return self.item_out(x)

    @torch.no_grad()
    def all_item_embeddings(self, chunk: int = 65536) -> torch.Tensor:
        was = self.training
        self.eval()
        dev = self.id_emb.weight.device
        out = [self.item_embed(torch.arange(s, min(s + chunk, self.cfg.num_items), device=dev))
               for s in range(0, self.cfg.num_items, chunk)]
        self.train(was)
        return torch.cat(out)

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
        parts = [u[:, None, :].expand(-1, K, -1)]
        if arch == "attention":
            q = self.q_proj(cand_e)                                          # [B,K,A]
            logits = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(self.cfg.attn_dim)  # [B,K,L]
            logits = logits + (mask[:, None, :] - 1.0) * (-MASK_NEG)
            w = torch.softmax(logits, dim=-1) * mask[:, None, :]
            parts.append(torch.matmul(w, hist_e))                           # [B,K,D]
        parts.append(cand_e)
        x = torch.cat(parts, dim=-1)
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

STATE_NAMES = {
    "attention": ["keys", "attn_bias", "values", "user_bias"],
    "mlp": ["user_bias"],
    "two-tower": ["user_vec"],
}


def state_shapes(cfg: ModelConfig) -> dict[str, list]:
    D, A, H = cfg.emb_dim, cfg.attn_dim, (cfg.score_hidden[0] if cfg.score_hidden else 0)
    if cfg.arch == "attention":
        return {"keys": ["B", "L", A], "attn_bias": ["B", "L"], "values": ["B", "L", D], "user_bias": ["B", H]}
    if cfg.arch == "mlp":
        return {"user_bias": ["B", H]}
    return {"user_vec": ["B", D]}


class UserEncoder(nn.Module):
    """hist_emb [B,L,D], hist_mask [B,L] -> the user-state tensors (order: STATE_NAMES[arch])."""

    def __init__(self, model: NANNModel):
        super().__init__()
        cfg = model.cfg
        self.arch = cfg.arch
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
        if self.arch == "mlp":
            return (user_bias,)
        k = F.linear(_prelu(F.linear(hist_emb, self.k1w, self.k1b), self.ka), self.k2w, self.k2b)  # [B,L,A]
        keys = torch.matmul(k, self.q2w)                                                     # [B,L,A]
        attn_bias = torch.matmul(k, self.q2b) + (m - 1.0) * (-MASK_NEG)                       # [B,L]
        values = hist_emb * m[..., None]                                                     # [B,L,D]
        return keys, attn_bias, values, user_bias


class Scorer(nn.Module):
    """(*state [R,...], cand_emb [C,D], owner [C]) -> scores [C]."""

    def __init__(self, model: NANNModel):
        super().__init__()
        cfg = model.cfg
        self.arch = cfg.arch
        D = cfg.emb_dim
        self.n_state = len(STATE_NAMES[self.arch])
        if self.arch == "two-tower":
            return
        with torch.no_grad():
            w1, _, a1 = model.score_blocks[0].folded()
            we = w1[:, -D:]
            if self.arch == "attention":
                qp = model.q_proj
                self.A = cfg.attn_dim
                # one matmul for both candidate-only linear maps: [Wq1; We]
                self.register_buffer("wc", torch.cat([qp.l1.weight.detach(), we]).clone())
                self.register_buffer("bc", torch.cat([qp.l1.bias.detach(), torch.zeros(we.shape[0])]).clone())
                self.register_buffer("qa", qp.act.weight.detach().clone())
            else:
                self.register_buffer("wc", we.clone())
            self.register_buffer("act1", a1)
            if self.arch == "attention":
                self.register_buffer("wa", w1[:, D:2 * D].clone())  # attention output's block of score layer 1
            rest = [blk.folded() for blk in model.score_blocks[1:]]
            self.n_rest = len(rest)
            for i, (w, b, a) in enumerate(rest):
                self.register_buffer(f"rw{i}", w); self.register_buffer(f"rb{i}", b); self.register_buffer(f"ra{i}", a)
            self.register_buffer("wo", model.score_out.weight.detach()[0].clone())
            self.register_buffer("bo", model.score_out.bias.detach().clone())

    def forward(self, *args):
        state, cand_emb, owner = args[:self.n_state], args[self.n_state], args[self.n_state + 1]
        if self.arch == "two-tower":
            return (state[0][owner] * cand_emb).sum(-1)
        if self.arch == "mlp":
            z = F.linear(cand_emb, self.wc) + state[0][owner]
        else:
            keys, attn_bias, values, user_bias = state
            y = F.linear(cand_emb, self.wc, self.bc)
            q1 = _prelu(y[:, :self.A], self.qa)                                      # [C,A]
            logits = torch.matmul(keys[owner], q1[:, :, None]).squeeze(-1) + attn_bias[owner]  # [C,L]
            w = torch.softmax(logits, dim=-1)
            att = torch.matmul(w[:, None, :], values[owner]).squeeze(1)              # [C,D]
            z = y[:, self.A:] + F.linear(att, self.wa) + user_bias[owner]
        x = _prelu(z, self.act1)
        for i in range(self.n_rest):
            x = _prelu(F.linear(x, getattr(self, f"rw{i}"), getattr(self, f"rb{i}")), getattr(self, f"ra{i}"))
        return torch.matmul(x, self.wo) + self.bo

    def cand_pre(self, cand_emb):
        """The candidate-only linear part (item-only; can be computed once for all items)."""
        if self.arch == "two-tower":
            return cand_emb
        if self.arch == "mlp":
            return F.linear(cand_emb, self.wc)
        return F.linear(cand_emb, self.wc, self.bc)

    def score_one(self, state, cand_emb):
        """Fast path for a single user (R == 1) - plain GEMMs, no per-candidate gathers. Same function."""
        return self.score_one_pre(state, self.cand_pre(cand_emb))

    def score_one_pre(self, state, y):
        if self.arch == "two-tower":
            return y @ state[0][0]
        if self.arch == "mlp":
            z = y + state[0][0]
        else:
            keys, attn_bias, values, user_bias = state
            q1 = _prelu(y[:, :self.A], self.qa)
            w = torch.softmax(q1 @ keys[0].t() + attn_bias[0], dim=-1)
            z = y[:, self.A:] + F.linear(w @ values[0], self.wa) + user_bias[0]
        x = _prelu(z, self.act1)
        for i in range(self.n_rest):
            x = _prelu(F.linear(x, getattr(self, f"rw{i}"), getattr(self, f"rb{i}")), getattr(self, f"ra{i}"))
        return x @ self.wo + self.bo


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


def per_candidate_macs(cfg: ModelConfig, L: int | None = None) -> dict[str, int]:
    """Multiply-accumulates per candidate, before and after the rewrites (history length L)."""
    L = L or cfg.max_seq
    D, A = cfg.emb_dim, cfg.attn_dim
    if cfg.arch == "two-tower":
        return {"before": D, "after": D}
    sh = list(cfg.score_hidden)
    rest = sum(a * b for a, b in zip(sh[:-1], sh[1:])) + sh[-1]
    if cfg.arch == "mlp":
        return {"before": 2 * D * sh[0] + rest, "after": D * sh[0] + rest}
    before = 2 * A * D + L * A + L * D + 3 * D * sh[0] + rest
    after = A * D + L * A + L * D + 2 * D * sh[0] + rest  # values not folded with W_a (see module doc)
    return {"before": before, "after": after}
