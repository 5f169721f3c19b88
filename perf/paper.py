"""The paper's Table 3 and Figure 3 on our data: `python -m perf.paper --data DATA --work DIR`.

Table 3 shape: three architectures (two-tower, mlp = "DNN w/o attention", attention) × FGSM off/on, plus the
attention model without the interaction features (the paper's plain concatenation), each evaluated with the beam
at the catalogue's search defaults (`default_search`; M=200): recall-retrieval, recall-all, recall-Δ, coverage,
% of |V| scored, beside a popularity baseline's recall.
Figure 3: coverage and recall vs % of |V| scored while the search budget varies: NANN (FGSM model) beam at the
defaults — history seeds included — with the last layer's ef swept, the same beam without seeds, NANN-HNSW (HNSW
retrieval, FGSM model) and SL2G (HNSW retrieval, attention model trained without FGSM), each against its own
model's brute force; and the check that the beam is ahead of HNSW-retrieval at every budget both cover.
Runs are trained (through the CLI) only when missing, so the script can be resumed. Each table goes to its own
section of perf/RESULTS.md with the command, date, commit and machine load.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from nann.data.prepared import PreparedData
from nann.engine.params import DEFAULT_SEARCH, default_search
from nann.evaluate import Evaluator, MethodSpec, plot_curves, sweep_specs
from nann.run_dir import RunDir
from nann_cli.steps import run_step
from perf.run import machine_info
from perf.sections import command_line, provenance, update_section

ARCHS = ("two-tower", "mlp", "attention")
ARCH_NAMES = {"two-tower": "two-sided", "mlp": "DNN w/o attention", "attention": "DNN w/ attention"}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def ensure_run(data: Path, run: Path, arch: str, fgsm_eps: float, train_args: list[str], extra=()) -> Path:
    run_step(f"train {run.name}", ["train", "--data", data, "--run", run, "--arch", arch, "--fgsm-eps", fgsm_eps,
                                    *train_args, *extra], RunDir(run).scorer_file)
    run_step(f"graph {run.name}", ["graph", "--run", run], RunDir(run).graph.meta_file)
    return run


def table3(results: list[dict]) -> str:
    lines = ["| FGSM | model | recall-retrieval | recall-all | recall-Δ | coverage | % of V scored |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {'yes' if r['fgsm'] else 'no'} | {r['name']} | {r['recall_retrieval'] * 100:.2f}% | "
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


def ahead_at_every_budget(beam: list[dict], hnsw: list[dict]) -> list[dict]:
    """For each HNSW point inside the beam curve's budget range: the beam's coverage at the same % of V scored
    (linear in log % scored between the beam's neighbouring points)."""
    bx = np.log([p["scored_fraction"] for p in beam])
    by = np.array([p["coverage"] for p in beam])
    order = np.argsort(bx)
    rows = []
    for h in hnsw:
        x = np.log(h["scored_fraction"])
        if bx[order[0]] <= x <= bx[order[-1]]:
            rows.append({"scored_fraction": h["scored_fraction"], "hnsw": h["coverage"],
                         "beam": float(np.interp(x, bx[order], by[order]))})
    return rows


def figure3_md(curves: dict[str, list[dict]], checks: dict[str, list[dict]]) -> str:
    names = list(curves)
    lines = ["coverage@200 at % of V scored (each against its own model's brute force):", "",
             "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for i in range(max(len(c) for c in curves.values())):
        lines.append("| " + " | ".join(f"{c[i]['scored_fraction'] * 100:.2f}% → {c[i]['coverage']:.3f}"
                                        if i < len(c) else "" for c in curves.values()) + " |")
    for name, rows in checks.items():
        ahead = all(r["beam"] > r["hnsw"] for r in rows)
        lines += ["", f"Seeded beam vs {name} at equal % of V scored (beam interpolated between its points; "
                  f"{'ahead at every budget both cover' if ahead else 'NOT ahead everywhere'}):", "",
                  "| % of V | beam coverage | " + name + " coverage |", "|---|---|---|",
                  *[f"| {r['scored_fraction'] * 100:.2f}% | {r['beam']:.3f} | {r['hnsw']:.3f} |" for r in rows]]
    return "\n".join(lines)


def header(argv, data_note: str) -> str:
    return f"{provenance(command_line('perf.paper', argv), machine_info())} {data_note}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--work", required=True, help="directory for the runs and results")
    p.add_argument("--users", type=int, default=300, help="test users evaluated (default 300)")
    p.add_argument("--fgsm-eps", type=float, default=3e-4, help="FGSM ε of the 'yes' runs (default 3e-4, the paper's)")
    p.add_argument("--train-args", default="--epochs 1 --negatives 20 --max-samples 200000 --batch-size 256 "
                                           "--eval-users 100", help="extra `nann train` arguments")
    p.add_argument("--eps-sweep", default="", help="comma-separated extra FGSM ε for the attention model: "
                                                   "(ε = 0 and --fgsm-eps are always included)")
    p.add_argument("--skip-table", action="store_true", help="do not measure Table 3")
    p.add_argument("--skip-figure", action="store_true", help="do not measure Figure 3")
    p.add_argument("--no-results-md", action="store_true", help="do not write the sections of perf/RESULTS.md")
    argv = list(sys.argv[1:] if argv is None else argv)
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

    def publish(name: str, md: str) -> None:
        print(md)
        if not args.no_results_md:
            update_section(RESULTS, name, md)

    note = (f"Data {data}; every model `nann train {args.train_args}` (FGSM ε {args.fgsm_eps:g} where 'yes'), "
            f"`nann graph` defaults; {args.users} test users, M = 200.")
    # the catalogue's search defaults (default_search; every run here has the same items)
    served = MethodSpec("beam", default_search(PreparedData.load(str(data)).vocab.num_items))
    hnsw = MethodSpec("hnsw", replace(DEFAULT_SEARCH, ef=(400,), rounds=(1,)))
    if not args.skip_table:
        results = []
        for (arch, fgsm), run in runs.items():
            ensure_run(data, run, arch, args.fgsm_eps if fgsm else 0.0, train_args)
            results.append({**evaluator(run).evaluate(served), "name": ARCH_NAMES[arch], "fgsm": fgsm})
        plain = ensure_run(data, work / "attention-fgsm-no-interactions", "attention", args.fgsm_eps, train_args,
                           ["--no-interactions"])
        results.append({**evaluator(plain).evaluate(served), "fgsm": True,
                        "name": "DNN w/ attention, plain concatenation (`--no-interactions`)"})
        popularity = evaluator(runs[("attention", True)]).popularity_recall()
        (work / "table3.json").write_text(json.dumps(results, indent=1))
        publish("Table 3 (100k items)", "\n".join([
            header(argv, note), "", f"Beam at the search defaults ({served.label()}).", "", table3(results), "",
            f"Popularity baseline (the 200 most frequent training items for everyone): recall@200 "
            f"{popularity * 100:.2f}%."]))
    if not args.skip_figure:
        nann_eval = evaluator(ensure_run(data, runs[("attention", True)], "attention", args.fgsm_eps, train_args))
        sl2g_eval = evaluator(ensure_run(data, runs[("attention", False)], "attention", 0.0, train_args))
        unseeded = replace(served, params=replace(served.params, seeds=0))
        curves = {
            "NANN beam, seeded (defaults; last-layer ef swept)": [nann_eval.evaluate(s) for s in sweep_specs(served)],
            "NANN beam, no seeds": [nann_eval.evaluate(s) for s in sweep_specs(unseeded)],
            "NANN-HNSW (FGSM)": [nann_eval.evaluate(s) for s in sweep_specs(hnsw)],
            "SL2G (no FGSM)": [sl2g_eval.evaluate(s) for s in sweep_specs(hnsw)],
        }
        beam = curves["NANN beam, seeded (defaults; last-layer ef swept)"]
        checks = {name: ahead_at_every_budget(beam, curves[name]) for name in ("NANN-HNSW (FGSM)", "SL2G (no FGSM)")}
        (work / "figure3.json").write_text(json.dumps({"curves": curves, "checks": checks}, indent=1))
        plot_curves(curves, work / "figure3.png")
        publish("Figure 3 (100k items)", "\n".join([header(argv, note), "", figure3_md(curves, checks)]))
    if args.eps_sweep:
        methods = {"beam (defaults)": served, "beam, no seeds": replace(served, seeds=0), "hnsw ef0 400": hnsw}
        rows = []
        for eps in [0.0, args.fgsm_eps, *(float(x) for x in args.eps_sweep.split(","))]:
            run = runs[("attention", eps > 0)] if eps in (0.0, args.fgsm_eps) else work / f"attention-fgsm-{eps:g}"
            ev = evaluator(ensure_run(data, run, "attention", eps, train_args))
            res = {name: ev.evaluate(spec) for name, spec in methods.items()}
            rows.append({"eps": eps, "recall_all": next(iter(res.values()))["recall_all"], "methods": res})
        (work / "eps.json").write_text(json.dumps(rows, indent=1))
        publish("FGSM strength (100k items)", "\n".join([header(argv, note), "", eps_table(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
