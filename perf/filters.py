"""Cost of eligibility filtering: items scored per query and served throughput with part of the catalogue blocked.

    python -m perf.filters --run RUN --data DATA --work DIR [--users 500] [--fractions 0,0.1,0.5]
                           [--concurrency 8] [--seconds 20] [--repeats 2]

The run is exported into WORK/repo and served once (loopback, ONNX Runtime scorer). Rows: the unfiltered server (no
blocked set), then blocked sets of each fraction of the catalogue (random items, seeded; `nann.serving.filters.
write_blocked`, what `nann items block` writes), and one blocked item (the filtered walk with next to nothing
filtered). For each row, on the same test users:

* items scored per query, coverage@k against brute force over the eligible items and recall@k — the engine replayed
  against every item's score, computed once (`nann.replay.ScoreCache`, kept as WORK/scores_test<users>.npy): exact,
  the served walk is the same code;
* served requests/s and latency: the client SDK at fixed concurrency (`perf.soak.soak`, no retries) once the server
  reports the new set's version on its metrics; rows are measured `--repeats` times in turn (A B C … A B C …) and
  the median is reported, so a machine whose load drifts affects every row alike.

Writes WORK/filters.json and the "Eligibility filters" section of perf/RESULTS.md (`perf.sections`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Eligibility filters"


def blocked_sets(num_items: int, fractions: list[float], seed: int) -> list[tuple[str, np.ndarray | None]]:
    """(label, dense ids) per row: None = no blocked set at all (the unfiltered server)."""
    rng = np.random.default_rng(seed)
    rows = [("1 item", rng.choice(num_items, 1))] + [
        (f"{f:.0%}", rng.choice(num_items, int(round(f * num_items)), replace=False)) for f in fractions]
    return [("unfiltered", None)] + sorted(rows, key=lambda row: row[1].size)


def wait_for_version(metrics_url: str, version: int, timeout: float = 60.0) -> None:
    from nann_cli.query import metric_value

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(metrics_url, timeout=10) as r:
            if metric_value(r.read().decode(), "nann_blocked_version") == version:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not pick up blocked set version {version} within {timeout:.0f} s")


def measure(args) -> dict:
    from nann.data.prepared import PreparedData
    from nann.engine.graph import HnswGraph
    from nann.engine.search import DEFAULT_SEARCH
    from nann.serving.export import export_repository
    from nann.serving.filters import write_blocked
    from nann.serving.server import TritonServer
    from nann.replay import ScoreCache
    from nann.run_dir import RunDir
    from perf.soak import soak

    work = Path(args.work)
    repo = work / "repo"
    if not (repo / "nann").is_dir():
        export_repository(Path(args.run), repo, scorer="onnxruntime")
    (repo / "blocked.json").unlink(missing_ok=True)
    data = PreparedData.load(args.data)
    cache = ScoreCache.build(Path(args.run), data.test, args.users, work / f"scores_test{args.users}.npy",
                             DEFAULT_SEARCH.top_m)
    graph = HnswGraph.load(Path(args.run) / "graph")
    search = RunDir(args.run).search_defaults()
    histories = [data.vocab.dense_to_raw(h).tolist() for h in cache.histories]
    rows = [{"label": label, "blocked": 0 if ids is None else int(ids.size), "served": [],
             "ids": None if ids is None else data.vocab.dense_to_raw(ids),
             **(cache if ids is None else cache.blocking(ids)).replay(graph, search).summary(cache.num_items)}
            for label, ids in blocked_sets(cache.num_items, args.fractions, args.seed)]
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        soak(server.grpc_url, histories, args.warmup, args.concurrency, args.warmup)  # compile, fill caches: not kept
        for rep in range(args.repeats):
            for row in rows:
                if row["ids"] is None:
                    (repo / "blocked.json").unlink(missing_ok=True)   # the watcher then holds an empty set
                    version = 0
                else:
                    version = write_blocked(repo, row["ids"])["version"]
                wait_for_version(metrics_url, version)
                report = soak(server.grpc_url, histories, args.seconds, args.concurrency, args.warmup, server.pid)
                if report["requests_failed"]:
                    raise RuntimeError(f"{row['label']}: failed requests: {report['first_failures']}")
                row["served"].append(report)
                print(f"[filters] pass {rep + 1} {row['label']}: {report['qps_after_warmup']} req/s", file=sys.stderr)
    for row in rows:
        served = row.pop("served")
        row.pop("ids")
        row["qps"] = statistics.median(r["qps_after_warmup"] for r in served)
        row["qps_runs"] = [r["qps_after_warmup"] for r in served]
        row["p50_ms"] = statistics.median(r["latency"]["p50_ms"] for r in served)
        row["p99_ms"] = statistics.median(r["latency"]["p99_ms"] for r in served)
    return {"rows": rows, "users": len(histories), "num_items": int(data.vocab.num_items),
            "search": asdict(search), "concurrency": args.concurrency, "seconds": args.seconds,
            "repeats": args.repeats}


def markdown(res: dict, info: dict, command: str) -> str:
    from nann.engine.search import FILTER_SLACK
    from perf.sections import provenance

    base, p = res["rows"][0], res["search"]
    lines = [provenance(command, info, cores=True), "",
             f"{res['num_items']:,} items, {res['users']} test users, the served defaults (ef {list(p['ef'])}, rounds "
             f"{list(p['rounds'])}, frontier {p['frontier']}, seeds {p['seeds']}, k {p['top_m']}); shared machine: "
             "compare rows, not absolute rates.", "",
             "Blocked items are random (seeded). Items scored, coverage (against brute force over the *eligible* "
             "items) and recall are exact, offline; requests/s and latency are served (client SDK, concurrency "
             f"{res['concurrency']}, {res['seconds']:g} s per measurement, median of {res['repeats']} passes taken "
             "in turn).", "",
             "| blocked | items blocked | items scored / query | vs unfiltered | scoring rounds | coverage@200 | "
             "recall@200 | served req/s | vs unfiltered | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['label']} | {r['blocked']:,} | {r['items_scored']:,.0f} ({r['scored_fraction']:.2%}) | "
                     f"{r['items_scored'] / base['items_scored']:.2f}x | {r['rounds']:.1f} | {r['coverage']:.3f} | "
                     f"{r['recall_retrieval']:.3f} | {r['qps']:.1f} ({', '.join(f'{q:.1f}' for q in r['qps_runs'])}) | "
                     f"{r['qps'] / base['qps']:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += ["", f"With anything blocked every request keeps up to {FILTER_SLACK}× ef list entries so that ef of them "
              "can be eligible, and walks on until they are: more items scored and more scoring rounds (each round is "
              "one scorer call per batch). An empty set (0%) is the "
              "unfiltered walk itself (no filter is built): the difference between those two rows is the noise of the "
              "measurement. Recall@200 falls with blocking because the held-out target is blocked too in that share of "
              "users; coverage is against the eligible items' brute force."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from perf.run import machine_info
    from perf.sections import command_line, update_section

    p = argparse.ArgumentParser(prog="python -m perf.filters", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run with a graph")
    p.add_argument("--data", required=True, help="its prepared data (test users)")
    p.add_argument("--work", required=True, help="directory for the exported repository, the log and filters.json")
    p.add_argument("--users", type=int, default=500, help="test users (default 500)")
    p.add_argument("--fractions", default="0,0.1,0.5", help="blocked shares of the catalogue (default 0,0.1,0.5)")
    p.add_argument("--concurrency", type=int, default=8, help="client requests in flight (default 8)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row and pass (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each measurement (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="passes over all rows (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the blocked items (default 0)")
    p.add_argument("--no-results-md", action="store_true", help="do not update perf/RESULTS.md (default: update it)")
    args = p.parse_args(argv)
    args.fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    command = command_line("perf.filters", argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    info = machine_info()
    res = measure(args)
    (Path(args.work) / "filters.json").write_text(json.dumps({"machine": info, "command": command, **res}, indent=1))
    md = markdown(res, info, command)
    print(md)
    if not args.no_results_md:
        update_section(ROOT / "perf" / "RESULTS.md", SECTION, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
