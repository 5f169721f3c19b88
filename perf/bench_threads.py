"""Training steps/s by torch's thread wait policy, on idle cores and beside busy processes, side by side.

    python -m perf.bench_threads [--work DIR] [--samples 25600] [--repeats 2] [--hogs 0,2]

`nann train` runs its torch threads with OMP_WAIT_POLICY=PASSIVE unless the variable is set
(`nann_cli.main.PASSIVE_WAIT_COMMANDS`): idle threads sleep instead of spinning. This measures why and what it costs:
each variant is `nann train --negatives 20 --max-samples SAMPLES --batch-size 256` in its own process (libgomp reads
the variable once, at torch's import) on perf.bench_train's data:

- all cores, OMP_WAIT_POLICY=ACTIVE (spinning: libgomp's and torch's behaviour without the default);
- all cores, OMP_WAIT_POLICY=PASSIVE (the default);
- one thread.

beside 0 and N busy processes (`--hogs`, perf.stress's hogs: one spinning Python process each), the variants
alternating, `--repeats` times. Steps/s are medians of the run's 50-step log points, then over repeats.
Writes section "Training speed: threads under load" of perf/RESULTS.md; read it with the load average printed
beside it (a shared machine is never idle).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from nann.run_dir import RunDir
from perf.bench_train import BATCH, SYNTH, bench_data, steps_per_s
from perf.run import machine_info
from perf.sections import command_line, provenance, report
from perf.stress import start_hogs, stop_hogs

SECTION = "Training speed: threads under load"
CORES = os.cpu_count() or 1
VARIANTS = {  # name -> (threads, OMP_WAIT_POLICY)
    f"{CORES} threads, spinning (ACTIVE)": (CORES, "ACTIVE"),
    f"{CORES} threads, sleeping (PASSIVE, the default)": (CORES, "PASSIVE"),
    "1 thread": (1, "PASSIVE"),
}


def train_steps_per_s(data: Path, run: Path, samples: int, threads: int, policy: str) -> float:
    """One training in its own process; its median steps/s."""
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-m", "nann_cli.main", "train", "--data", str(data), "--run", str(run), "--epochs", "1",
           "--negatives", "20", "--max-samples", str(samples), "--batch-size", str(BATCH), "--eval-users", "10",
           "--baseline", "none", "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    return steps_per_s(RunDir(run).train_log_file)["all"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="perf/results/bench_train", help="work directory (default perf/results/bench_train)")
    p.add_argument("--samples", type=int, default=25_600, help="training samples per run (default 25,600: 100 steps)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant per condition (default 2)")
    p.add_argument("--hogs", default=f"0,{CORES}", help=f"busy processes beside the training (default 0,{CORES})")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    work = Path(args.work)
    info = machine_info()
    data = bench_data(work)
    rows = []
    for hogs in (int(h) for h in args.hogs.split(",")):
        load = os.getloadavg()[0]
        busy = start_hogs(hogs)
        try:
            rates = {name: [] for name in VARIANTS}
            for _ in range(args.repeats):
                for name, (threads, policy) in VARIANTS.items():
                    rates[name].append(train_steps_per_s(data, work / "run_threads", args.samples, threads, policy))
                    print(f"{hogs} busy: {name}: {rates[name][-1]:.2f} steps/s", flush=True)
        finally:
            stop_hogs(busy)
        rows.append((hogs, load, {name: float(np.median(r)) for name, r in rates.items()},
                     {name: (min(r), max(r)) for name, r in rates.items()}))
    names = list(VARIANTS)
    spinning, sleeping = names[0], names[1]
    md = [provenance(command_line("perf.bench_threads", argv), info, cores=True), "",
          f"Data `nann data synth {' '.join(SYNTH)}`; each variant `nann train --negatives 20 --max-samples "
          f"{args.samples} --batch-size {BATCH} --threads T` in its own process with OMP_WAIT_POLICY set, the "
          f"variants alternating, {args.repeats} runs each; steps/s medians [min–max over runs].", "",
          "| busy processes beside (load average before) | " + " | ".join(names) + " | sleeping / spinning |",
          "|---|" + "---|" * (len(names) + 1)]
    for hogs, load, med, spread in rows:
        md.append(f"| {hogs} ({load:.1f}) | " + " | ".join(f"{med[n]:.2f} [{spread[n][0]:.2f}–{spread[n][1]:.2f}]"
                                                          for n in names)
                  + f" | {med[sleeping] / med[spinning]:.2f}x |")
    report(SECTION, "\n".join(md), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
