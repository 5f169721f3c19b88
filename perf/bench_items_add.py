"""How `nann items add` time grows with the number of new items (a measurement, not a test).

    OMP_NUM_THREADS=1 python -m perf.bench_items_add --run RUN --data DATA [--sizes 1000,10000,100000]
        [--work DIR] [--threads 1] [--repeats 3] [--users 100]

Copies the run's serving files to WORK/base (the run itself is never touched; a graph without the hnswlib index,
built before `nann items add` existed, is rebuilt there with the run's M and efConstruction). Per size: a copy of
the base (hard links: `nann items add` replaces files, never rewrites them), synthetic new items (fresh raw ids,
the categories of random existing items, so new items of one category share their e_v as real ones would),
`trainer.add_items.add_items`, and the seconds per phase (medians of --repeats fresh copies). With --users, the
default beam search's coverage@200 of the extended catalogue on that many test users, overall and of the new items
alone; new items of one category tie, so both count category-mates as one key (a tie broken another way is no
miss). Writes the "Adding items (nann items add)" section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from nann.run_dir import RunDir
from perf.run import machine_info
from perf.sections import command_line, provenance, report

SECTION = "Adding items (nann items add)"
NOTE = ("New items of one category share one e_v, so the graph gets that many copies of each point (\"per category\"); "
        "hnswlib inserts such duplicates more slowly, which is why items/s falls as the count grows. Coverage counts "
        "tied copies as one key (module doc of perf/bench_items_add.py).")


def make_base(run: Path, data: str, base: Path, threads: int) -> str:
    """WORK/base (kept for later calls): the run's serving files and graph. Returns a note for the results when
    the graph had to be rebuilt, else ''."""
    from nann_cli.steps import run_step

    source, copy = RunDir(run), RunDir(base)
    meta = source.graph.read_meta()
    if not copy.graph.hnsw_index_file.is_file():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        for path in source.artifact_files():
            shutil.copy2(path, copy.path / path.name)
        if source.graph.hnsw_index_file.is_file():
            shutil.copytree(source.graph.path, copy.graph.path)
        else:
            run_step("graph", ["graph", "--run", base, "--data", data, "--m", meta["m"], "--ef-construction",
                               meta["ef_construction"], "--threads", threads, "--metric", meta.get("metric", "l2")])
    if source.graph.hnsw_index_file.is_file():
        return ""
    built = copy.graph.read_meta()
    return (f"; its graph predates the kept hnswlib index, so the base copy's graph was rebuilt with the same M, "
            f"efConstruction and metric ({built['metric']}; {built['build_seconds']} s)")


def write_new_items(base: Path, size: int, path: Path, seed: int = 0) -> float:
    """The CSV of `size` new items; returns the mean number of them per category used (they share its e_v)."""
    vocab = RunDir(base).vocabulary()
    cats = np.random.default_rng(seed).choice(vocab.categories[vocab.item_category], size)
    raw = int(vocab.items.max()) + 1 + np.arange(size)
    np.savetxt(path, np.stack([raw, cats], axis=1), fmt="%d", delimiter=",")
    return size / np.unique(cats).shape[0]


def coverage(run: Path, data: str, users: int, num_old: int) -> dict:
    """Tie-aware coverage@200 of the default beam on the extended catalogue (module doc)."""
    from nann.evaluate import Evaluator, MethodSpec

    ev = Evaluator(run, data, users=users)
    spec = MethodSpec("beam")
    found, exact = ev.search(spec)[0], ev.brute_top(spec.params.top_m)
    category = RunDir(run).vocabulary().item_category

    def keys(ids):
        return Counter(("new", int(category[i])) if i >= num_old else int(i) for i in ids if i >= 0)

    hit_all = hit_new = n_new = 0
    for f, e in zip(found, exact):
        kf, ke = keys(f), keys(e)
        common = kf & ke
        hit_all += sum(common.values())
        hit_new += sum(v for k, v in common.items() if isinstance(k, tuple))
        n_new += sum(v for k, v in ke.items() if isinstance(k, tuple))
    return {"coverage": hit_all / max(1, exact.size), "new_in_exact": n_new / len(found),
            "new_found": hit_new / max(1, n_new)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run with a graph (read only)")
    p.add_argument("--data", required=True, help="its prepared data (test users; the metric of a graph rebuild)")
    p.add_argument("--sizes", default="1000,10000,100000", help="new items per measurement (default 1000,10000,100000)")
    p.add_argument("--work", default="perf/results/bench_items_add",
                   help="work directory (default perf/results/bench_items_add)")
    p.add_argument("--threads", type=int, default=1,
                   help="graph insertion (and rebuild) threads (default 1: steady on a shared machine)")
    p.add_argument("--repeats", type=int, default=3,
                   help="insertions per size, each into a fresh copy; the medians are reported (default 3)")
    p.add_argument("--users", type=int, default=100,
                   help="test users for the coverage check after each insertion (default 100; 0 = skip it)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    from trainer.add_items import add_items

    run, work = Path(args.run), Path(args.work)
    info = machine_info()
    base = work / "base"
    rebuilt = make_base(run, args.data, base, args.threads)
    num_old = RunDir(base).vocabulary_size()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        target, csv = work / f"add_{size}", work / f"new_{size}.csv"
        per_category = write_new_items(base, size, csv)
        seconds = []
        for _ in range(args.repeats):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(base, target, copy_function=lambda s, d: Path(d).hardlink_to(s))
            seconds.append(add_items(target, csv, threads=args.threads)["seconds"])
        t0 = time.perf_counter()
        quality = coverage(target, args.data, args.users, num_old) if args.users else {}
        rows.append({"size": size, "per_category": per_category, **quality, "check_seconds": time.perf_counter() - t0,
                     **{k: float(np.median([s[k] for s in seconds])) for k in seconds[0]}})
        print(json.dumps(rows[-1]), file=sys.stderr)
        shutil.rmtree(target)
    command = command_line("perf.bench_items_add", argv, env=("OMP_NUM_THREADS",))
    md = "\n".join([
        provenance(command, info, cores=True), "",
        f"Run `{run}`: {num_old:,} items, graph M={RunDir(base).graph.read_meta()['m']}; "
        f"{args.threads} insertion thread(s){rebuilt}.", "",
        "| new items | per category | model load + e_v s | graph insertion s | items/s | files + CSR export s | "
        "total s | coverage@200 | new items in exact top-200 | of them found |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['size']:,} | {r['per_category']:.1f} | {r['embed']:.2f} | {r['insert']:.1f} | "
          f"{r['size'] / r['insert']:,.0f} | "
          f"{r['files_and_export']:.1f} | {r['total']:.1f} | {r.get('coverage', float('nan')):.3f} | "
          f"{r.get('new_in_exact', float('nan')):.1f} | {r.get('new_found', float('nan')):.3f} |" for r in rows],
        "", NOTE])
    report(SECTION, md, write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
