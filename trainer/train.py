"""`nann train`: NCE (sampled sigmoid) + the FGSM adversarial auxiliary task, then export of the serving split.

Loss per positive (history, next item) with k = --negatives noise items from the unigram distribution q:
    logit'(v) = s_u(e_v) - log(k q(v))                       (NCE correction, positives and noise alike)
    L_NCE     = sum over the k+1 labels of BCE(logit', label)  (averaged over the batch's positives)
    Δ         = ε sign(∂ s_u(e_v) / ∂ e_v)                   (torch.autograd.grad, Δ detached)
    L_AUX     = sum over the k+1 labels of KL(Bernoulli(σ(s_u(e_v))) || Bernoulli(σ(s_u(e_v + Δ))))
    L         = L_NCE + L_AUX                                 (--fgsm-eps 0: L = L_NCE)
L_AUX is the Bernoulli KL (the paper's s log(s/s̃) plus the matching (1-s) log((1-s)/(1-s̃)) term), which is
non-negative and finite (computed from log-sigmoids). The retrieval/serving score is the raw s_u(e_v).

Optimizers: the two embedding tables (item id, category) take sparse gradients and `torch.optim.SparseAdam`, which
updates only the rows a batch touched; the dense layers take `torch.optim.Adam`, both at --lr. With dense Adam on a
1M-row table every step would rewrite all 32M embedding weights and their moments (1-3 s per step on 2 cores).
NCCL cannot all-reduce sparse gradients, so multi-GPU runs fall back to dense embeddings and Adam.

Data parallel: under torchrun (WORLD_SIZE > 1) the loss module is wrapped in torch DistributedDataParallel (gloo on
CPU, nccl on CUDA); each rank trains on its shard of the epoch's samples and DDP averages the gradients. BatchNorm
running statistics follow DDP's default (rank 0's are broadcast before each forward, and once more at the end);
only rank 0 writes artifacts.

Checkpoint (the run's checkpoint directory, ``nann.run_dir``): the weights, the moments of every optimizer (both
safetensors, no pickle) and the state (epoch, step within the epoch, global step, each optimizer's param_groups). A
run directory with a checkpoint resumes: --epochs is the run's total number of epochs.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from nann.errors import UserError
from nann.model import ARCHS, ModelConfig, NANNModel, load_model
from nann.model_split import build_split
from nann.run_dir import CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_WEIGHTS, RunDir
from nann.runtime import pad_histories
from trainer.sampling import NoiseSampler, epoch_order, load_data, make_batch, sample_positions

TOP_M = 200


def eval_users(kind: str, device: torch.device, requested: int = 0) -> int:
    """Users for brute-force recall-all@200: `--eval-users` when given, else val 1000 / test 2000 on CUDA and
    200 / 500 on CPU (brute force over 100k items costs ~0.25 s per user on 2 cores)."""
    if requested:
        return int(requested)
    if device.type == "cuda":
        return 1000 if kind == "val" else 2000
    return 200 if kind == "val" else 500


# ---- small helpers ---------------------------------------------------------------------------------------------

def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return world, rank, local, local_world


def fgsm_delta(score: torch.Tensor, emb: torch.Tensor, eps: float) -> torch.Tensor:
    """Δ = ε·sign(∂ Σ score / ∂ emb), detached (the graph is kept for the main backward)."""
    (g,) = torch.autograd.grad(score.sum(), emb, retain_graph=True, create_graph=False)
    return (eps * torch.sign(g)).detach()


def bernoulli_kl_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(σ(a)) || Bernoulli(σ(b))), elementwise, finite for all finite a, b."""
    p = torch.sigmoid(a)
    return p * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - p) * (F.logsigmoid(-a) - F.logsigmoid(-b))


def compute_loss(model: NANNModel, hist_ids, mask, cand_ids, log_kq, eps: float):
    """hist_ids [B,L], mask [B,L], cand_ids [B,K] (column 0 = the positive), log_kq [B,K] = log(k q(cand)).

    Returns (loss, nce, aux) with loss = nce + aux (averaged over the B positives)."""
    B, L = hist_ids.shape
    all_ids = torch.cat([hist_ids.reshape(-1), cand_ids.reshape(-1)])
    uniq, inv = torch.unique(all_ids, return_inverse=True)
    E = model.item_embed(uniq)  # each distinct item through the item network once (BatchNorm over distinct items)
    hist_e = E[inv[:B * L]].view(B, L, -1) * mask[..., None]
    cand_e = E[inv[B * L:]].view(B, cand_ids.shape[1], -1)
    u, k = model.user_side(hist_e, mask)
    s = model.cand_side(u, k, hist_e, mask, cand_e)
    labels = torch.zeros_like(s)
    labels[:, 0] = 1.0
    nce = F.binary_cross_entropy_with_logits(s - log_kq, labels, reduction="sum") / B
    if eps > 0:
        delta = fgsm_delta(s, cand_e, eps)
        s_adv = model.cand_side(u, k, hist_e, mask, cand_e + delta)
        aux = bernoulli_kl_logits(s, s_adv).sum() / B
    else:
        aux = torch.zeros((), device=s.device)
    return nce + aux, nce.detach(), aux.detach()


class TrainingObjective(torch.nn.Module):
    """compute_loss as a module: DistributedDataParallel synchronises gradients of what its forward computes."""

    def __init__(self, model: NANNModel, eps: float):
        super().__init__()
        self.model, self.eps = model, eps

    def forward(self, hist_ids, mask, cand_ids, log_kq):
        return compute_loss(self.model, hist_ids, mask, cand_ids, log_kq, self.eps)


# ---- evaluation ------------------------------------------------------------------------------------------------

@torch.no_grad()
def recall_all(model: NANNModel, split, n_users: int, max_seq: int, device, top_m: int = TOP_M,
               item_emb: torch.Tensor | None = None) -> float:
    """recall-all@M of the first n_users of split: brute-force score of every item with the split scorer."""
    n = min(n_users, len(split))
    if n == 0:
        return float("nan")
    was = model.training
    model.eval()
    enc, sc = build_split(model)
    enc, sc = enc.to(device), sc.to(device)
    E = model.all_item_embeddings() if item_emb is None else item_emb
    E = E.to(device)
    Y = sc.cand_pre(E)
    hits = 0
    ub = 64
    for s0 in range(0, n, ub):
        idx = range(s0, min(n, s0 + ub))
        ids, mask = pad_histories([split.history(i) for i in idx], max_seq)
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        state = enc(E[ids_t] * mask_t[..., None], mask_t)
        for j, i in enumerate(idx):
            st = tuple(x[j:j + 1] for x in state)
            scores = sc.score_one_pre(st, Y)
            top = torch.topk(scores, min(top_m, scores.shape[0])).indices
            hits += int((top == int(split.targets[i])).any())
    model.train(was)
    return hits / n


# ---- checkpoints -----------------------------------------------------------------------------------------------

def _save_safetensors(tensors: dict, path: str):
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def _write_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


EMBEDDING_TABLES = ("id_emb", "cat_emb")


def make_optimizers(model: NANNModel, lr: float, sparse: bool) -> dict[str, torch.optim.Optimizer]:
    """{"adam": dense layers} plus {"sparse_adam": embedding tables} when sparse (see the module docstring)."""
    if not sparse:
        return {"adam": torch.optim.Adam(model.parameters(), lr=lr)}
    tables = [getattr(model, name) for name in EMBEDDING_TABLES]
    for table in tables:
        table.sparse = True
    table_params = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_params]
    return {"adam": torch.optim.Adam(dense, lr=lr),
            "sparse_adam": torch.optim.SparseAdam([t.weight for t in tables], lr=lr)}


def save_checkpoint(run_dir, model, opts: dict, epoch, step_in_epoch, global_step):
    run = RunDir(run_dir)
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _save_safetensors(model.state_dict(), str(run.checkpoint_file(CHECKPOINT_WEIGHTS)))
    tens, groups = {}, {}
    for opt_name, opt in opts.items():
        osd = opt.state_dict()
        groups[opt_name] = osd["param_groups"]
        for pid, st in osd["state"].items():
            for key, val in st.items():
                tens[f"{opt_name}.{pid}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    _save_safetensors(tens or {"_empty": torch.zeros(1)}, str(run.checkpoint_file(CHECKPOINT_OPTIMIZER)))
    _write_json({"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                 "optimizers": groups}, str(run.checkpoint_file(CHECKPOINT_STATE)))


def load_checkpoint(run_dir, model, opts: dict, device):
    from safetensors.torch import load_file

    run = RunDir(run_dir)
    if not run.checkpoint_file(CHECKPOINT_STATE).exists():
        return None
    st = json.loads(run.checkpoint_file(CHECKPOINT_STATE).read_text())
    if sorted(st.get("optimizers", {})) != sorted(opts):
        raise UserError(f"the checkpoint in {run.checkpoint_dir} was written with optimizers "
                        f"{sorted(st.get('optimizers', {}))}, "
                        f"this run uses {sorted(opts)} (another version or device setup): use a new --run directory")
    model.load_state_dict(load_file(run.checkpoint_file(CHECKPOINT_WEIGHTS), device=str(device)))
    states: dict = {name: {} for name in opts}
    for name, val in load_file(run.checkpoint_file(CHECKPOINT_OPTIMIZER)).items():
        if name == "_empty":
            continue
        opt_name, pid, key = name.split(".", 2)
        states[opt_name].setdefault(int(pid), {})[key] = val if key == "step" else val.to(device)
    for opt_name, opt in opts.items():
        opt.load_state_dict({"state": states[opt_name], "param_groups": st["optimizers"][opt_name]})
    return st


# ---- data parallel ---------------------------------------------------------------------------------------------

def _broadcast_buffers(model):
    """Rank 0's BatchNorm statistics to every rank (DDP does this before each forward; this is the last one)."""
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, 0)


# ---- main ------------------------------------------------------------------------------------------------------

def training_threads(requested: int, local_world: int) -> int:
    """torch intra-op threads: --threads when given, else OMP_NUM_THREADS when set, else the cores shared among
    this host's ranks. torch's threads spin, so taking every core while something else runs collapses both."""
    if requested and requested > 0:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise UserError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device("cpu")


def main(args) -> int:
    """`nann train` entry point (also under torchrun); `--arch deep-retrieval` trains the DR baseline."""
    if args.arch == "deep-retrieval":
        from trainer.deep_retrieval import main_train

        return main_train(args)
    if getattr(args, "export_only", False):
        reexport_run(args.run)
        return 0
    train_run(args)
    return 0


def reexport_run(run_dir: str) -> None:
    """Rewrite a finished run's serving artifacts (item embeddings, ONNX parts) from its weights, e.g.
    after an upgrade changed the ONNX export; the weights and the training log stay as they are. Items added with
    `nann items add` are kept: their e_v is recomputed from their category, as that command computed it."""
    from trainer.export import write_run_artifacts

    model = load_model(run_dir)
    added = RunDir(run_dir).vocabulary().item_category[model.cfg.num_items:]
    write_run_artifacts(model, run_dir, added_categories=added)
    extended = f" ({model.cfg.num_items} trained items + {len(added)} added with `nann items add`)"
    print(f"re-exported the serving artifacts of {run_dir}" + (extended if len(added) else ""))


def train_run(args) -> NANNModel:
    """Trains (or resumes) the run; returns this rank's model."""
    world, rank, local_rank, local_world = _dist_info()
    if args.arch not in ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS)}")
    for name in ("negatives", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.fgsm_eps < 0 or args.lr <= 0:
        raise UserError("--fgsm-eps must be >= 0 and --lr > 0")
    device = _resolve_device(args.device, local_rank)
    torch.set_num_threads(training_threads(getattr(args, "threads", 0), local_world))
    # Tiny gradients (the FGSM term, rarely-seen embedding rows) become denormal floats, which CPUs process
    # 10-100x slower: flushing them to zero kept steps/s flat where it otherwise fell by a third (perf.bench_train).
    torch.set_flush_denormal(getattr(args, "denormals", "flush") == "flush")
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(args, device, world, rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(args, device, world, rank) -> int:
    is_main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if is_main else (lambda *a: None)
    data = load_data(args.data)
    run_dir = args.run
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(num_items=data.num_items, num_categories=data.num_categories, arch=args.arch,
                      max_seq=data.max_seq, interactions=getattr(args, "interactions", True))
    if run.checkpoint_file(CHECKPOINT_STATE).exists() and run.config_file.exists():
        old = run.read_config()
        if (old.get("arch") != cfg.arch or old.get("num_items") != cfg.num_items
                or (cfg.arch != "two-tower" and old.get("interactions", False) != cfg.interactions)):
            raise UserError(f"{run_dir} holds a run of arch {old.get('arch')} over {old.get('num_items')} items; "
                            f"use a new --run directory")

    torch.manual_seed(args.seed)
    model = NANNModel(cfg, torch.from_numpy(data.item_category)).to(device)
    opts = make_optimizers(model, args.lr, sparse=not (world > 1 and device.type == "cuda"))
    st = load_checkpoint(run_dir, model, opts, device)
    start_epoch, start_step, global_step = (st["epoch"], st["step_in_epoch"], st["global_step"]) if st else (0, 0, 0)
    objective = TrainingObjective(model, args.fgsm_eps)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    if is_main:
        conf = cfg.to_dict()
        conf.update({"data_dir": os.path.abspath(args.data), "score": "raw logit s_u(e_v)",
                     "training": {"fgsm_eps": args.fgsm_eps, "negatives": args.negatives, "epochs": args.epochs,
                                  "batch_size": args.batch_size, "lr": args.lr, "max_samples": args.max_samples,
                                  "seed": args.seed, "world_size": world, "noise": "unigram (counts clipped at 1)",
                                  "aux_loss": "bernoulli_kl"}})
        _write_json(conf, str(run.config_file))
        if st:
            log(f"resuming {run_dir} at epoch {start_epoch}, step {start_step} (global step {global_step})")

    positions = sample_positions(data.train_offsets)
    if len(positions) == 0:
        raise UserError(f"{args.data} has no training samples")
    noise = NoiseSampler(data.item_counts)
    log_q = torch.from_numpy(noise.log_q).to(device)
    k = args.negatives
    log_k = math.log(k)
    log_f = open(run.train_log_file, "a") if is_main else None

    def write_log(rec):
        if log_f:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()

    from tqdm import tqdm

    t_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        order = epoch_order(positions, args.seed, epoch, args.max_samples, rank, world)
        n_steps = len(order) // args.batch_size if world > 1 else math.ceil(len(order) / args.batch_size)
        rng = np.random.default_rng([args.seed, epoch, rank, 17, start_step if epoch == start_epoch else 0])
        first = start_step if epoch == start_epoch else 0
        model.train()
        bar = tqdm(range(first, n_steps), total=n_steps, initial=first, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not is_main, dynamic_ncols=True, mininterval=1.0)
        run_loss, t_log, n_log = None, time.time(), 0
        for step in bar:
            g = order[step * args.batch_size:(step + 1) * args.batch_size]
            hist, mask, pos = make_batch(data.train_items, data.train_offsets, g, data.max_seq)
            neg = noise.sample(rng, (len(g), k))
            cand = torch.from_numpy(np.concatenate([pos[:, None], neg], axis=1)).to(device)
            hist_t, mask_t = torch.from_numpy(hist).to(device), torch.from_numpy(mask).to(device)
            loss, nce, aux = objective(hist_t, mask_t, cand, log_q[cand] + log_k)
            for opt in opts.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts.values():
                opt.step()
            global_step += 1
            n_log += len(g)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise RuntimeError(f"loss is {lv} at step {global_step}")
            run_loss = lv if run_loss is None else 0.98 * run_loss + 0.02 * lv
            bar.set_postfix(loss=f"{run_loss:.4f}", nce=f"{float(nce):.3f}", aux=f"{float(aux):.2e}", refresh=False)
            if global_step % 50 == 0:
                now = time.time()
                write_log({"kind": "train", "epoch": epoch, "step": global_step, "loss": lv, "running_loss": run_loss,
                           "nce": float(nce), "aux": float(aux), "samples_per_s": n_log * world / (now - t_log)})
                t_log, n_log = now, 0
            if args.eval_every and global_step % args.eval_every == 0 and step + 1 < n_steps:
                if is_main:
                    r = recall_all(model, data.val, eval_users("val", device, args.eval_users), data.max_seq, device)
                    write_log({"kind": "val", "epoch": epoch, "step": global_step, "recall_all@200": r})
                    bar.write(f"step {global_step}: val recall-all@{TOP_M} = {r:.4f}")
                    save_checkpoint(run_dir, model, opts, epoch, step + 1, global_step)
                model.train()
        bar.close()
        if is_main:
            save_checkpoint(run_dir, model, opts, epoch + 1, 0, global_step)
            r = recall_all(model, data.val, eval_users("val", device, args.eval_users), data.max_seq, device)
            write_log({"kind": "val", "epoch": epoch + 1, "step": global_step, "recall_all@200": r,
                       "elapsed_s": time.time() - t_start})
            log(f"epoch {epoch + 1}: val recall-all@{TOP_M} = {r:.4f} "
                f"({min(eval_users('val', device, args.eval_users), len(data.val))} users)")
        start_step = 0
    if world > 1:
        _broadcast_buffers(model)
    if is_main:
        finish_run(model, data, run_dir, device, write_log, log, args.eval_users)
    if log_f:
        log_f.close()
    return model


def finish_run(model: NANNModel, data, run_dir: str, device, write_log=lambda r: None, log=print,
               eval_users_requested: int = 0) -> dict:
    """Writes the final artifacts of a run and reports test recall-all@200."""
    from trainer.export import write_run_artifacts

    E = write_run_artifacts(model, run_dir)
    model.to(device)
    RunDir(run_dir).copy_vocabulary(data.data_dir)
    n = min(eval_users("test", device, eval_users_requested), len(data.test))
    r = recall_all(model, data.test, n, data.max_seq, device, item_emb=E)
    write_log({"kind": "test", "recall_all@200": r, "users": n})
    log(f"test recall-all@{TOP_M} = {r:.4f} ({n} users, brute force over {data.num_items} items)")
    return {"test_recall_all@200": r, "users": n}
