"""Scorer throughput against this CPU's reference bound, measured side by side in one run.

    python -m perf.scorer_bench --run RUN_DIR [--seconds 2] [--repeats 3]

The reference is the plain paper-size UserBehavior scorer of ``shared/bench/scorer_bound.py`` (query projection
64→64→64, attention over 50 behaviours with one user's keys/values precomputed, MLP 192→128→64→32→1, PReLU; no
per-candidate gathers), rebuilt here so that `nann perf` and CI can run it: the same layers and shapes, timed the same
way (torch eager and ONNX Runtime, 2 intra-op threads). Our scorer is the run's exported ``scorer.onnx`` run by
``nann.runtime.ModelRuntime`` — exactly what the served `scorer` model calls — for 1 user × 16,000 candidates and
8 users × 2,000 candidates, with each backend. GFLOP/s = 2 × MACs per candidate × candidates/s, so scorers of
different sizes compare by arithmetic throughput. Every figure is the median of ``repeats`` timings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REF_D, REF_L, REF_H = 64, 50, 64
REF_MACS = REF_D * 64 + 64 * REF_H + REF_L * REF_H * 2 + (REF_D + REF_H + REF_D) * 128 + 128 * 64 + 64 * 32 + 32
SHAPES = ((1, 16_000), (8, 2_000))
THREADS = 2


def _timed(fn, seconds: float) -> float:
    """Seconds per call: one warm-up call, then as many calls as fit in ``seconds``."""
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def _median_rate(fn, candidates: int, seconds: float, repeats: int) -> dict:
    rates = [candidates / _timed(fn, seconds) for _ in range(repeats)]
    return {"candidates_per_s": statistics.median(rates), "spread": [min(rates), max(rates)]}


def reference_bound(seconds: float, repeats: int, candidates: int = 16_384) -> dict:
    """Candidates/s of the reference scorer, torch and ONNX Runtime, one user."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Sequential(torch.nn.Linear(REF_D, 64), torch.nn.PReLU(), torch.nn.Linear(64, REF_H))
            self.mlp = torch.nn.Sequential(torch.nn.Linear(REF_D + REF_H + REF_D, 128), torch.nn.PReLU(),
                                           torch.nn.Linear(128, 64), torch.nn.PReLU(), torch.nn.Linear(64, 32),
                                           torch.nn.PReLU(), torch.nn.Linear(32, 1))

        def forward(self, keys, values, user, ev):
            a = torch.softmax(self.q(ev) @ keys.T / REF_H ** 0.5, -1)
            return self.mlp(torch.cat([user.expand(ev.shape[0], REF_D), a @ values, ev], -1)).squeeze(-1)

    model = Reference().eval()
    keys, values, user = torch.randn(REF_L, REF_H), torch.randn(REF_L, REF_H), torch.randn(1, REF_D)
    ev = torch.randn(candidates, REF_D)
    path = os.path.join(tempfile.mkdtemp(), "reference.onnx")
    torch.onnx.export(model, (keys, values, user, ev[:100]), path, input_names=["k", "v", "u", "e"],
                      output_names=["s"], dynamic_axes={"e": {0: "C"}, "s": {0: "C"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {"k": keys.numpy(), "v": values.numpy(), "u": user.numpy(), "e": ev.numpy()}
    with torch.inference_mode():
        out = {"torch": _median_rate(lambda: model(keys, values, user, ev), candidates, seconds, repeats)}
    out["onnxruntime"] = _median_rate(lambda: session.run(None, feeds), candidates, seconds, repeats)
    for r in out.values():
        r["gflops"] = 2 * REF_MACS * r["candidates_per_s"] / 1e9
    return {"macs_per_candidate": REF_MACS, "candidates": candidates, **out}


def our_scorer(run_dir: Path, seconds: float, repeats: int) -> dict:
    """Candidates/s of the run's scorer through ModelRuntime, per backend and shape."""
    from nann.model import ModelConfig
    from nann.model_split import per_candidate_macs
    from nann.run_dir import RunDir
    from nann.runtime import ModelRuntime

    cfg = ModelConfig.from_dict(RunDir(run_dir).read_config())
    macs = per_candidate_macs(cfg)["after"]
    rng = np.random.default_rng(0)
    out = {"macs_per_candidate": macs}
    for backend in ("onnxruntime", "torch"):
        runtime = ModelRuntime.load(run_dir, backend=backend, threads=THREADS)
        for users, per_user in SHAPES:
            state = runtime.encode([rng.integers(0, runtime.num_items, runtime.max_seq) for _ in range(users)])
            owner = np.repeat(np.arange(users, dtype=np.int64), per_user)
            cand = np.asarray(runtime.item_embeddings[rng.integers(0, runtime.num_items, users * per_user)],
                              dtype=np.float32)
            r = _median_rate(lambda: runtime.score_emb(state, owner, cand), users * per_user, seconds, repeats)
            r["gflops"] = 2 * macs * r["candidates_per_s"] / 1e9
            out[f"{backend} {users}x{per_user}"] = r
    return out


def measure(run_dir: Path, seconds: float = 2.0, repeats: int = 3) -> dict:
    """Reference and ours in one run, with each of our rows as a fraction of the reference's GFLOP/s (same backend)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    ref = reference_bound(seconds, repeats)
    ours = our_scorer(run_dir, seconds, repeats)
    for key, row in ours.items():
        if isinstance(row, dict):
            row["of_reference"] = row["gflops"] / ref[key.split()[0]]["gflops"]
    return {"loadavg_at_start": load, "reference": ref, "ours": ours}


def markdown(res: dict) -> list[str]:
    ref = res["reference"]
    lines = [f"Reference bound (plain paper-size scorer, {ref['macs_per_candidate']:,} MAC/candidate, one user × "
             f"{ref['candidates']:,}) and our scorer ({res['ours']['macs_per_candidate']:,} MAC/candidate), "
             f"{THREADS} threads, median of repeats (spread in brackets); load average at start "
             f"{res['loadavg_at_start']}.", "",
             "| scorer | candidates/s | GFLOP/s | of the reference (same backend) |", "|---|---|---|---|"]
    for backend in ("onnxruntime", "torch"):
        r = ref[backend]
        lines.append(f"| reference, {backend} | {r['candidates_per_s']:,.0f} [{r['spread'][0]:,.0f}–{r['spread'][1]:,.0f}] "
                     f"| {r['gflops']:.1f} | 1.00 |")
    for key, r in res["ours"].items():
        if isinstance(r, dict):
            lines.append(f"| ours, {key} | {r['candidates_per_s']:,.0f} [{r['spread'][0]:,.0f}–{r['spread'][1]:,.0f}] "
                         f"| {r['gflops']:.1f} | {r['of_reference']:.2f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per measurement (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timings per figure, median reported (default 3)")
    args = p.parse_args(argv)
    res = measure(Path(args.run), args.seconds, args.repeats)
    print("\n".join(markdown(res)))
    print(json.dumps(res, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
