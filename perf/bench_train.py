"""Training steps/s with IEEE denormals kept vs flushed to zero: the same data and command, side by side.

    python -m perf.bench_train [--work DIR] [--samples 421000] [--repeats 1]

Data: `nann data synth --users 8000 --items 20000 --seed 7` (where the slowdown was reported), prepared with
held-out users (`--split users`, the split the figures were measured on).
Each variant runs `nann train --negatives 20 --max-samples SAMPLES --batch-size 256 --denormals {keep,flush}`
(the same threads, seed and samples); steps/s come from the run's train_log.jsonl (every 50 steps), reported for
the first and the last quarter of the epoch, since denormals appear as training goes on (tiny FGSM gradients and
moments of rarely seen embedding rows). Writes the "Training speed: denormals" section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from nann.run_dir import RunDir
from nann_cli.steps import run_step
from perf.run import machine_info
from perf.sections import command_line, provenance, report

SECTION = "Training speed: denormals"
SYNTH = ["--users", "8000", "--items", "20000", "--seed", "7"]
BATCH = 256


def bench_data(work: Path) -> Path:
    """The benchmark's prepared data (WORK/data), made once."""
    raw, data = work / "raw", work / "data"
    run_step("synth", ["data", "synth", "--out", str(raw), *SYNTH], raw / "UserBehavior.csv")
    run_step("prepare", ["data", "prepare", "--csv", str(raw / "UserBehavior.csv"), "--out", str(data),
                         "--split", "users"], data / "stats.json")
    return data


def steps_per_s(log: Path) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rates = np.array([r["samples_per_s"] / BATCH for r in rows if r.get("kind") == "train"])
    q = max(1, rates.shape[0] // 4)
    return {"first_quarter": float(np.median(rates[:q])), "last_quarter": float(np.median(rates[-q:])),
            "all": float(np.median(rates)), "points": int(rates.shape[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="perf/results/bench_train", help="work directory (default perf/results/bench_train)")
    p.add_argument("--samples", type=int, default=421_000, help="training samples per run (default: one epoch, 421k)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of both runs (default 2)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    work = Path(args.work)
    info = machine_info()
    data = bench_data(work)
    results = {}
    for mode in ("keep", "flush"):
        run = work / f"run_{mode}"
        shutil.rmtree(run, ignore_errors=True)
        run_step(f"train --denormals {mode}", ["train", "--data", str(data), "--run", str(run), "--negatives", "20",
                                               "--max-samples", str(args.samples), "--batch-size", str(BATCH),
                                               "--eval-users", "20", "--threads", str(args.threads),
                                               "--denormals", mode], None)
        results[mode] = steps_per_s(RunDir(run).train_log_file)
    ratio = results["flush"]["last_quarter"] / results["keep"]["last_quarter"]
    md = "\n".join([
        provenance(command_line("perf.bench_train", argv), info), "",
        f"Data `nann data synth {' '.join(SYNTH)}`; `nann train --negatives 20 --max-samples {args.samples} "
        f"--batch-size {BATCH} --threads {args.threads}`, run one after the other; steps/s medians of the 50-step "
        "log points.", "",
        "| --denormals | steps/s, first quarter | steps/s, last quarter | steps/s, all |", "|---|---|---|---|",
        *[f"| {m} | {r['first_quarter']:.2f} | {r['last_quarter']:.2f} | {r['all']:.2f} |" for m, r in results.items()],
        "", f"Flushing denormals (the default): {ratio:.2f}x the steps/s of keeping them, last quarter."])
    report(SECTION, md, write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
