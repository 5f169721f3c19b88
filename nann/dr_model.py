"""Deep Retrieval network (arXiv 2007.07203): user encoder, D-layer structure model, item reranker, beam search,
and the loader of a DR run directory (``load_dr``). Training: ``trainer/deep_retrieval.py``; evaluation:
``nann.evaluate.evaluate_dr``.

User encoder (our choice, CPU-friendly instead of the paper's GRU): item + category embeddings of the last
``max_seq`` behaviours; the masked mean and the most recent behaviour's embedding are concatenated and passed
through a 2-layer MLP -> ``h`` [B, H].

Structure layer d (0-based) is an MLP over ``[h ; node_emb_0(c_0) ; ... ; node_emb_{d-1}(c_{d-1})]`` with a K-way
softmax, so ``log p(c | x) = Σ_d log p(c_d | x, c_<d)``.

Reranker: ``score(x, v) = <W h, e'_v> + b_v`` trained with a sampled softmax (unigram negatives, logQ correction).

Run directory (``nann.run_dir``): the config ("arch": "deep-retrieval"), the weights, the item paths int32 [N, J, D]
(node of each layer of each item's paths) and the training log.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nann.errors import UserError
from nann.run_dir import RunDir

ARCH = "deep-retrieval"


class DRModel(nn.Module):
    def __init__(self, num_items: int, num_categories: int, *, layers: int = 3, nodes: int = 64, emb_dim: int = 64,
                 hidden: int = 128, node_dim: int = 32):
        super().__init__()
        self.num_items, self.layers, self.nodes = num_items, layers, nodes
        self.item_emb = nn.Embedding(num_items, emb_dim)
        self.cat_emb = nn.Embedding(max(1, num_categories), emb_dim)
        self.encoder = nn.Sequential(nn.Linear(2 * emb_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.node_emb = nn.ModuleList([nn.Embedding(nodes, node_dim) for _ in range(layers - 1)])
        self.struct = nn.ModuleList([
            nn.Sequential(nn.Linear(hidden + d * node_dim, hidden), nn.ReLU(), nn.Linear(hidden, nodes))
            for d in range(layers)])
        self.rerank_proj = nn.Linear(hidden, emb_dim)
        self.out_emb = nn.Embedding(num_items, emb_dim)
        self.out_bias = nn.Parameter(torch.zeros(num_items))
        nn.init.normal_(self.item_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        nn.init.normal_(self.out_emb.weight, std=0.05)
        self.register_buffer("item_category", torch.zeros(num_items, dtype=torch.long))

    # -- user side -------------------------------------------------------------------------------------------
    def encode(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hist int64 [B, L] (left-aligned), mask float32 [B, L] -> h [B, H]."""
        e = self.item_emb(hist) + self.cat_emb(self.item_category[hist])
        m = mask.unsqueeze(-1)
        n = mask.sum(1, keepdim=True)
        mean = (e * m).sum(1) / n.clamp_min(1.0)
        last_idx = (n.squeeze(1).long() - 1).clamp_min(0)
        last = e[torch.arange(e.shape[0]), last_idx] * (n > 0).float()
        return self.encoder(torch.cat([mean, last], dim=1))

    # -- structure -------------------------------------------------------------------------------------------
    def layer_logprobs(self, d: int, h: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """log p(c_d | x, c_<d): h [n, H], prefix int64 [n, d] -> [n, K]."""
        parts = [h] + [self.node_emb[i](prefix[:, i]) for i in range(d)]
        return F.log_softmax(self.struct[d](torch.cat(parts, dim=1)), dim=1)

    def path_logprob(self, h: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """h [B, H], paths int64 [B, J, D] -> log p(path | x) [B, J]."""
        B, J, D = paths.shape
        hh = h.unsqueeze(1).expand(B, J, h.shape[1]).reshape(B * J, -1)
        flat = paths.reshape(B * J, D)
        total = torch.zeros(B * J)
        for d in range(D):
            lp = self.layer_logprobs(d, hh, flat[:, :d])
            total = total + lp.gather(1, flat[:, d:d + 1]).squeeze(1)
        return total.view(B, J)

    def step_fn(self, h: torch.Tensor):
        """Beam-search step function over users' encodings h [U, H]."""
        return lambda d, users, prefix: self.layer_logprobs(d, h[users], prefix)

    # -- reranker --------------------------------------------------------------------------------------------
    def rerank_query(self, h: torch.Tensor) -> torch.Tensor:
        return self.rerank_proj(h)

    def rerank_scores(self, q: torch.Tensor, owner: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Scores of candidates ids [C] for query rows owner [C]."""
        return (q[owner] * self.out_emb(ids)).sum(1) + self.out_bias[ids]

    def rerank_all(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.out_emb.weight.T + self.out_bias


def beam_search(step_fn, num_users: int, nodes: int, layers: int, beam: int):
    """Top-``beam`` paths by joint log-probability for each user.

    ``step_fn(d, users int64 [n], prefix int64 [n, d]) -> log-probs [n, K]`` for layer d.
    Returns (paths int64 [U, B', D], scores float32 [U, B']) best first, B' = min(beam, K^D).
    Exact at every layer: the top-B prefixes of length d+1 are always extensions of the top-B prefixes of length d.
    """
    U = num_users
    users = torch.arange(U)
    lp = step_fn(0, users, torch.zeros(U, 0, dtype=torch.long))                    # [U, K]
    k = min(beam, nodes)
    scores, idx = lp.topk(k, dim=1)                                                 # [U, k]
    paths = idx.unsqueeze(2)                                                        # [U, k, 1]
    for d in range(1, layers):
        b = paths.shape[1]
        lp = step_fn(d, users.repeat_interleave(b), paths.reshape(U * b, d)).view(U, b, nodes)
        total = (scores.unsqueeze(2) + lp).reshape(U, b * nodes)
        k = min(beam, b * nodes)
        scores, flat = total.topk(k, dim=1)
        parent = torch.div(flat, nodes, rounding_mode="floor")
        child = flat % nodes
        paths = torch.cat([paths.gather(1, parent.unsqueeze(2).expand(U, k, d)), child.unsqueeze(2)], dim=2)
    return paths, scores


def path_codes(paths: np.ndarray, nodes: int) -> np.ndarray:
    """Paths [..., D] -> int64 codes Σ_d c_d K^(D-1-d)."""
    paths = np.asarray(paths, dtype=np.int64)
    code = np.zeros(paths.shape[:-1], dtype=np.int64)
    for d in range(paths.shape[-1]):
        code = code * nodes + paths[..., d]
    return code


def code_paths(codes: np.ndarray, nodes: int, layers: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.int64)
    out = np.zeros(codes.shape + (layers,), dtype=np.int64)
    for d in range(layers - 1, -1, -1):
        out[..., d] = codes % nodes
        codes = codes // nodes
    return out


class PathIndex:
    """Inverted index path code -> items (CSR over the sorted distinct codes in use)."""

    def __init__(self, item_codes: np.ndarray):
        """item_codes int64 [N, J]."""
        n, j = item_codes.shape
        codes = item_codes.reshape(-1)
        items = np.repeat(np.arange(n, dtype=np.int64), j)
        order = np.argsort(codes, kind="stable")
        codes, self.items = codes[order], items[order]
        self.codes, starts = np.unique(codes, return_index=True)
        self.indptr = np.append(starts, codes.shape[0]).astype(np.int64)

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def collect(self, codes: np.ndarray) -> np.ndarray:
        """Distinct items mapped to any of the given codes."""
        pos = np.searchsorted(self.codes, codes)
        pos = np.minimum(pos, max(0, self.codes.shape[0] - 1))
        hit = pos[self.codes[pos] == codes]
        if hit.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.items[self.indptr[p]:self.indptr[p + 1]] for p in hit]))


def load_dr(run_dir):
    """(model, config, item path codes int64 [N, J]) of a DR run directory."""
    from safetensors.torch import load_file

    run = RunDir(run_dir)
    if not run.config_file.exists():
        raise UserError(f"{run_dir} has no {run.config_file.name}: train it with `nann train --arch deep-retrieval`")
    cfg = run.read_config()
    if cfg.get("arch") != ARCH:
        raise UserError(f"{run_dir} is a {cfg.get('arch')!r} run, not deep-retrieval")
    run.require([run.weights_file, run.item_paths_file], "re-run `nann train --arch deep-retrieval`")
    model = DRModel(cfg["num_items"], cfg["num_categories"], layers=cfg["layers"], nodes=cfg["nodes"],
                    emb_dim=cfg["emb_dim"], hidden=cfg["hidden"], node_dim=cfg["node_dim"])
    model.load_state_dict(load_file(run.weights_file))
    model.eval()
    paths = np.load(run.item_paths_file, allow_pickle=False)
    return model, cfg, path_codes(paths, cfg["nodes"])
