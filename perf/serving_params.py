"""Served throughput and latency for values of one model-config setting, side by side in one run.

    python -m perf.serving_params --run RUN --data DATA [--model retrieve --param spinning --values false,true] [--bls]

Exports RUN once (ONNX Runtime scorer, the catalogue's defaults; `--bls`: the scorer behind BLS as the `scorer` model,
`nann export --bls`), makes one copy of the repository per value
with only PARAM changed in the config.pbtxt of each MODEL (comma-separated): a key of its `parameters`, or a field
such as `max_queue_delay_microseconds`; `--model retrieve --param grid --values padded,unpadded` compares the
candidate grids (`nann.engine.grid.CandidateGrid`: TensorRT's padded sizes, or none). `--param placement --values
in-process,bls` exports RUN once per value instead: the scorer inside `retrieve` (the default) or behind BLS.
Measures each copy with perf_analyzer
on the `nann` ensemble (real test-user histories) at the given concurrencies, the copies alternating, `repeats`
times; reports the median req/s and p50 per value and the ratio to the first value. Used to choose the runtime
thread settings of docs/OPERATIONS.md ("Runtime threads"); writes its section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path


def parameter_value(param: str, value: str) -> str:
    """The config string of VALUE: the named grids for `grid` (its JSON, escaped), else VALUE itself."""
    if param != "grid":
        return value
    from nann.engine.grid import CandidateGrid
    from nann.serving.export import pbtxt_string

    grids = {"padded": CandidateGrid(), "unpadded": CandidateGrid.unpadded()}
    if value not in grids:
        raise SystemExit(f"grid values are {', '.join(grids)}, not {value!r}")
    return pbtxt_string(json.dumps(grids[value].to_json()))


def with_setting(repo: Path, dst: Path, models: list[str], param: str, value: str) -> Path:
    """A copy of `repo` (files hard-linked, the changed configs rewritten) with PARAM = VALUE in each model's config:
    the `parameters` entry of that key, else the config field of that name."""
    from perf.load import linked_copy

    linked_copy(repo, dst)
    text_value = parameter_value(param, value)
    for model in models:
        cfg = dst / model / "config.pbtxt"
        text = cfg.read_text()
        new, n = re.subn(rf'(key: "{re.escape(param)}" value: \{{ string_value: )"(?:[^"\\]|\\.)*"',
                         lambda m: f'{m.group(1)}"{text_value}"', text)
        if n == 0:
            new, n = re.subn(rf"\b{re.escape(param)}: [^\s}}]+", f"{param}: {value}", text)
        if n != 1:
            raise SystemExit(f"{cfg} has no parameter or field {param!r}")
        cfg.unlink()  # a hard link into the exported repository
        cfg.write_text(new)
    return dst


PLACEMENTS = {"in-process": True, "bls": False}  # --param placement: where the scorer runs (`in_process` of the export)


def repositories(run: Path, work: Path, models: list[str], param: str, values: list[str], bls: bool) -> dict[str, Path]:
    """One repository per value: exported once per placement (`--param placement`), else copies of one export."""
    from nann.serving.export import export_repository

    if param == "placement":
        unknown = [v for v in values if v not in PLACEMENTS]
        if unknown:
            raise SystemExit(f"placement values are {', '.join(PLACEMENTS)}, not {', '.join(unknown)}")
        for v in values:
            export_repository(run, work / f"placement_{v}", scorer="onnxruntime", in_process=PLACEMENTS[v])
        return {v: work / f"placement_{v}" for v in values}
    export_repository(run, work / "exported", scorer="onnxruntime", in_process=False if bls else None)
    return {v: with_setting(work / "exported", work / f"{param}_{v}", models, param, v) for v in values}


def main(argv=None) -> int:
    import perf.load as L
    from perf.run import machine_info
    from perf.sections import command_line, provenance, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--data", required=True, help="its prepared data (test users' histories are the load)")
    p.add_argument("--work", default="perf/results/serving_params", help="repositories and raw output go here")
    p.add_argument("--model", default="retrieve",
                   help="models whose config changes, comma-separated (default retrieve)")
    p.add_argument("--param", default="spinning",
                   help="a `parameters` key or a config field to vary (default spinning)")
    p.add_argument("--values", default="false,true", help="its values, comma-separated (default false,true)")
    p.add_argument("--bls", action="store_true", help="export with the scorer behind BLS (the `scorer` model)")
    p.add_argument("--concurrency", default="1,16", help="perf_analyzer concurrencies (default 1,16)")
    p.add_argument("--repeats", type=int, default=2, help="measurements per value, alternating (default 2)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    command = command_line("perf.serving_params", argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    values = args.values.split(",")
    models = args.model.split(",")
    repos = repositories(Path(args.run), work, models, args.param, values, args.bls)
    inputs = work / "input.json"
    L.write_input_data(args.data, inputs)
    cfg = L.SweepConfig(concurrency=tuple(int(c) for c in args.concurrency.split(",")), interval_ms=3000)
    pa_env = L.ensure_perf_analyzer()
    runs = L.alternating_sweeps({f"{args.param}_{v}": repos[v] for v in values}, inputs, work / "out", cfg,
                                args.repeats, pa_env)
    runs = {v: runs[f"{args.param}_{v}"] for v in values}
    what = (f"The scorer's placement (inside `retrieve` or behind BLS) in exports of {args.run}"
            if args.param == "placement" else
            f"`{args.param}` of {', '.join(f'`{m}`' for m in models)} in an exported repository of {args.run}"
            + (" (scorer behind BLS)" if args.bls else ""))
    lines = [provenance(command, info, cores=True), "",
             f"{what}; perf_analyzer on `nann`, "
             f"median of {args.repeats} measurements per value (alternating), ratio to `{values[0]}`.", "",
             "| value | concurrency | req/s | p50 ms | p99 ms (each measurement) | req/s ratio |", "|---|---|---|---|---|---|"]
    for c in cfg.concurrency:
        base = None
        for v in values:
            rows = [r for r in runs[v] if r["concurrency"] == c]
            qps = statistics.median(r["throughput_rps"] for r in rows)
            p50 = statistics.median(r["p50_us"] for r in rows) / 1e3
            p99 = ", ".join(f"{r['p99_us'] / 1e3:.0f}" for r in rows)
            base = base or qps
            lines.append(f"| {v} | {c} | {qps:.1f} | {p50:.1f} | {p99} | {qps / base:.2f}x |")
    title = "placement" if args.param == "placement" else f"{args.param} ({', '.join(models)})"
    report(f"Serving parameters: {title}", "\n".join(lines), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
