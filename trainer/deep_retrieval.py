"""Deep Retrieval (DR, arXiv 2007.07203) as a comparison baseline: EM training.

Model, beam search and the run directory's format: ``nann/dr_model.py``; M-step: ``trainer/dr_mstep.py``;
evaluation: ``nann.evaluate.evaluate_dr``.

Training (``train_dr``): initial random item->path mapping (J distinct paths of D layers × K nodes per item), then
``em_iterations`` rounds of [E-step, M-step] and a final E-step:
- E-step: ``epochs`` passes of Adam over (at most ``max_samples``) training samples with the mapping fixed; loss =
  −log Σ_j p(π_j(y) | x) (structure) + sampled-softmax cross-entropy of the reranker (``negatives`` unigram noise
  items shared by the batch, logQ-corrected, accidental hits masked).
- M-step: a beam search (``mstep_beam``) for ``mstep_samples`` training pairs gives each pair's top paths and
  p(c | x); they are streamed into each target item's top-S list; paths are then re-assigned greedily with the
  path-size penalty α·f(|c|), f(n) = n⁴/4 (see dr_mstep.py).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nann.dr_model import ARCH, DRModel, PathIndex, beam_search, code_paths, path_codes
from nann.errors import UserError
from nann.run_dir import RunDir
from trainer.dr_mstep import accumulate_topk, assign_paths, random_codes
from trainer.sampling import NoiseSampler, epoch_order, make_batch


def _path_stats(codes: np.ndarray) -> dict:
    sizes = PathIndex(codes).sizes()
    return {"paths_used": int(sizes.shape[0]), "max_path_size": int(sizes.max()),
            "mean_path_size": float(sizes.mean())}


def _log(run_dir: str, rec: dict, quiet: bool) -> None:
    with open(RunDir(run_dir).train_log_file, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if not quiet:
        print(f"[dr] {json.dumps(rec)}", file=sys.stderr)


def _e_step(model, opt, items, offsets, positions, codes_t, noise, cfg, rng, epoch_id, quiet):
    model.train()
    K = cfg["nodes"]
    paths_t = torch.from_numpy(code_paths(codes_t, K, cfg["layers"]))            # [N, J, D]
    log_q = torch.from_numpy(noise.log_q)
    tot = {"struct": 0.0, "rerank": 0.0, "n": 0}
    for ep in range(cfg["epochs"]):
        order = epoch_order(positions, cfg["seed"], epoch_id * 1000 + ep, cfg["max_samples"], 0, 1)
        bs = cfg["batch_size"]
        for start in tqdm(range(0, len(order), bs), desc=f"dr E-step {epoch_id}", unit="batch", file=sys.stderr,
                          leave=False, disable=quiet):
            hist, mask, tgt = make_batch(items, offsets, order[start:start + bs], cfg["max_seq"])
            hist, mask, tgt = torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(tgt)
            h = model.encode(hist, mask)
            l_struct = -torch.logsumexp(model.path_logprob(h, paths_t[tgt]), dim=1).mean()
            q = model.rerank_query(h)
            neg = torch.from_numpy(noise.sample(rng, (cfg["negatives"],)))
            pos_logit = (q * model.out_emb(tgt)).sum(1) + model.out_bias[tgt] - log_q[tgt]
            neg_logit = q @ model.out_emb(neg).T + model.out_bias[neg] - log_q[neg]
            neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == tgt.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos_logit.unsqueeze(1), neg_logit], dim=1)
            l_rank = F.cross_entropy(logits, torch.zeros(len(tgt), dtype=torch.long))
            opt.zero_grad()
            (l_struct + l_rank).backward()
            opt.step()
            tot["struct"] += l_struct.item() * len(tgt)
            tot["rerank"] += l_rank.item() * len(tgt)
            tot["n"] += len(tgt)
    n = max(1, tot["n"])
    return {"struct_loss": tot["struct"] / n, "rerank_loss": tot["rerank"] / n, "samples": tot["n"]}


@torch.no_grad()
def _m_step(model, items, offsets, positions, codes, cfg, rng, it, quiet):
    model.eval()
    N, J = codes.shape
    sel = positions
    if cfg["mstep_samples"] and cfg["mstep_samples"] < len(positions):
        sel = np.sort(rng.choice(positions, cfg["mstep_samples"], replace=False))
    top_code = np.full((N, cfg["top_s"]), -1, dtype=np.int64)
    top_score = np.zeros((N, cfg["top_s"]), dtype=np.float64)
    counts = np.zeros(N, dtype=np.int64)
    chunk = 2048
    for start in tqdm(range(0, len(sel), chunk), desc=f"dr M-step {it}", unit="chunk", file=sys.stderr,
                      leave=False, disable=quiet):
        hist, mask, tgt = make_batch(items, offsets, sel[start:start + chunk], cfg["max_seq"])
        h = model.encode(torch.from_numpy(hist), torch.from_numpy(mask))
        paths, scores = beam_search(model.step_fn(h), len(tgt), cfg["nodes"], cfg["layers"], cfg["mstep_beam"])
        accumulate_topk(top_code, top_score, tgt, path_codes(paths.numpy(), cfg["nodes"]),
                        scores.exp().double().numpy(), cfg["decay"])
        counts += np.bincount(tgt, minlength=N)
    new = assign_paths(top_code, top_score, counts, codes, cfg["alpha"], rounds=2, seed=cfg["seed"] + it)
    changed = float((np.sort(new, 1) != np.sort(codes, 1)).any(1).mean())
    return new, {"mstep_pairs": int(len(sel)), "items_changed": changed}


def train_dr(data_dir, run_dir, *, layers=3, nodes=64, paths=3, beam=10, alpha=1e-5, epochs=1, em_iterations=3,
             batch_size=2048, max_samples=300_000, seed=0, lr=3e-3, mstep_beam=16, mstep_samples=300_000, top_s=16,
             decay=0.999, negatives=1024, emb_dim=64, hidden=128, node_dim=32, threads=0, quiet=False) -> dict:
    """Train DR on a prepared data directory; writes the run directory and returns its config.

    threads > 0 sets torch's intra-op threads (1 is much faster on a small, shared CPU).
    """
    if threads:
        torch.set_num_threads(threads)
    from nann.data.prepared import PreparedData

    data = PreparedData.load(str(data_dir))
    if nodes ** layers < paths:
        raise UserError(f"--nodes {nodes} and --layers {layers} give fewer than {paths} paths")
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    run.train_log_file.unlink(missing_ok=True)
    N = data.num_items
    cfg = dict(arch=ARCH, layers=layers, nodes=nodes, paths=paths, beam=beam, alpha=alpha, epochs=epochs,
               em_iterations=em_iterations, batch_size=batch_size, max_samples=max_samples, seed=seed, lr=lr,
               mstep_beam=mstep_beam, mstep_samples=mstep_samples, top_s=top_s, decay=decay, negatives=negatives,
               emb_dim=emb_dim, hidden=hidden, node_dim=node_dim, num_items=N,
               num_categories=max(1, data.num_categories), max_seq=data.max_seq,
               data_dir=os.path.abspath(str(data_dir)), encoder="mean+last item/category embeddings -> MLP")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DRModel(N, cfg["num_categories"], layers=layers, nodes=nodes, emb_dim=emb_dim, hidden=hidden,
                    node_dim=node_dim)
    model.item_category.copy_(torch.from_numpy(np.asarray(data.vocab.item_category, dtype=np.int64)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    items = np.asarray(data.train.items, dtype=np.int32)
    offsets = np.asarray(data.train.offsets, dtype=np.int64)
    positions = data.train.sample_positions()
    if len(positions) == 0:
        raise UserError(f"{data_dir} has no training samples")
    noise = NoiseSampler(data.item_counts)
    codes = random_codes(N, paths, nodes ** layers, rng)
    t0 = time.time()
    for it in range(em_iterations + 1):
        rec = {"em_iteration": it, **_e_step(model, opt, items, offsets, positions, codes, noise, cfg, rng, it,
                                             quiet)}
        if it < em_iterations:
            codes, mrec = _m_step(model, items, offsets, positions, codes, cfg, rng, it, quiet)
            rec.update(mrec)
        rec.update(_path_stats(codes), seconds=round(time.time() - t0, 1))
        _log(run_dir, rec, quiet)
    _save(run_dir, model, cfg, codes)
    return cfg


def _save(run_dir, model, cfg, codes):
    from safetensors.torch import save_file

    run = RunDir(run_dir)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, run.weights_file)
    np.save(run.item_paths_file, code_paths(codes, cfg["nodes"], cfg["layers"]).astype(np.int32))
    run.write_config(cfg)


def main_train(args) -> int:
    """`nann train --arch deep-retrieval`: uses data, run, epochs, batch_size, lr, max_samples (0 = all samples per
    E-step epoch), seed; CPU only; the DR-specific settings take train_dr's defaults."""
    dev = getattr(args, "device", "auto")
    if dev not in ("auto", "cpu", None):
        print(f"[dr] note: deep-retrieval trains on CPU; --device {dev} ignored", file=sys.stderr)
    train_dr(args.data, args.run, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
             max_samples=args.max_samples)
    return 0
