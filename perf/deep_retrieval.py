"""Deep Retrieval beside NANN on synthetic data: perf/RESULTS.md section "Deep Retrieval, synthetic".

    make demo    # or any trained run (with its two-tower baseline) and its prepared data
    python -m perf.deep_retrieval --data demo/data --run demo/run --work WORK

The seed system's comparison (Deep Retrieval against NANN: same data, same metrics, equal items scored), on the
synthetic catalogue the demo trains (~91k items). The steps and tables are the real-logs report's
(`perf.real_logs.measure`, `tables`), on a run trained elsewhere instead of one trained here: `nann graph` (when the
run has no graph), `nann evaluate` (the served defaults and a sweep of the beam's budget, the model's brute-force
recall beside popularity and the two-tower baseline, with 95% intervals over users), then `nann train --arch
deep-retrieval` with its defaults on the same data and `nann evaluate --method dr` at two beams. Every step whose
output is in WORK is skipped, so a rerun only rewrites the section. The real logs' DR rows are in section
"Real logs" (`python -m perf.real_logs report`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nann.errors import UserError
from nann.run_dir import RunDir
from perf.real_logs import measure, tables

SECTION = "Deep Retrieval, synthetic"


def report(data: Path, run: Path, work: Path, write: bool = True) -> dict:
    from perf.run import machine_info
    from perf.sections import command_line, provenance, report as write_section

    if not RunDir(run).baselines_file.is_file():
        raise UserError(f"{run} has no {RunDir(run).baselines_file.name}: train it with `nann train` (its two-tower "
                        "baseline is part of the comparison)")
    info = machine_info()
    result = measure("synthetic", data, work, run=run)
    body = (provenance(command_line("perf.deep_retrieval"), info, cores=True) + "\n\n"
            + f"Run {run} (its config.json says how it was trained; `make demo` trains one epoch of 200,000 samples) "
              f"on data {data}; Deep Retrieval trained with `nann train --arch deep-retrieval` defaults on the same "
              "data. Recall-all@200 of every test user with a 95% bootstrap interval over users; the search table "
              "puts NANN's beam (swept over its budget) beside DR at equal items scored.\n\n"
            + tables([result]))
    write_section(SECTION, body, write)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the run's prepared data directory")
    p.add_argument("--run", required=True, type=Path, help="a trained NANN run with its two-tower baseline")
    p.add_argument("--work", required=True, type=Path, help="the DR run and the evaluations go here")
    p.add_argument("--no-write", action="store_true", help="print the section, do not write perf/RESULTS.md")
    args = p.parse_args(argv)
    try:
        report(args.data, args.run, args.work, write=not args.no_write)
    except UserError as e:
        print(f"deep_retrieval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
