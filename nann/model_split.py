"""The serving split of a NANN model (``nann.model``): ``UserEncoder(hist_emb [B,L,D], hist_mask [B,L]) -> state
tensors`` and ``Scorer(*state [R,...], cand_emb [C,D], owner [C]) -> scores [C]`` (``build_split``), the same function
as the model with its user-only work hoisted out of the per-candidate path; exported to ONNX by the trainer and run
by ``nann.runtime``.

Eval-mode BatchNorms are folded into the adjacent Linear layers, the user-only part of the first score layer (``W_u u
+ b``) goes into the state (with ``u`` itself as ``user_vec`` for the products: per candidate ``u[owner] * e_v`` is 64
gathered floats and 64 multiplies, and the mixed blocks [attention, attention*e_v, u*e_v] of score layer 1 run as one
[C,192]x[192,128] GEMM; the alternative, a per-user ``W_ue diag(u)`` [128,64] in the state, would gather 8,192 floats
per candidate), the query's second projection is folded into the keys (``q.k = h1 . (W_q2^T k) + b_q2 . k``, with the
1/sqrt(d) scale), the candidate-only maps (query FC1 and the e_v block of score layer 1) run as one GEMM, and the
additive mask plus the key-bias term form one ``attn_bias`` [B,L] tensor.

Not done, on measurement: folding the attention output's block of score layer 1 into the values
(``softmax(qK) (V W_a^T)``) saves 1,792 MACs per candidate at L=50 but doubles the per-candidate gather of ``values``
(L x 128 instead of L x 64 floats); on CPU (torch and ONNX Runtime) the scorer is bound by that gather and ran 1.5-3x
slower with the fold, so ``values`` stays the masked behaviour embeddings and W_a is one [C,64]x[64,128] GEMM.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nann.model import DOT_PARAMS, MASK_NEG, ModelConfig, NANNModel, prelu, recency_rank

MIXED_WEIGHTS = {"attn": "w_a", "attn*item": "w_ae", "user*item": "w_ue"}  # Scorer's score-layer-1 blocks


STATE_NAMES = {  # with interactions (the default); state_names(cfg) also covers runs without them
    "attention": ["keys", "attn_bias", "values", "user_bias", "user_vec"],
    "mlp": ["user_bias", "user_vec"],
    "two-tower": ["user_vec"],
}


def state_names(cfg: ModelConfig) -> list[str]:
    names = list(STATE_NAMES[cfg.arch])
    if cfg.arch != "two-tower" and not cfg.interactions:
        names.remove("user_vec")
    if cfg.arch != "two-tower" and cfg.tower_dot:
        names.append("tower_vec")  # T(u), the user tower's output: its dot term is <T(u), e_v> (always last)
    return names


def state_shapes(cfg: ModelConfig) -> dict[str, list]:
    D, A, H = cfg.emb_dim, cfg.attn_dim, (cfg.score_hidden[0] if cfg.score_hidden else 0)
    shapes = {"keys": ["B", "L", A], "attn_bias": ["B", "L"], "values": ["B", "L", D], "user_bias": ["B", H],
              "user_vec": ["B", D], "tower_vec": ["B", D]}
    return {n: shapes[n] for n in state_names(cfg)}


class UserEncoder(nn.Module):
    """hist_emb [B,L,D], hist_mask [B,L] -> the user-state tensors (order: STATE_NAMES[arch])."""

    def __init__(self, model: NANNModel):
        super().__init__()
        cfg = model.cfg
        self.arch = cfg.arch
        self.interactions = cfg.interactions
        self.max_seq = cfg.max_seq
        self.tower_dot = cfg.tower_dot
        D = cfg.emb_dim
        with torch.no_grad():
            for part in ("scale", "shift"):
                table = getattr(model, f"recency_{part}").weight.detach().clone() if cfg.recency else None
                self.register_buffer(f"recency_{part}", table)
            if self.arch == "two-tower" or self.tower_dot:
                tower = [blk.folded() for blk in model.tower_blocks]
                for i, (w, b, a) in enumerate(tower):
                    self.register_buffer(f"tw{i}", w); self.register_buffer(f"tb{i}", b); self.register_buffer(f"ta{i}", a)
                self.n_tower = len(tower)
                self.register_buffer("tow_w", model.tower_out.weight.detach().clone())
                self.register_buffer("tow_b", model.tower_out.bias.detach().clone())
            if self.arch == "two-tower":
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
        if self.recency_scale is not None:  # NANNModel.behaviours
            rank = recency_rank(m).clamp(max=self.max_seq - 1)
            hist_emb = hist_emb * (1.0 + self.recency_scale[rank]) + self.recency_shift[rank]
        hist_emb = hist_emb * m[..., None]
        u = hist_emb.sum(1)
        if self.arch == "two-tower":
            return (self._tower(u),)
        user_bias = F.linear(u, self.wu, self.b1)
        uv = ((u,) if self.interactions else ()) + ((self._tower(u),) if self.tower_dot else ())
        if self.arch == "mlp":
            return (user_bias, *uv)
        k = F.linear(prelu(F.linear(hist_emb, self.k1w, self.k1b), self.ka), self.k2w, self.k2b)  # [B,L,A]
        keys = torch.matmul(k, self.q2w)                                                     # [B,L,A]
        attn_bias = torch.matmul(k, self.q2b) + (m - 1.0) * (-MASK_NEG)                       # [B,L]
        return (keys, attn_bias, hist_emb, user_bias, *uv)


    def _tower(self, u):
        """The user tower (``NANNModel.tower``), BatchNorms folded."""
        x = u
        for i in range(self.n_tower):
            x = prelu(F.linear(x, getattr(self, f"tw{i}"), getattr(self, f"tb{i}")), getattr(self, f"ta{i}"))
        return F.linear(x, self.tow_w, self.tow_b)


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
            self.dot_terms = cfg.weighted_dot_terms
            self.tower_dot = cfg.tower_dot
            for b in self.dot_terms:
                self.register_buffer(f"dot_{DOT_PARAMS[b]}", model.dot_weights[DOT_PARAMS[b]].detach().clone())
            slopes = [b for n, b in self.named_buffers() if n in ("qa", "act1") or n.startswith("ra")]
            # PReLU with per-feature slopes a <= 1 equals max(x, a*x): two vectorised element-wise ops, where the
            # runtimes' broadcasting PRelu kernels took a quarter of the scorer's time (ONNX Runtime profile)
            self.slopes_at_most_one = all(float(b.max()) <= 1.0 for b in slopes)
        # True: the attention gathers each candidate's keys and values (`gather_attention`), so every shape follows
        # from the call's size alone, as a captured CUDA graph needs; False: the gather-free segment layout
        self.fixed_shapes = False

    def _act(self, x, a):
        return torch.maximum(x, x * a) if self.slopes_at_most_one else F.prelu(x, a)

    def _head(self, z):
        x = self._act(z, self.act1)
        for i in range(self.n_rest):
            x = self._act(F.linear(x, getattr(self, f"rw{i}"), getattr(self, f"rb{i}")), getattr(self, f"ra{i}"))
        return torch.matmul(x, self.wo) + self.bo

    def _first(self, state, yq, e, owner, ye=None):
        """Score layer 1 pre-activation and the dot terms' sum (None without them): yq = W_q1 e_v + b (attention's
        query input; None for mlp), e = e_v [C,D], ye = W_e e_v when precomputed (``cand_pre``). Every block
        accumulates into z with addmm (z + x Wᵀ in one BLAS call, in place; ONNX Gemm with a C input) instead of a
        GEMM and an add."""
        attention = self.arch == "attention"
        user_bias = state[3] if attention else state[0]
        z = user_bias[owner] + ye if ye is not None else torch.addmm(user_bias[owner], e, self.we.t())
        mixed = {}
        if attention:
            attend = gather_attention if self.fixed_shapes else segment_attention
            att = attend(self._act(yq, self.qa), state[0], state[1], state[2], owner)              # [C,D]
            z = z.addmm_(att, self.w_a.t())
            if self.interactions:
                mixed["attn*item"] = att * e
                z = z.addmm_(mixed["attn*item"], self.w_ae.t())
        if "user*item" in self.mixed:
            mixed["user*item"] = state[4 if attention else 1][owner] * e
            z = z.addmm_(mixed["user*item"], self.w_ue.t())
        terms = [torch.matmul(mixed[b], getattr(self, f"dot_{DOT_PARAMS[b]}")) for b in self.dot_terms]
        if self.tower_dot:  # <T(u), e_v>, T(u) the state's last tensor
            terms.append((state[-1][owner] * e).sum(-1))
        return z, (sum(terms[1:], terms[0]) if terms else None)

    def _score(self, first):
        z, dot = first
        return self._head(z) if dot is None else self._head(z) + dot

    def forward(self, *args):
        state, cand_emb, owner = args[:self.n_state], args[self.n_state], args[self.n_state + 1]
        if self.arch == "two-tower":
            return (state[0][owner] * cand_emb).sum(-1)
        yq = F.linear(cand_emb, self.wq, self.bq) if self.arch == "attention" else None
        return self._score(self._first(state, yq, cand_emb, owner))

    def cand_pre(self, cand_emb):
        """The candidate-only part (item-only; can be computed once for all items): the linear maps, followed by
        e_v itself when the score network has interaction inputs."""
        if self.arch == "two-tower":
            return cand_emb
        parts = ([F.linear(cand_emb, self.wq, self.bq)] if self.arch == "attention" else []) + \
            [F.linear(cand_emb, self.we)] + ([cand_emb] if self.interactions else [])
        return torch.cat(parts, dim=-1)

    def score_pre(self, state, y, owner):
        """Scores of candidates given by their ``cand_pre`` rows y [C,...] for their owners [C] (non-decreasing):
        the same function as forward, with the candidate-only maps looked up instead of computed."""
        if self.arch == "two-tower":
            return (state[0][owner] * y).sum(-1)
        a = self.A if self.arch == "attention" else 0
        h = self.we.shape[0]
        return self._score(self._first(state, y[:, :a] if a else None, y[:, a + h:], owner, ye=y[:, a:a + h]))

    def score_one_pre(self, state, y):
        """Scores of one user (state rows [1,...]) for candidates given by their ``cand_pre`` rows y: the trainer's
        validation scores every item with ``cand_pre`` computed once."""
        if self.arch == "two-tower":
            return y @ state[0][0]
        return self.score_pre(state, y, torch.zeros(y.shape[0], dtype=torch.int64, device=y.device))


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


def gather_attention(q1, keys, attn_bias, values, owner):
    """``segment_attention``'s result with each candidate gathering its owner's keys and values ([C,L,·] copies):
    every shape follows from C alone, where the segment layout's follows from the longest run."""
    logits = torch.bmm(keys[owner], q1[:, :, None])[..., 0] + attn_bias[owner]           # [C,L]
    return torch.bmm(torch.softmax(logits, dim=-1)[:, None, :], values[owner])[:, 0]     # [C,D]


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
    n_in = len(cfg.score_blocks_in())
    n_prod = n_in - (3 if cfg.arch == "attention" else 2)  # element-wise products (D multiplies each)
    # the full first score layer over the concatenated input, and the dot terms' weighted sums
    first = n_in * D * sh[0] + n_prod * D + len(cfg.dot_terms) * D
    if cfg.arch == "mlp":
        return {"before": first + rest, "after": first - D * sh[0] + rest}  # W_u u hoisted into user_bias
    attn = L * A + L * D
    before = 2 * A * D + attn + first + rest
    after = A * D + attn + first - D * sh[0] + rest  # values not folded with W_a (see module doc)
    return {"before": before, "after": after}
