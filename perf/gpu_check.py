"""The GPU path, measured in one command on a GPU machine that has only its own install plus a small pack.

    python -m perf.gpu_check --pack perf/results/gpu_pack --run demo/run    # here: the pack (<= 48 MiB)
    python3 -m perf.gpu_check --from perf/results/gpu_pack --out $OUT       # there: the check (<= 8 minutes)
    python -m perf.gpu_check --device cpu --quick                           # the same code on CPU, small (CI)
    python -m perf.gpu_check --record gpu_check.md                          # a device run's section into RESULTS.md

Prints the "GPU check" section of perf/RESULTS.md (docs/OPERATIONS.md, "GPU check"): (a) scores of the CUDA scorer
(`nann.scorers.torch_cuda`, fp32 and half) against the torch model on CPU for the same users and candidates; (b)
scorer candidates/s per candidate-grid size, eager vs captured CUDA graphs, fp32 vs half, beside the host's CPU
scorer; (c, d) the offline engine (`OfflineRetriever`: walk on the host's CPU, scorer on the GPU, or the host's CPU
scorer, side by side) at batch 1/16/64, at the served defaults and at the paper's operating point (~1.3% of the items
scored: the defaults with layer 0's ef, or below top_m its rounds, bisected to it: `search_ladder`), on a
random-weight catalogue of 1M items with a kNN-layered graph built on the device (`graph_builder.knn_layers`; no
hnswlib there) and on the packed 100k demo run (a random-weight 100k run when no pack is given); (e) `nann train`
samples/s on the device vs the host's CPU on the same synthetic data. Each part has a time budget and prints its
elapsed time.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from nann.engine.grid import CandidateGrid
from nann.engine.params import SearchParams
from nann.errors import UserError
from nann.run_dir import RunDir
from perf.gpu_runs import check_pack, knn_graph, make_pack, random_run, unpack_run
from perf.run import machine_info
from perf.sections import RESULTS, command_line, provenance, update_section
from perf.soak import random_histories

SECTION = "GPU check"
CPU_SCORER = "onnxruntime"  # the host's CPU scorer, the served default
REFERENCE = "torch"         # the torch model on CPU: what the CUDA scorer must reproduce
PAPER_FRACTION = 0.013      # the paper's operating point: ~17k of 1.3M items scored per query (Table 1)


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets of one check (FULL on the device, QUICK on CPU in CI)."""

    big_items: int                    # the random-weight catalogue
    small_items: int                  # the demo run's stand-in when no pack is given
    parity_users: int
    parity_candidates: int            # per user
    scorer_sizes: tuple[int, ...]     # grid sizes whose candidates/s are measured
    scorer_seconds: float             # timing per (size, scorer)
    tune_users: int                   # users whose mean scored fraction sets the operating point
    tune_steps: int                   # its bisection steps along `search_ladder`
    batches: tuple[int, ...]          # the offline engine's batch sizes
    engine_users: int                 # distinct histories the engine cycles through
    engine_seconds: float             # timing per (catalogue, scorer, search, batch)
    engine_least: int                 # timed batches per (catalogue, scorer, search, batch), at least
    warm_largest: int                 # grid sizes up to this are scored once per batch size before timing
    train_synth: tuple[str, ...]      # `nann data synth` arguments
    train_args: tuple[str, ...]       # `nann train` arguments beside --device
    budgets: dict                     # seconds per part
    torch_threads: int = 0            # torch's CPU threads in this process (0: its default, one per core)


FULL = Plan(big_items=1_000_000, small_items=100_000, parity_users=1000, parity_candidates=200,
            scorer_sizes=(1, 200, 1000, 2000, 6000, 14800), scorer_seconds=0.3, tune_users=64, tune_steps=8,
            batches=(1, 16, 64), engine_users=512, engine_seconds=4.0, engine_least=3, warm_largest=14800,
            train_synth=("--users", "20000", "--items", "100000", "--categories", "500", "--seed", "0"),
            train_args=("--max-samples", "38400", "--batch-size", "256", "--negatives", "20"),
            budgets={"runs": 120, "parity": 30, "scorer": 45, "engine": 200, "train": 70})
QUICK = Plan(big_items=20_000, small_items=3_000, parity_users=40, parity_candidates=50,
             scorer_sizes=(1, 200, 1000), scorer_seconds=0.02, tune_users=4, tune_steps=3,
             batches=(1, 16), engine_users=32, engine_seconds=0.0, engine_least=1, warm_largest=400,
             train_synth=("--users", "600", "--items", "3000", "--categories", "30", "--seed", "0"),
             train_args=("--max-samples", "800", "--batch-size", "16", "--negatives", "5", "--threads", "1"),
             budgets={"runs": 15, "parity": 5, "scorer": 5, "engine": 30, "train": 15},
             # one thread: on a small, busy machine (CI) torch's threads spin at each op's barrier waiting for a
             # descheduled sibling, measured 50x slower per scorer call at 2 threads on 2 loaded cores
             torch_threads=1)


class Catalogue(NamedTuple):
    name: str
    run: RunDir
    histories: list          # raw-id histories of its users
    note: str                # what it is, for the section


def attempt(failed: dict, key: str, fn: Callable, *args):
    """fn(*args), or None when it raised: the traceback goes to stderr and the error into ``failed[key]`` (for the
    section and the exit status), so that the rest still runs and reports: a device run is one try."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (reported, not swallowed)
        traceback.print_exc()
        failed[key] = f"{type(e).__name__}: {e}"
        return None


class Clock:
    """Runs the parts: elapsed seconds of each against its budget, and what failed (a part, or one scorer of one)."""

    def __init__(self, budgets: dict):
        self.budgets, self.elapsed, self.failed = budgets, {}, {}

    def part(self, name: str, fn: Callable, *args):
        """fn(*args), or None when it raised (`attempt`)."""
        t0 = time.perf_counter()
        print(f"== {name} (budget {self.budgets[name]} s)", file=sys.stderr, flush=True)
        out = attempt(self.failed, name, fn, *args)
        self.elapsed[name] = time.perf_counter() - t0
        print(f"   {name}: {self.elapsed[name]:.1f} s", file=sys.stderr, flush=True)
        return out

    def table(self) -> list[str]:
        def note(name):
            return f"failed: {self.failed[name]}" if name in self.failed else (
                "over budget" if self.elapsed[name] > self.budgets[name] else "")

        return ["| part | budget s | elapsed s | |", "|---|---|---|---|",
                *[f"| {name} | {self.budgets[name]} | {s:.1f} | {note(name)} |" for name, s in self.elapsed.items()],
                f"| total | {sum(self.budgets.values())} | {sum(self.elapsed.values()):.1f} | |"]


# ---- the runtimes --------------------------------------------------------------------------------------------------
def gpu_variants(device: str) -> dict:
    """The CUDA scorer's four variants by label (fp32/half x eager/graphs) on ``device``."""
    from nann.scorers.torch_cuda import TorchCudaRuntime

    return {f"{'half' if half else 'fp32'} {'graphs' if graphs else 'eager'}":
            TorchCudaRuntime(device=device, half=half, graphs=graphs)
            for half in (False, True) for graphs in (False, True)}


def load(run: RunDir, backend):
    from nann.runtime import ModelRuntime

    return ModelRuntime.load(run.path, backend=backend)


def dense_histories(run: RunDir, raw: list) -> list[np.ndarray]:
    vocab = run.vocabulary()
    return [d[d >= 0] for d in (vocab.raw_to_dense(h) for h in raw)]


def score_on_grid(rt, state: dict, owner: np.ndarray, ids: np.ndarray, grid: CandidateGrid) -> np.ndarray:
    """The scores of (owner, ids) in the calls the engine makes: split at the grid's maximum, each padded."""
    out = np.empty(ids.shape[0], dtype=np.float32)
    for s, e in grid.splits(ids.shape[0]):
        po, pi, m = grid.pad(owner[s:e], ids[s:e])
        out[s:e] = rt.score(state, po, pi)[:m]
    return out


# ---- (a) parity ----------------------------------------------------------------------------------------------------
def parity(cat: Catalogue, device: str, plan: Plan, failed: dict) -> list[dict]:
    """Each scorer's scores against the torch model on CPU, for the same users (encoded by each runtime) and
    candidates: max |difference|, that over the largest |score|, and the users whose top 10 of their candidates
    (as a set) is the reference's. A scorer that fails has no row (its error goes into ``failed``)."""
    users = dense_histories(cat.run, cat.histories[:plan.parity_users])
    rng = np.random.default_rng(1)
    n = cat.run.vocabulary_size()
    owner = np.repeat(np.arange(len(users)), plan.parity_candidates)
    ids = rng.integers(0, n, owner.shape[0])
    grid = CandidateGrid()

    def scores(backend) -> np.ndarray:
        rt = load(cat.run, backend)
        return score_on_grid(rt, rt.encode(users), owner, ids, grid).reshape(len(users), -1)

    ref = scores(REFERENCE)
    top = np.sort(np.argsort(-ref, axis=1)[:, :10], axis=1)
    variants = {CPU_SCORER: CPU_SCORER, **{k: v for k, v in gpu_variants(device).items() if k.endswith("graphs")}}
    rows = []
    for label, backend in variants.items():
        got = attempt(failed, f"parity {label}", scores, backend)
        if got is None:
            continue
        diff = np.abs(got - ref)
        rows.append({"scorer": label, "users": len(users), "candidates": int(ids.shape[0]),
                     "max_abs": float(diff.max()), "max_rel": float(diff.max() / np.abs(ref).max()),
                     "top10_same": float((np.sort(np.argsort(-got, axis=1)[:, :10], axis=1) == top).all(1).mean())})
    return rows


# ---- (b) scorer candidates/s ---------------------------------------------------------------------------------------
def timed(fn: Callable, seconds: float, least: int = 3) -> list[float]:
    """Seconds of each call of ``fn`` after a warm-up call (a CUDA graph of its size is captured there): at least
    ``least`` calls, more until ``seconds`` have passed."""
    fn()
    out, t_end = [], time.perf_counter() + seconds
    while len(out) < least or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def scorer_rates(cat: Catalogue, device: str, plan: Plan, failed: dict) -> list[dict]:
    """Candidates/s per grid size of each CUDA variant and the host's CPU scorer: the same calls for each (min(size,
    16) users, random candidates), the median call. A scorer that fails has no entries (its error: ``failed``)."""
    users = dense_histories(cat.run, cat.histories[:16])
    rng = np.random.default_rng(2)
    n = cat.run.vocabulary_size()
    rows = {size: {"size": size, "users": min(size, len(users))} for size in plan.scorer_sizes}
    calls = {size: (np.sort(rng.integers(0, row["users"], size)).astype(np.int32),
                    rng.integers(0, n, size).astype(np.int32)) for size, row in rows.items()}
    def measure(label: str, backend) -> None:
        rt = load(cat.run, backend)
        for size, row in rows.items():
            state, (owner, ids) = rt.encode(users[:row["users"]]), calls[size]
            row[label] = size / statistics.median(timed(lambda: rt.score(state, owner, ids), plan.scorer_seconds))

    for label, backend in {**gpu_variants(device), CPU_SCORER: CPU_SCORER}.items():
        attempt(failed, f"scorer {label}", measure, label, backend)
    return list(rows.values())


# ---- (c, d) the offline engine -------------------------------------------------------------------------------------
def retriever(cat: Catalogue, backend):
    from nann.serving.retrieval import OfflineRetriever

    return OfflineRetriever(cat.run.path, backend=backend)


def scored_fraction(offline, encoded: list, params: SearchParams) -> float:
    """The mean fraction of the catalogue the engine scores per request at ``params`` for the encoded users."""
    from nann.engine.search import beam_search
    from nann.serving.services import stack_states

    graph = offline.service.graph
    state = stack_states([e.state for e in encoded])
    result = beam_search(graph, len(encoded), offline.scorer.scores_for(state), params, offline.service.grid,
                         histories=[e.hist_ids for e in encoded])
    return float(result.n_scored.mean()) / graph.num_items


def search_ladder(base: SearchParams, num_items: int, largest_ef: int = 16_384) -> list[SearchParams]:
    """Searches from the cheapest to the widest, changing the last layer only: its rounds 1, 2, ... below the
    default at ef = top_m (the least ef the walk takes), then its ef from top_m up to ``largest_ef`` (or the
    catalogue's size) in geometric steps at the default rounds."""
    def last(values: tuple, value: int) -> tuple:
        return values[:-1] + (int(value),)

    top = max(base.top_m, 1)
    efs = np.unique(np.geomspace(top, max(top, min(largest_ef, num_items)), 48).round().astype(int))
    return ([replace(base, ef=last(base.ef, top), rounds=last(base.rounds, r)) for r in range(1, base.rounds[-1])]
            + [replace(base, ef=last(base.ef, ef)) for ef in efs])


def operating_point(offline, encoded: list, steps: int, target: float = PAPER_FRACTION) -> tuple:
    """(params, fraction): of the catalogue's defaults changed along `search_ladder`, the one whose mean scored
    fraction for the encoded users is closest to ``target`` (bisection over the ladder, ``steps`` searches)."""
    ladder = search_ladder(offline.limits.defaults, offline.service.graph.num_items)
    at: dict[int, float] = {}
    lo, hi = 0, len(ladder) - 1
    for _ in range(steps):
        mid = (lo + hi) // 2
        at[mid] = scored_fraction(offline, encoded, ladder[mid])
        lo, hi = (mid, hi) if at[mid] < target else (lo, mid)
    best = min(at, key=lambda i: abs(at[i] - target))
    return ladder[best], at[best]


def engine_row(offline, histories: list, params: SearchParams, batch: int, seconds: float, least: int) -> dict:
    """req/s, p50 and p99 of a batch's latency (each request waits for its batch) over batches of distinct users."""
    batches = [histories[i:i + batch] for i in range(0, len(histories) - batch + 1, batch)] or [histories[:batch]]
    calls = iter(range(1 << 30))
    lat = timed(lambda: offline.retrieve(batches[next(calls) % len(batches)], [params] * batch), seconds, least)
    return {"req_s": batch * len(lat) / sum(lat), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)), "batches": len(lat)}


def warm_grid(offline, histories: list, batch: int, largest: int) -> None:
    """Every size of the scorer's grid up to ``largest`` scored once for a state of ``batch`` users, so that the
    CUDA graphs of this state layout are captured here rather than in timed calls (a server warms up at load the
    same way); nothing for an unpadded grid."""
    from nann.serving.services import stack_states

    state = stack_states([offline.encoder.encode(h).state for h in histories[:batch]])
    for size in [s for s in offline.service.grid.sizes or () if s <= largest]:
        offline.scorer.runtime.score(state, np.arange(size, dtype=np.int32) * batch // size, np.zeros(size, np.int32))


def engine_side(cat: Catalogue, backend, side: str, at: dict, searches: dict, plan: Plan, deadline: float) -> str:
    """One scorer's measurements of a catalogue into its rows ``at[search, batch][side]`` ("skipped" past
    ``deadline``)."""
    offline = retriever(cat, backend)
    users = cat.histories[:plan.engine_users]
    for batch in plan.batches:
        if time.perf_counter() < deadline:
            warm_grid(offline, users, batch, plan.warm_largest)
        for search, (params, _) in searches.items():
            at[search, batch][side] = (engine_row(offline, users, params, batch, plan.engine_seconds, plan.engine_least)
                                       if time.perf_counter() < deadline else "skipped")
    return side


def engine(cats: list[Catalogue], device: str, plan: Plan, failed: dict) -> list[dict]:
    """Every (catalogue, search, batch) with the CUDA scorer (fp32, captured graphs; eager where that failed), then
    with the host's CPU scorer: one scorer in the process at a time, so the other's idle threads do not compete with
    the walk. The operating point is found with the CPU scorer (the walk is the same) and used for both. Rows not
    reached within the part's budget say "skipped"; a scorer that failed leaves its columns empty."""
    deadline = time.perf_counter() + plan.budgets["engine"]
    gpu = gpu_variants(device)
    rows = []
    for cat in cats:
        tuner = retriever(cat, CPU_SCORER)
        encoded = [tuner.encoder.encode(h) for h in cat.histories[:plan.tune_users]]
        defaults = tuner.limits.defaults  # the catalogue's served defaults (its graph's, RunDir.search_defaults)
        searches = {"defaults": (defaults, scored_fraction(tuner, encoded, defaults)),
                    "paper ~1.3%": operating_point(tuner, encoded, plan.tune_steps)}
        del tuner, encoded
        at = {(search, batch): {"catalogue": cat.name, "search": search, "ef": params.ef[-1],
                                "rounds": params.rounds[-1], "scored": fraction, "batch": batch, "gpu_scorer": None,
                                "gpu": None, "cpu": None}
              for search, (params, fraction) in searches.items() for batch in plan.batches}
        for label in ("fp32 graphs", "fp32 eager"):
            if attempt(failed, f"engine {cat.name} {label}", engine_side, cat, gpu[label], "gpu", at, searches, plan,
                       deadline):
                for row in at.values():
                    row["gpu_scorer"] = label
                break
        attempt(failed, f"engine {cat.name} {CPU_SCORER}", engine_side, cat, CPU_SCORER, "cpu", at, searches, plan,
                deadline)
        rows += at.values()
    return rows


# ---- (e) training --------------------------------------------------------------------------------------------------
def train_rates(work: Path, device: str, plan: Plan) -> dict:
    """`nann train` samples/s on ``device`` and on the host's CPU (once when the device is the host's CPU), same
    synthetic data and arguments: the median of the train log's 50-step points after the first (which holds the
    start-up), or the only one."""
    from nann_cli.steps import run_step

    raw, data = work / "train_raw", work / "train_data"
    run_step("synth", ["data", "synth", "--out", raw, *plan.train_synth], raw / "UserBehavior.csv")
    run_step("prepare", ["data", "prepare", "--csv", raw / "UserBehavior.csv", "--out", data], data / "stats.json")
    rates = {}
    for label, dev in {"device": device, "host cpu": "cpu"}.items():
        if dev == device and label != "device":
            continue
        run = RunDir(work / f"train_{label.replace(' ', '_')}")
        shutil.rmtree(run.path, ignore_errors=True)
        run_step(f"train --device {dev}", ["train", "--data", data, "--run", run.path, "--device", dev, "--epochs", "1",
                                           "--baseline", "none", "--eval-users", "20", *plan.train_args])
        points = [r["samples_per_s"] for r in map(json.loads, run.train_log_file.read_text().splitlines())
                  if r.get("kind") == "train"]
        if not points:
            raise UserError(f"{run.train_log_file} has no training speed point: train at least 50 steps")
        rates[label] = statistics.median(points[1:] or points)
    return rates


# ---- the runs ------------------------------------------------------------------------------------------------------
def catalogues(work: Path, pack: Path | None, device: str, plan: Plan) -> list[Catalogue]:
    """The random-weight catalogue with its kNN-layered graph built on ``device``, and the packed demo run (a
    random-weight stand-in without a pack)."""
    def random_catalogue(items: int) -> Catalogue:
        name = f"{items / 1e6:g}M" if items >= 1_000_000 else f"{items // 1000}k"
        run = random_run(work / f"run_{name}", items)
        t0 = time.perf_counter()
        knn_graph(run, device)
        hist = random_histories(np.arange(items), max(plan.parity_users, plan.engine_users), 3, 50)
        return Catalogue(name, run, hist, f"{items:,} items, random weights (default ModelConfig), kNN-layered graph "
                                          f"built with torch on {device} in {time.perf_counter() - t0:.0f} s "
                                          f"(graph_builder.knn_layers; not hnswlib's), random histories")

    big = random_catalogue(plan.big_items)
    if pack is None:
        return [big, random_catalogue(plan.small_items)]
    run, hist, meta = unpack_run(pack, work / "run_demo")
    users = len(hist)
    hist += random_histories(run.vocabulary().items, max(0, plan.parity_users - users), 4, 50)
    extra = f" + {len(hist) - users} random histories" if len(hist) > users else ""
    return [big, Catalogue("demo", run, hist, f"the pack of `{meta['run']}` ({meta['num_items']:,} items, trained; its "
                                              f"`nann graph` graph), {users} of its test users{extra}")]


# ---- the section ---------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    return f"CPU ({device}; no CUDA graph capture there) (torch {torch.__version__})"


def _parity_md(rows: list[dict]) -> list[str]:
    return ["| scorer | users | candidates | max abs error | max abs error / max abs score | "
            "users with the same top 10 |",
            "|---|---|---|---|---|---|",
            *[f"| {r['scorer']} | {r['users']} | {r['candidates']:,} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | "
              f"{r['top10_same']:.3f} |" for r in rows]]


def _scorer_md(rows: list[dict]) -> list[str]:
    labels = [*gpu_variants("cpu"), CPU_SCORER]  # the column labels only (no runtime is loaded)

    def ratio(r):
        return f"{r['fp32 graphs'] / r[CPU_SCORER]:.1f}x" if "fp32 graphs" in r and CPU_SCORER in r else ""

    return ["| size | users | " + " | ".join(labels) + f" | fp32 graphs / {CPU_SCORER} |",
            "|---" * (len(labels) + 3) + "|",
            *[f"| {r['size']} | {r['users']} | " + " | ".join(f"{r[k]:,.0f}" if k in r else "failed" for k in labels)
              + f" | {ratio(r)} |" for r in rows]]


def _engine_md(rows: list[dict]) -> list[str]:
    def side(m):
        if isinstance(m, dict):
            return f"{m['req_s']:.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} ({m['batches']})"
        return f"{m or 'failed'} | | "

    def ratio(r):
        measured = isinstance(r["gpu"], dict) and isinstance(r["cpu"], dict)
        return f"{r['gpu']['req_s'] / r['cpu']['req_s']:.2f}x" if measured else ""

    return ["| catalogue | search | layer 0 ef, rounds | % scored | batch | GPU scorer | GPU req/s | GPU p50 ms | "
            "GPU p99 ms (batches) | CPU req/s | CPU p50 ms | CPU p99 ms (batches) | GPU / CPU req/s |",
            "|---" * 13 + "|",
            *[f"| {r['catalogue']} | {r['search']} | {r['ef']}, {r['rounds']} | {100 * r['scored']:.2f} | "
              f"{r['batch']} | {r['gpu_scorer'] or 'failed'} | {side(r['gpu'])} | {side(r['cpu'])} | "
              f"{ratio(r)} |" for r in rows]]


def _train_md(rates: dict) -> list[str]:
    return ["| device | samples/s |", "|---|---|", *[f"| {k} | {v:,.0f} |" for k, v in rates.items()],
            *(["", f"Device / host CPU: {rates['device'] / rates['host cpu']:.2f}x."] if "host cpu" in rates else [])]


def section(res: dict, plan: Plan) -> str:
    """The markdown of the "GPU check" section; a part that failed says so with its error, and every failure (a part,
    or one scorer of one) is listed at the end."""
    info, failed = res["info"], res["failed"]

    def part(name: str, render: Callable) -> list[str]:
        return [f"Failed: `{failed[name]}`"] if name in failed else render(res[name])

    return "\n".join([
        provenance(res["command"], info, cores=True), "",
        f"Device: **{res['device']}**; host CPU: {info['nproc']} cores ({info['cpu']}). Catalogues:",
        *[f"- {c['name']}: {c['note']}" for c in res["catalogues"]], "",
        f"(a) Parity against the torch model on CPU (`{REFERENCE}`), same users and candidates, each runtime "
        "encoding its own users:", "", *part("parity", _parity_md), "",
        f"(b) Scorer candidates/s per grid size ({res['catalogues'][0]['name']}; min(size, 16) users per call, median "
        "call):", "", *part("scorer", _scorer_md), "",
        "(c, d) Offline engine (`OfflineRetriever`: encode, walk on the host CPU, scorer), the CUDA scorer (fp32, "
        f"captured graphs, or eager where capture failed) vs the host's CPU scorer (`{CPU_SCORER}`), one after the "
        "other, same users; latency is the "
        f"batch's; every grid size warmed up first. The paper's operating point (Table 1: ~17k of 1.3M items scored "
        f"per query): the defaults with layer 0's list size (ef, from top_m up) or, below that, its rounds set to "
        f"the value whose mean scored fraction over {plan.tune_users} users is closest to {PAPER_FRACTION:.1%} "
        f"({plan.tune_steps} steps of bisection; `perf.gpu_check.search_ladder`):",
        "", *part("engine", _engine_md), "",
        "(e) `nann train` samples/s, same synthetic data (`nann data synth " + " ".join(plan.train_synth) + "`) and "
        "arguments (`" + " ".join(plan.train_args) + "`), median of the 50-step log points after the first:", "",
        *part("train", _train_md), "",
        "Elapsed per part:", "", *res["clock"],
        *(["", "Failures:", *[f"- {key}: `{error}`" for key, error in failed.items()]] if failed else [])])


def check(args, plan: Plan) -> int:
    """Every part, then the section printed and written under --out; 1 when a part failed. Each part's table goes to
    stderr and gpu_check.json is rewritten as soon as the part ends, so a run stopped from outside leaves what it
    measured."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: torch sees no CUDA device here (torch {torch.__version__}); "
                        f"use --device cpu")
    if args.from_pack:
        check_pack(args.from_pack)
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    work, out = Path(args.work), Path(args.out) if args.out else None
    for d in (work, out):
        if d:
            d.mkdir(parents=True, exist_ok=True)
    clock = Clock(plan.budgets)
    res = {"command": command_line("perf.gpu_check", args.argv), "info": machine_info(),
           "device": device_name(args.device), "failed": clock.failed}
    cats = clock.part("runs", catalogues, work, Path(args.from_pack) if args.from_pack else None, args.device, plan)
    if cats is None:
        raise UserError(f"could not make the runs: {clock.failed['runs']}")
    res["catalogues"] = [{"name": c.name, "note": c.note} for c in cats]
    parts = {"parity": (parity, (cats[-1], args.device, plan, clock.failed), _parity_md),
             "scorer": (scorer_rates, (cats[0], args.device, plan, clock.failed), _scorer_md),
             "engine": (engine, (cats, args.device, plan, clock.failed), _engine_md),
             "train": (train_rates, (work, args.device, plan), _train_md)}
    for name, (fn, fn_args, render) in parts.items():
        res[name] = clock.part(name, fn, *fn_args)
        if res[name] is not None:
            print("\n".join(render(res[name])), file=sys.stderr, flush=True)
        if out:
            (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    res["clock"] = clock.table()
    md = section(res, plan)
    print(f"## {SECTION}\n\n{md}")
    if out:
        (out / "gpu_check.md").write_text(md + "\n")
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    return 1 if clock.failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", metavar="DIR", help="make the pack into DIR (of --run and --data) and stop")
    p.add_argument("--run", default="demo/run", help="with --pack: the trained run with a graph (default demo/run)")
    p.add_argument("--data", help="with --pack: the run's prepared data (default: the one its config names)")
    p.add_argument("--from", dest="from_pack", metavar="DIR", help="the pack (without: a random-weight demo stand-in)")
    p.add_argument("--device", default="cuda",
                   help="torch device of the CUDA scorer and the graph build (default cuda)")
    p.add_argument("--quick", action="store_true", help="small sizes, short timings (CPU, CI)")
    p.add_argument("--work", default="/tmp/nann_gpu_check", help="work directory (default /tmp/nann_gpu_check)")
    p.add_argument("--out", help="also write the section (gpu_check.md) and every number (gpu_check.json) here")
    p.add_argument("--record", metavar="FILE",
                   help="put FILE (a device run's gpu_check.md) into perf/RESULTS.md and stop")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if args.record:
            update_section(RESULTS, SECTION, Path(args.record).read_text())
            print(f"section {SECTION!r} of {RESULTS} <- {args.record}")
            return 0
        if args.pack:
            size = make_pack(args.run, args.data, args.pack)
            print(f"pack {args.pack}: {size / 2**20:.1f} MiB (limit 48 MiB); on the device: "
                  f"python3 -m perf.gpu_check --from {args.pack} --out $OUT")
            return 0
        return check(args, QUICK if args.quick else FULL)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
