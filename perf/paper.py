"""The paper's Table 3 and Figure 3 on our data: `python -m perf.paper --data DATA --work DIR`.

Table 3 shape: three architectures (two-tower, mlp = "DNN w/o attention", attention) × FGSM off/on, each
evaluated with beam search at the served defaults (`ServingLimits`: ef, rounds, frontier; M=200):
recall-retrieval, recall-all, recall-Δ, coverage, % of |V| scored.
Figure 3: recall and coverage vs % of |V| scored while the search budget varies, for NANN (FGSM model) beam
at the served defaults with ef swept, the same beam with a frontier (4 … 128, rounds {1,3,40}) swept, NANN-HNSW
(hnsw, FGSM model) and SL2G (hnsw, attention model trained without FGSM).
Runs are trained (through the CLI) only when missing, so the script can be resumed.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from nann.evaluate import Evaluator, MethodSpec, plot_curves, sweep_specs
from nann.serving.requests import ServingLimits
from nann.steps import run_step
from perf.compare import FRONTIER, FRONTIER_ROUNDS   # the frontier curve: 4 … 128 (BEAM_SWEEP_SCALES)

ARCHS = ("two-tower", "mlp", "attention")
ARCH_NAMES = {"two-tower": "two-sided", "mlp": "DNN w/o attention", "attention": "DNN w/ attention"}


def ensure_run(data: Path, run: Path, arch: str, fgsm_eps: float, train_args: list[str]) -> Path:
    run_step(f"train {run.name}", ["train", "--data", data, "--run", run, "--arch", arch, "--fgsm-eps", fgsm_eps,
                                    *train_args], run / "scorer.onnx")
    run_step(f"graph {run.name}", ["graph", "--run", run], run / "graph" / "meta.json")
    return run


def table3(results: list[dict]) -> str:
    lines = ["| FGSM | model | recall-retrieval | recall-all | recall-Δ | coverage | % of V scored |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {'yes' if r['fgsm'] else 'no'} | {ARCH_NAMES[r['arch']]} | {r['recall_retrieval'] * 100:.2f}% | "
                     f"{r['recall_all'] * 100:.2f}% | {r['recall_delta'] * 100:.2f}% | {r['coverage'] * 100:.2f}% | "
                     f"{r['scored_fraction'] * 100:.2f}% |")
    return "\n".join(lines)


def eps_table(rows: list[dict]) -> str:
    """FGSM strength vs search quality of the attention model: one row per ε, one column group per method."""
    names = list(rows[0]["methods"])
    lines = ["| ε | recall-all | " + " | ".join(f"{n}: coverage / recall-Δ / % of V" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{m['coverage'] * 100:.1f}% / {m['recall_delta'] * 100:.1f}% / {m['scored_fraction'] * 100:.2f}%"
                 for m in r["methods"].values()]
        lines.append(f"| {r['eps']:g} | {r['recall_all'] * 100:.2f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--work", required=True, help="directory for the runs and results")
    p.add_argument("--users", type=int, default=300, help="test users evaluated")
    p.add_argument("--fgsm-eps", type=float, default=3e-4)
    p.add_argument("--train-args", default="--epochs 1 --negatives 20 --max-samples 200000 --batch-size 256 "
                                           "--eval-users 100", help="extra `nann train` arguments")
    p.add_argument("--eps-sweep", default="", help="comma-separated extra FGSM ε for the attention model: "
                                                   "writes eps.md (ε = 0 and --fgsm-eps are always included)")
    p.add_argument("--skip-table", action="store_true")
    p.add_argument("--skip-figure", action="store_true")
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_args = args.train_args.split()
    runs = {(arch, fgsm): work / f"{arch}-{'fgsm' if fgsm else 'plain'}" for arch in ARCHS for fgsm in (False, True)}
    evaluators: dict[Path, Evaluator] = {}

    def evaluator(run: Path) -> Evaluator:  # one per run: its brute-force reference is computed once
        if run not in evaluators:
            evaluators[run] = Evaluator(run, data, users=args.users)
        return evaluators[run]

    lim = ServingLimits()
    served = MethodSpec("beam", lim.default_ef, lim.default_rounds, 200, lim.default_frontier, lim.default_seeds)
    frontier = MethodSpec("beam", served.ef, FRONTIER_ROUNDS, 200, FRONTIER)
    hnsw = MethodSpec("hnsw", (400,), (1,), 200)
    if not args.skip_table:
        results = []
        for (arch, fgsm), run in runs.items():
            ensure_run(data, run, arch, args.fgsm_eps if fgsm else 0.0, train_args)
            m = evaluator(run).evaluate(served)
            results.append({**m, "arch": arch, "fgsm": fgsm})
            print(table3(results[-1:]).splitlines()[-1], file=sys.stderr)
        (work / "table3.json").write_text(json.dumps(results, indent=1))
        (work / "table3.md").write_text(table3(results) + "\n")
        print(table3(results))
    if not args.skip_figure:
        fgsm_run = ensure_run(data, runs[("attention", True)], "attention", args.fgsm_eps, train_args)
        plain_run = ensure_run(data, runs[("attention", False)], "attention", 0.0, train_args)
        nann_eval, sl2g_eval = evaluator(fgsm_run), evaluator(plain_run)
        curves = {
            f"NANN (beam, FGSM), rounds {list(served.rounds)}, ef swept": [
                nann_eval.evaluate(s) for s in sweep_specs(served)],
            f"NANN (beam, FGSM), rounds {list(FRONTIER_ROUNDS)}, frontier swept": [
                nann_eval.evaluate(s) for s in sweep_specs(frontier)],
            "NANN-HNSW (hnsw, FGSM)": [nann_eval.evaluate(s) for s in sweep_specs(hnsw)],
            "SL2G (hnsw, no FGSM)": [sl2g_eval.evaluate(s) for s in sweep_specs(hnsw)],
        }
        (work / "figure3.json").write_text(json.dumps({"created": datetime.now(timezone.utc).isoformat(),
                                                       "curves": curves}, indent=1))
        plot_curves(curves, work / "figure3.png")
        for name, points in curves.items():
            print(name)
            for pt in points:
                print(f"  scored {pt['scored_fraction'] * 100:6.2f}%  recall {pt['recall_retrieval'] * 100:5.2f}%  "
                      f"coverage {pt['coverage'] * 100:6.2f}%")
    if args.eps_sweep:
        methods = {"beam (served)": served, f"beam frontier {FRONTIER}": frontier, "hnsw ef0 400": hnsw}
        rows = []
        for eps in [0.0, args.fgsm_eps, *(float(x) for x in args.eps_sweep.split(","))]:
            run = runs[("attention", eps > 0)] if eps in (0.0, args.fgsm_eps) else work / f"attention-fgsm-{eps:g}"
            ev = evaluator(ensure_run(data, run, "attention", eps, train_args))
            res = {name: ev.evaluate(spec) for name, spec in methods.items()}
            rows.append({"eps": eps, "recall_all": next(iter(res.values()))["recall_all"], "methods": res})
            print(eps_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        (work / "eps.json").write_text(json.dumps(rows, indent=1))
        (work / "eps.md").write_text(eps_table(rows) + "\n")
        print(eps_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
