"""Peak memory of `nann data prepare` on Parquet and on a headerless `::` file (MovieLens 1M's layout) beside the
UserBehavior CSV of the same rows (a measurement, not a test).

    python -m perf.bench_prepare [--rows 10000000] [--work DIR] [--no-results-md]

Writes the same random interactions (rows / 100 users, 1M items, 5000 categories, timestamps over 9 days) as a
Parquet file (row groups of 1M rows), as a headerless UserBehavior CSV (read by its fast path, and by column
position through pyarrow's CSV reader) and as the same text with `::` for the commas (by position), then runs `nann
data prepare` on each in a fresh process and prints, per input, the file size, the process's peak RSS (VmHWM)
after imports and at the end, and the wall time. Writes the "Data prepare: formats and
memory" section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from perf.sections import command_line, provenance, report

SECTION = "Data prepare: formats and memory"
LABELS = {"parquet": "Parquet (`--input --columns ...`)", "userbehavior_csv": "UserBehavior CSV (`--csv`)",
          "comma_by_position": "the same CSV by position (`--input --columns user=1,...`: pyarrow's reader)",
          "double_colon": "`::` for the commas, by position (delimiter rewritten as it streams)"}
BY_POSITION = "user=1,item=2,category=3,behavior=4,time=5"
CHUNK_ROWS = 1_000_000
START = 1_511_568_000  # 2017-11-25 UTC
# peak RSS from /proc (VmHWM): getrusage's ru_maxrss would carry over the parent's peak across exec
CHILD = """
import sys
def peak_kib():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
import numpy, pyarrow, pyarrow.parquet, pyarrow.csv
from nann_cli.main import main
base = peak_kib()
rc = main(sys.argv[1:])
print("RSS_KB", base, peak_kib(), rc)
"""


def write_inputs(rows: int, parquet_path: str, csv_path: str, seed: int = 0) -> None:
    """The same rows as Parquet (named columns) and as a UserBehavior CSV, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    users, items = max(rows // 100, 3), 1_000_000
    item_category = rng.integers(0, 5000, items)
    behaviors = np.array(["pv", "buy", "cart", "fav"])
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("category_id", pa.int64()),
                        ("behavior_type", pa.string()), ("timestamp", pa.int64())])
    csv_options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    with pq.ParquetWriter(parquet_path, schema) as pw, pa_csv.CSVWriter(csv_path, schema, write_options=csv_options) as cw:
        for lo in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - lo)
            item = rng.integers(0, items, n)
            table = pa.table([rng.integers(0, users, n) * 7 + 1, item * 13 + 5, item_category[item],
                              behaviors[rng.choice(4, n, p=[0.89, 0.025, 0.055, 0.03])],
                              START + rng.integers(0, 9 * 86_400, n)], schema=schema)
            pw.write_table(table, row_group_size=CHUNK_ROWS)
            cw.write_table(table)


def write_double_colon(csv_path: str, path: str) -> None:
    """The UserBehavior CSV with '::' for every comma, block by block (no field holds a comma)."""
    with open(csv_path, "rb") as src, open(path, "wb") as dst:
        while block := src.read(16 << 20):
            dst.write(block.replace(b",", b"::"))


def measure(input_args: list[str], out: str) -> dict:
    """Run `nann data prepare` in a fresh process; its peak RSS (MiB) after imports and at the end, wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "data", "prepare", *input_args, "--out", out],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_KB")]
    if proc.returncode or not line or line[0].split()[3] != "0":
        sys.exit(f"prepare failed ({input_args}):\n{proc.stderr[-3000:]}")
    _, base, peak, _ = line[0].split()
    return {"rss_after_imports_mib": int(base) / 1024, "peak_rss_mib": int(peak) / 1024, "wall_s": wall}


def markdown(res: dict, command: str, info: dict) -> str:
    """The section: per input format, file size, peak RSS (and above the imports, per row), wall time."""
    rows = res["rows"]
    above = {name: (r["peak_rss_mib"] - r["rss_after_imports_mib"]) * 2**20 / rows for name, r in res["runs"].items()}
    pq_, csv = res["runs"]["parquet"], res["runs"]["userbehavior_csv"]
    comma, dat = res["runs"]["comma_by_position"], res["runs"]["double_colon"]
    return "\n".join([
        provenance(command, info, cores=True), "",
        f"The same {rows:,} random interactions ({max(rows // 100, 3):,} users, 1M items, 5,000 categories, 9 days) "
        f"as Parquet (row groups of {CHUNK_ROWS:,} rows), as a headerless UserBehavior CSV (read twice: its fast path, "
        "and by column position through pyarrow) and as that text with `::` for the commas; `nann data prepare` "
        "on each in a fresh process; peak RSS is the process's VmHWM (after the imports, and over the whole run).", "",
        "| input | file MiB | RSS after imports MiB | peak RSS MiB | peak above imports, bytes/row | wall s |",
        "|---|---|---|---|---|---|",
        *[f"| {LABELS.get(name, name)} | {r['file_mib']:,.1f} | {r['rss_after_imports_mib']:,.0f} | "
          f"{r['peak_rss_mib']:,.0f} | {above[name]:,.0f} | {r['wall_s']:,.1f} |" for name, r in res["runs"].items()],
        "", f"From a file {csv['file_mib'] / pq_['file_mib']:.1f}× smaller, Parquet peaks at "
        f"{pq_['peak_rss_mib'] / 1024:.2f} GiB vs {csv['peak_rss_mib'] / 1024:.2f} GiB for the CSV "
        f"({above['parquet']:,.0f} vs {above['userbehavior_csv']:,.0f} bytes a row above the imports) and takes "
        f"{pq_['wall_s'] / csv['wall_s']:.2f}× the CSV's wall time. The `::` file, rewritten to one delimiter byte "
        f"as it streams, peaks at {dat['peak_rss_mib'] / 1024:.2f} GiB vs {comma['peak_rss_mib'] / 1024:.2f} GiB "
        f"for the same CSV by position ({above['double_colon']:,.0f} vs {above['comma_by_position']:,.0f} bytes a "
        f"row) and takes {dat['wall_s'] / comma['wall_s']:.2f}× its wall time."])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="interactions to write (default 10,000,000)")
    ap.add_argument("--work", default=None, help="directory for the files (default: a temporary one, removed)")
    ap.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = ap.parse_args(argv)
    from perf.run import machine_info

    info = machine_info()
    work = args.work or tempfile.mkdtemp(prefix="bench_prepare_")
    os.makedirs(work, exist_ok=True)
    try:
        parquet_path, csv_path = os.path.join(work, "interactions.parquet"), os.path.join(work, "UserBehavior.csv")
        dat_path = os.path.join(work, "interactions.dat")
        t0 = time.perf_counter()
        write_inputs(args.rows, parquet_path, csv_path)
        write_double_colon(csv_path, dat_path)
        print(f"wrote {args.rows:,} rows three times in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        runs = {"parquet": (parquet_path, ["--input", parquet_path, "--columns",
                                           "user=user_id,item=item_id,category=category_id,behavior=behavior_type,"
                                           "time=timestamp"]),
                "userbehavior_csv": (csv_path, ["--csv", csv_path]),
                "comma_by_position": (csv_path, ["--input", csv_path, "--columns", BY_POSITION]),
                "double_colon": (dat_path, ["--input", dat_path, "--columns", BY_POSITION])}
        results = {}
        for name, (path, input_args) in runs.items():
            r = measure(input_args, os.path.join(work, f"data_{name}"))
            r["file_mib"] = os.path.getsize(path) / 2**20
            results[name] = r
            print(f"{name:18s} file {r['file_mib']:7.1f} MiB  peak RSS {r['peak_rss_mib']:7.1f} MiB "
                  f"(after imports {r['rss_after_imports_mib']:.0f})  {r['wall_s']:.1f}s")
        print(json.dumps({"rows": args.rows, **results}, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(SECTION, markdown({"rows": args.rows, "runs": results}, command_line("perf.bench_prepare", argv), info),
           write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
