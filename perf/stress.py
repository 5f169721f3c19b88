"""Stress mode for the test suite: the serving, fault and filter tests N times in a row while busy processes load
the cores, with pass/fail counts per run.

    python -m perf.stress --runs 5 --hog 2 [--tests tests/test_faults.py,...] [-- PYTEST_ARGS]

Each run is a fresh `python -m pytest` (its own --basetemp, so the session fixtures are built again) with a JUnit
report; `--hog N` starts N processes that spin on the CPU for the whole time (each ends itself when this command's
process is gone, so a killed stress run leaves none behind). Prints one line per run (passed, failed, errors,
skipped, seconds, the failing tests with the first line of their message) and the totals; exit code 0 only when
no run had a failure or an error.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ("tests/test_serving.py", "tests/test_faults.py", "tests/test_filters.py",
                 "tests/test_filters_served.py")
# spins until its parent (this command) is gone: a stress run killed by SIGKILL leaves no hog behind
HOG = ("import os\n"
       "parent = os.getppid()\n"
       "while os.getppid() == parent:\n"
       "    for _ in range(1_000_000):\n"
       "        pass\n")


def start_hogs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.DEVNULL) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped and the failing tests ("file::test: first line") of a JUnit XML report."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
        counts[kind] += 1
        if kind != "skipped":
            message = (outcome.get("message") or outcome.text or "").strip().splitlines()
            counts["failures"].append(f"{name} ({outcome.tag}): {message[0][:200] if message else ''}")
    return counts


def run_once(tests: list[str], pytest_args: list[str], work: Path, index: int) -> dict:
    report = work / f"run{index}.xml"
    started = time.monotonic()
    with open(work / f"run{index}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                               f"--basetemp={work / f'tmp{index}'}", *tests, *pytest_args], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if not report.is_file():  # pytest did not get as far as its report (a collection error, a crash)
        return {"passed": 0, "failed": 0, "errors": 1, "skipped": 0, "seconds": seconds,
                "failures": [f"pytest exited {proc.returncode} without a report: see {work / f'run{index}.log'}"]}
    return {**junit_counts(report), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="python -m perf.stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs in a row (default 5)")
    p.add_argument("--hog", type=int, default=2, help="busy processes beside the tests (default 2: one per core here)")
    p.add_argument("--tests", default=",".join(DEFAULT_TESTS), help="test files or node ids, comma-separated "
                                                                    "(default the serving, fault and filter tests)")
    p.add_argument("--work", default=None, help="keep the runs' logs and reports here (default a temporary folder)")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    tests = args.tests.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="nann-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"perf.stress: {args.runs} runs of {' '.join(tests)} beside {args.hog} busy processes on {os.cpu_count()} "
          f"cores; logs and JUnit reports in {work}", flush=True)
    hogs = start_hogs(args.hog)
    runs = []
    try:
        for i in range(1, args.runs + 1):
            load = os.getloadavg()[0]
            result = run_once(tests, pytest_args, work, i)
            runs.append(result)
            print(f"run {i}/{args.runs}: {result['passed']} passed, {result['failed']} failed, {result['errors']} "
                  f"errors, {result['skipped']} skipped in {result['seconds']:.0f} s (load average at start "
                  f"{load:.1f})", flush=True)
            for failure in result["failures"]:
                print(f"    {failure}", flush=True)
    finally:
        stop_hogs(hogs)
    failing = sum(1 for r in runs if r["failed"] or r["errors"])
    print(f"total: {len(runs)} runs, {sum(r['passed'] for r in runs)} passed, {sum(r['failed'] for r in runs)} failed, "
          f"{sum(r['errors'] for r in runs)} errors, {sum(r['skipped'] for r in runs)} skipped; "
          f"{failing} of {len(runs)} runs with a failure", flush=True)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
