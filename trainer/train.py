"""`nann train`: NCE (sampled sigmoid) + the FGSM adversarial auxiliary task, then export of the serving split.

Loss per positive (history, next item) with k = --negatives noise items from q, the unigram distribution mixed with
the uniform one (--uniform-noise, `trainer.sampling.NoiseSampler`):
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
run directory with a checkpoint resumes: --epochs is the run's total number of epochs (a run that goes on from its
two-tower baseline after them, ``trainer.recipe``, trains up to --epochs more).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nann.errors import UserError
from nann.model import ARCHS, ModelConfig, NANNModel, load_model
from nann.model_split import build_split
from nann.run_dir import CHECKPOINT_BEST, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_WEIGHTS, RunDir
from nann.runtime import pad_histories
from trainer import recipe
from trainer.sampling import NoiseSampler, epoch_order, load_data, make_batch, sample_positions

TOP_M = 200


def eval_users(kind: str, device: torch.device, num_items: int, requested: int = 0) -> int:
    """Users for brute-force recall-all@200: `--eval-users` when given, else by catalogue size (trainer.recipe)."""
    return int(requested) if requested else recipe.eval_users(kind, num_items, device.type == "cuda")


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


def compute_loss(model: NANNModel, hist_ids, mask, cand_ids, log_kq, eps: float, loss: str = "nce"):
    """hist_ids [B,L], mask [B,L], cand_ids [B,K] (column 0 = the positive), log_kq [B,K] = log(k q(cand)).

    loss "nce": binary NCE over the K labels; "softmax": sampled softmax (cross-entropy of the positive among the
    K corrected logits). Returns (loss, main, aux) with loss = main + aux (averaged over the B positives)."""
    B, L = hist_ids.shape
    all_ids = torch.cat([hist_ids.reshape(-1), cand_ids.reshape(-1)])
    uniq, inv = torch.unique(all_ids, return_inverse=True)
    E = model.item_embed(uniq)  # each distinct item through the item network once (BatchNorm over distinct items)
    hist_e = E[inv[:B * L]].view(B, L, -1) * mask[..., None]
    cand_e = E[inv[B * L:]].view(B, cand_ids.shape[1], -1)
    h, u, k = model.user_side(hist_e, mask)
    s = model.cand_side(u, k, h, mask, cand_e)
    if loss == "softmax":
        nce = F.cross_entropy(s - log_kq, torch.zeros(B, dtype=torch.int64, device=s.device), reduction="sum") / B
    else:
        labels = torch.zeros_like(s)
        labels[:, 0] = 1.0
        nce = F.binary_cross_entropy_with_logits(s - log_kq, labels, reduction="sum") / B
    if eps > 0:
        delta = fgsm_delta(s, cand_e, eps)
        s_adv = model.cand_side(u, k, h, mask, cand_e + delta)
        aux = bernoulli_kl_logits(s, s_adv).sum() / B
    else:
        aux = torch.zeros((), device=s.device)
    return nce + aux, nce.detach(), aux.detach()


class TrainingObjective(torch.nn.Module):
    """compute_loss as a module: DistributedDataParallel synchronises gradients of what its forward computes."""

    def __init__(self, model: NANNModel, eps: float, loss: str = "nce"):
        super().__init__()
        self.model, self.eps, self.loss = model, eps, loss

    def forward(self, hist_ids, mask, cand_ids, log_kq):
        return compute_loss(self.model, hist_ids, mask, cand_ids, log_kq, self.eps, self.loss)


# ---- evaluation ------------------------------------------------------------------------------------------------

@torch.no_grad()
def recall_hits(model: NANNModel, split, n_users: int, max_seq: int, device, top_m: int = TOP_M,
                item_emb: torch.Tensor | None = None) -> np.ndarray:
    """Per user of the first n_users of split: is its target in the brute-force top-M (bool [n])? Scores every
    item with the split scorer."""
    n = min(n_users, len(split))
    was = model.training
    model.eval()
    enc, sc = build_split(model)
    enc, sc = enc.to(device), sc.to(device)
    E = model.all_item_embeddings() if item_emb is None else item_emb
    E = E.to(device)
    Y = sc.cand_pre(E)
    hits = np.zeros(n, dtype=bool)
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
            hits[i] = bool((top == int(split.targets[i])).any())
    model.train(was)
    return hits


def recall_all(model: NANNModel, split, n_users: int, max_seq: int, device, top_m: int = TOP_M,
               item_emb: torch.Tensor | None = None) -> float:
    """recall-all@M of the first n_users of split (``recall_hits`` averaged; nan for no users)."""
    hits = recall_hits(model, split, n_users, max_seq, device, top_m, item_emb)
    return float(hits.mean()) if len(hits) else float("nan")


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
# what `warm_start` copies from the two-tower model: the item network, the recency tables, the user tower
WARM_STARTED = ("id_emb", "cat_emb", "item_", "recency_", "tower_")


def make_optimizers(model: NANNModel, lr: float, sparse: bool,
                    refine: bool = False) -> dict[str, torch.optim.Optimizer]:
    """{"adam": dense layers} plus {"sparse_adam": embedding tables} when sparse (see the module docstring).
    refine: the model was made the two-tower model (`warm_start`); what it copied learns at lr * recipe.WARM_LR_SCALE
    (a second parameter group), the new terms at lr."""
    copied = {id(p) for name, p in model.named_parameters() if name.startswith(WARM_STARTED)} if refine else set()

    def groups(params) -> list[dict]:
        params = list(params)
        new_terms = [p for p in params if id(p) not in copied]
        kept = [p for p in params if id(p) in copied]
        return [g for g in ({"params": new_terms, "lr": lr}, {"params": kept, "lr": lr * recipe.WARM_LR_SCALE})
                if g["params"]]

    if not sparse:
        return {"adam": torch.optim.Adam(groups(model.parameters()))}
    tables = [getattr(model, name) for name in EMBEDDING_TABLES]
    for table in tables:
        table.sparse = True
    table_params = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_params]
    return {"adam": torch.optim.Adam(groups(dense)),
            "sparse_adam": torch.optim.SparseAdam(groups(t.weight for t in tables))}


def save_checkpoint(run_dir, model, opts: dict, epoch, step_in_epoch, global_step, best_state: dict | None = None,
                    refine_from: int | None = None):
    """refine_from: the epoch after which the run went on from the two-tower model (`_train`), None before that."""
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
                 "optimizers": groups, "best": best_state, "refine_from": refine_from},
                str(run.checkpoint_file(CHECKPOINT_STATE)))


def training_seconds(run_dir) -> float:
    """Wall seconds the run has trained so far (resumes included): its log's last validation time; 0.0 before one."""
    path = RunDir(run_dir).train_log_file
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return max((r.get("elapsed_s", 0.0) for r in records if r.get("kind") == "val"), default=0.0)


def checkpoint_state(run_dir) -> dict | None:
    """The run's checkpoint state (epoch, steps, optimizer groups, best epoch, refine_from); None before one."""
    path = RunDir(run_dir).checkpoint_file(CHECKPOINT_STATE)
    return json.loads(path.read_text()) if path.exists() else None


def load_checkpoint(run_dir, model, opts: dict, device):
    from safetensors.torch import load_file

    run = RunDir(run_dir)
    st = checkpoint_state(run_dir)
    if st is None:
        return None
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


def warm_start(model: NANNModel, two_tower: NANNModel) -> None:
    """Make `model` (a run with the user tower) the trained two-tower model: its item network, recency tables and
    user tower copied, and every other term of the score zeroed (the score network's output layer, the attention's
    dot-term weights), so that it scores exactly what the two-tower model scores. `nann train` validates it as the
    run's epoch 0: the model trained from random weights is kept only where it beats it."""
    theirs = two_tower.state_dict()
    mine = model.state_dict()
    shared = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    missing = [k for k in mine if k.startswith(WARM_STARTED) and k not in shared]
    if missing:
        raise UserError(f"cannot warm-start from a two-tower run of another shape (no {missing[0]}): train it again")
    model.load_state_dict(shared, strict=False)
    with torch.no_grad():
        model.score_out.weight.zero_()
        model.score_out.bias.zero_()
        for weights in model.dot_weights.values():
            weights.zero_()


class BestModel:
    """The weights of the epoch with the best validation recall, and early stopping: training ends after
    ``patience`` epochs in which the trained model did not improve on its own best (0 = never early). The best
    weights live in memory and in RUN/checkpoint/best.safetensors (a resumed run reloads them); the run's model is
    the best epoch's, which may be a candidate given before training (`candidate`: epoch 0)."""

    def __init__(self, run_dir: str, patience: int, value: float = -1.0, epoch: int = 0, stale: int = 0,
                 trained: float = -1.0):
        self.path = str(RunDir(run_dir).checkpoint_file(CHECKPOINT_BEST))
        self.patience, self.value, self.epoch, self.stale = patience, value, epoch, stale
        self.trained = trained  # the trained epochs' best: the patience counts from it, not from a candidate
        self.weights: dict | None = None

    @classmethod
    def resume(cls, run_dir: str, checkpoint_state: dict | None, patience: int) -> "BestModel":
        saved = (checkpoint_state or {}).get("best") or {}
        best = cls(run_dir, patience, saved.get("value", -1.0), saved.get("epoch", 0), saved.get("stale", 0),
                   saved.get("trained", saved.get("value", -1.0)))
        if saved and os.path.exists(best.path):
            from safetensors.torch import load_file

            best.weights = load_file(best.path)
        return best

    def state(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "stale": self.stale, "trained": self.trained}

    def restart_patience(self) -> None:
        """Training goes on from the kept model (the candidate): the patience counts from its recall."""
        self.trained, self.stale = self.value, 0

    def candidate(self, model: NANNModel, value: float) -> None:
        """A model the run keeps (as epoch 0) unless a trained epoch beats it; it does not start the patience."""
        self._keep(model, value, 0)

    def update(self, model: NANNModel, value: float, epoch: int) -> bool:
        """Records this epoch's validation recall; True (and the weights kept) when it is a new best."""
        if value > self.trained:
            self.trained, self.stale = value, 0
        else:
            self.stale += 1
        if value > self.value:
            self._keep(model, value, epoch)
            return True
        return False

    def _keep(self, model: NANNModel, value: float, epoch: int) -> None:
        self.value, self.epoch = value, epoch
        self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _save_safetensors(self.weights, self.path)

    def exhausted(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def restore(self, model: NANNModel) -> None:
        if self.weights is not None:
            model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in self.weights.items()})


# ---- data parallel ---------------------------------------------------------------------------------------------

def _agree(flag: bool, world: int, device) -> bool:
    """Rank 0's flag on every rank (each rank returns the same value)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


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
    """`nann train` entry point (also under torchrun, where each worker ends by `end_worker`); `--arch deep-retrieval`
    trains the DR baseline."""
    status = _main(args)
    if _dist_info()[0] > 1:
        end_worker(status)
    return status


def end_worker(status: int):
    """Ends a torchrun worker whose work is done, without the interpreter's teardown. DistributedDataParallel keeps its
    gloo process group alive past destroy_process_group (torch 2.13: the group's threads run on to the end of the
    process, and the wrapper leaves 11 references to it behind), and tearing the process down under those threads
    aborted one worker in 40 to 100 runs ("terminate called without an active exception", after every file was
    written: tests/test_trainer_train.py::test_ddp_replicas_identical). os._exit skips that teardown; what the worker
    printed is flushed first."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _main(args) -> int:
    if args.arch == "deep-retrieval":
        from trainer.deep_retrieval import main_train

        return main_train(args)
    if getattr(args, "export_only", False):
        reexport_run(args.run)
        return 0
    baseline = None
    if getattr(args, "baseline", "none") != "none" and args.arch != args.baseline:
        path = str(RunDir(args.run).baseline.path)
        if _dist_info()[1] == 0:
            print(f"training the {args.baseline} baseline on the same data into {path} first (--baseline none skips "
                  "it)", flush=True)
        baseline = train_run(argparse.Namespace(**{**vars(args), "arch": args.baseline, "run": path}))
        if getattr(args, "warm_start", True):
            args = argparse.Namespace(**{**vars(args), "warm_from": path})
    result = train_run(args)
    if result.test_hits is not None:
        compare_with_baselines(args, result.test_hits, None if baseline is None else baseline.test_hits)
    return 0


def compare_with_baselines(args, model_hits: np.ndarray, two_tower_hits: np.ndarray | None) -> dict:
    """Prints the model's test recall beside popularity (plain, unseen-only) and the two-tower baseline, with
    intervals and a verdict, and writes the numbers to RUN/baselines.json."""
    from nann.baselines import Comparison, popularity_hits, report, summary

    data = load_data(args.data)
    n = len(model_hits)
    histories = [data.test.history(i) for i in range(n)]
    targets = data.test.targets[:n]
    comparisons = [Comparison("popularity", popularity_hits(data.item_counts, histories, targets, TOP_M)),
                   Comparison("popularity (unseen)",
                              popularity_hits(data.item_counts, histories, targets, TOP_M, unseen=True))]
    if two_tower_hits is not None:
        comparisons.append(Comparison("two-tower", two_tower_hits))
    print(report(args.arch, model_hits, comparisons, TOP_M), flush=True)
    compared = summary(args.arch, model_hits, comparisons, TOP_M)
    _write_json(compared, str(RunDir(args.run).baselines_file))
    return compared


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


@dataclass
class TrainResult:
    model: NANNModel               # this rank's model (the best epoch's)
    test_hits: np.ndarray | None   # rank 0: per test user, is its target in the brute-force top-M; else None


def denormals_flushed() -> bool:
    """Whether this process flushes denormal floats to zero now (torch has a setter only)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


def train_run(args) -> TrainResult:
    """Trains (or resumes) the run."""
    world, rank, local_rank, local_world = _dist_info()
    if args.arch not in ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS)}")
    for name in ("negatives", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.epochs < 0:
        raise UserError("--epochs must be >= 0 (0: as many as help, within the recipe's budget)")
    if args.fgsm_eps < 0 or args.lr <= 0:
        raise UserError("--fgsm-eps must be >= 0 and --lr > 0")
    device = _resolve_device(args.device, local_rank)
    torch.set_num_threads(training_threads(getattr(args, "threads", 0), local_world))
    # Tiny gradients (the FGSM term, rarely-seen embedding rows) become denormal floats, which CPUs process
    # 10-100x slower: flushing them to zero kept steps/s flat where it otherwise fell by a third (perf.bench_train).
    flushed_before = denormals_flushed()
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
        torch.set_flush_denormal(flushed_before)  # a process-wide setting: leave it as it was found
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(args, device, world, rank) -> TrainResult:
    is_main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if is_main else (lambda *a: None)
    data = load_data(args.data)
    run_dir = args.run
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(num_items=data.num_items, num_categories=data.num_categories, arch=args.arch,
                      max_seq=data.max_seq, interactions=getattr(args, "interactions", True),
                      recency=getattr(args, "recency", True), dot=getattr(args, "dot", True),
                      user_tower=getattr(args, "user_tower", True))
    if run.checkpoint_file(CHECKPOINT_STATE).exists() and run.config_file.exists():
        old = run.read_config()
        if (old.get("arch") != cfg.arch or old.get("num_items") != cfg.num_items
                or old.get("recency", False) != cfg.recency or old.get("dot", False) != cfg.dot
                or old.get("user_tower", False) != cfg.user_tower
                or (cfg.arch != "two-tower" and old.get("interactions", False) != cfg.interactions)):
            raise UserError(f"{run_dir} holds a run of arch {old.get('arch')} over {old.get('num_items')} items; "
                            f"use a new --run directory")

    torch.manual_seed(args.seed)
    model = NANNModel(cfg, torch.from_numpy(data.item_category)).to(device)
    sparse = not (world > 1 and device.type == "cuda")
    refine_from = (checkpoint_state(run_dir) or {}).get("refine_from")
    opts = make_optimizers(model, args.lr, sparse, refine=refine_from is not None)
    st = load_checkpoint(run_dir, model, opts, device)
    start_epoch, start_step, global_step = (st["epoch"], st["step_in_epoch"], st["global_step"]) if st else (0, 0, 0)
    best = BestModel.resume(run_dir, st, getattr(args, "patience", recipe.PATIENCE))
    warm_from = getattr(args, "warm_from", None) if cfg.tower_dot else None
    objective = TrainingObjective(model, args.fgsm_eps, getattr(args, "loss", "nce"))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    positions = sample_positions(data.train_offsets)
    if len(positions) == 0:
        raise UserError(f"{args.data} has no training samples")
    per_epoch = min(len(positions), args.max_samples) if args.max_samples > 0 else len(positions)
    epochs = args.epochs or recipe.max_epochs(per_epoch)
    noise = NoiseSampler(data.item_counts, getattr(args, "uniform_noise", recipe.UNIFORM_NOISE))
    if is_main:
        conf = cfg.to_dict()
        conf.update({"data_dir": os.path.abspath(args.data), "score": "raw logit s_u(e_v)",
                     "training": {"fgsm_eps": args.fgsm_eps, "negatives": args.negatives, "epochs": epochs,
                                  "patience": best.patience,
                                  "batch_size": args.batch_size, "lr": args.lr, "max_samples": args.max_samples,
                                  "seed": args.seed, "world_size": world, "noise": noise.describe(),
                                  "aux_loss": "bernoulli_kl", "warm_start": warm_from}})
        _write_json(conf, str(run.config_file))
        if st:
            log(f"resuming {run_dir} at epoch {start_epoch}, step {start_step} (global step {global_step})")

    log_q = torch.from_numpy(noise.log_q).to(device)
    k = args.negatives
    log_k = math.log(k)
    log_f = open(run.train_log_file, "a") if is_main else None

    def write_log(rec):
        if log_f:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()

    from tqdm import tqdm

    t_start = time.time() - (training_seconds(run_dir) if st else 0.0)  # a resumed run's clock goes on
    n_val = min(eval_users("val", device, data.num_items, args.eval_users), len(data.val))
    if is_main and not args.epochs:
        log(f"training up to {epochs} epochs of {per_epoch:,} samples, until the validation recall ({n_val} users) "
            f"has not improved for {best.patience} epochs (--epochs, --patience)")
    if is_main and warm_from and not st:  # epoch 0: the two-tower model's function, kept unless training beats it
        start = NANNModel(cfg, torch.from_numpy(data.item_category)).to(device)
        warm_start(start, load_model(warm_from, map_location=device))
        r = recall_all(start, data.val, n_val, data.max_seq, device)
        best.candidate(start, r)
        del start
        write_log({"kind": "val", "epoch": 0, "step": 0, "recall_all@200": r, "elapsed_s": time.time() - t_start})
        log(f"epoch 0 (the two-tower model {warm_from} as this model): val recall-all@{TOP_M} = {r:.4f} "
            f"({n_val} users)")

    def train_epochs(first_epoch: int, end: int, start_step: int) -> int:
        """Trains epochs first_epoch+1 .. end (the first from step start_step) until the patience is spent; returns
        the number of epochs done."""
        for epoch in range(first_epoch, end):
            if train_epoch(epoch, end, start_step if epoch == first_epoch else 0):
                return epoch + 1
        return max(first_epoch, end)

    def train_epoch(epoch: int, end: int, first: int) -> bool:
        """One epoch from step `first`, validated and checkpointed; True when the run stops early after it."""
        nonlocal global_step
        order = epoch_order(positions, args.seed, epoch, args.max_samples, rank, world)
        n_steps = len(order) // args.batch_size if world > 1 else math.ceil(len(order) / args.batch_size)
        rng = np.random.default_rng([args.seed, epoch, rank, 17, first])
        model.train()
        bar = tqdm(range(first, n_steps), total=n_steps, initial=first, desc=f"epoch {epoch + 1}/{end}",
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
                    r = recall_all(model, data.val, n_val, data.max_seq, device)
                    write_log({"kind": "val", "epoch": epoch, "step": global_step, "recall_all@200": r})
                    bar.write(f"step {global_step}: val recall-all@{TOP_M} = {r:.4f}")
                    save_checkpoint(run_dir, model, opts, epoch, step + 1, global_step, best.state(), refine_from)
                model.train()
        bar.close()
        stop = False
        if is_main:
            r = recall_all(model, data.val, n_val, data.max_seq, device)
            improved = best.update(model, r, epoch + 1)
            save_checkpoint(run_dir, model, opts, epoch + 1, 0, global_step, best.state(), refine_from)
            write_log({"kind": "val", "epoch": epoch + 1, "step": global_step, "recall_all@200": r,
                       "elapsed_s": time.time() - t_start})
            stop = best.exhausted()
            log(f"epoch {epoch + 1}: val recall-all@{TOP_M} = {r:.4f} "
                f"({n_val} users)"
                + ("" if improved else f"; best {best.value:.4f} at epoch {best.epoch}")
                + (f"; no gain in {best.patience} epochs: stopping" if stop else ""))
        return _agree(stop, world, device)

    if is_main and st and best.exhausted() and (refine_from is not None or not warm_from or best.epoch != 0):
        log(f"{run_dir} stopped early at epoch {start_epoch} (no gain in {best.patience} epochs): nothing to train")
    if refine_from is None:
        done = start_epoch if best.exhausted() else train_epochs(start_epoch, epochs, start_step)
        if _agree(is_main and bool(warm_from) and best.epoch == 0, world, device):
            # No epoch from random weights beat the two-tower model: train on from it instead (recipe, "never below")
            refine_from, start_epoch, start_step = done, done, 0
            warm_start(model, load_model(warm_from, map_location=device))
            opts = make_optimizers(model, args.lr, sparse, refine=True)
            best.restart_patience()
            if is_main:
                save_checkpoint(run_dir, model, opts, done, 0, global_step, best.state(), refine_from)
            log(f"no epoch from random weights beat the two-tower model (epoch 0): training on from it (epochs "
                f"{done + 1}..{done + epochs}), what it copied at {recipe.WARM_LR_SCALE:g} of the learning rate")
    if refine_from is not None and not best.exhausted():
        train_epochs(start_epoch, refine_from + epochs, start_step)
    if is_main:
        best.restore(model)
        write_log({"kind": "best", "epoch": best.epoch, "recall_all@200": best.value, "refine_from": refine_from})
        log(f"keeping the model of epoch {best.epoch} (val recall-all@{TOP_M} {best.value:.4f})"
            + ("" if refine_from is None or best.epoch <= refine_from else
               f", trained on from the two-tower model after epoch {refine_from}"))
    if world > 1:
        _broadcast_buffers(model)
    hits = finish_run(model, data, run_dir, device, write_log, log, args.eval_users) if is_main else None
    if log_f:
        log_f.close()
    return TrainResult(model, hits)


def finish_run(model: NANNModel, data, run_dir: str, device, write_log=lambda r: None, log=print,
               eval_users_requested: int = 0) -> np.ndarray:
    """Writes the final artifacts of a run and reports test recall-all@200; returns the test users' hits."""
    from trainer.export import write_run_artifacts

    E = write_run_artifacts(model, run_dir)
    model.to(device)
    RunDir(run_dir).copy_vocabulary(data.data_dir)
    n = min(eval_users("test", device, data.num_items, eval_users_requested), len(data.test))
    hits = recall_hits(model, data.test, n, data.max_seq, device, item_emb=E)
    r = float(hits.mean()) if n else float("nan")
    write_log({"kind": "test", "recall_all@200": r, "users": n})
    log(f"test recall-all@{TOP_M} = {r:.4f} ({n} users, brute force over {data.num_items} items)")
    return hits
