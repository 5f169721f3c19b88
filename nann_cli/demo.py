"""`nann demo`: the whole pipeline on embedded synthetic data, each step through the public CLI.

data synth → data prepare → train → graph → evaluate → export → serve → query (client SDK) → stop.
Steps whose outputs already exist are skipped, so a second run is quick; delete the work dir to redo all.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nann.run_dir import RunDir
from nann_cli.steps import run_step

SYNTH = ["--users", "20000", "--items", "100000", "--categories", "500", "--seed", "0"]
PREPARE = ["--test-users", "1000", "--val-users", "500"]
TRAIN = ["--arch", "attention", "--epochs", "1", "--negatives", "20", "--max-samples", "200000", "--eval-users", "200",
         "--batch-size", "256"]
EVAL_USERS = "300"
QUERY_USERS = 5
LATENCY_QUERIES = 30


def _serve_and_query(repo: Path, data: Path, run: Path) -> None:
    from nann_client import NannClient

    from nann.data.prepared import PreparedData
    from nann.latency import alternating_latency
    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever
    from nann.serving.server import TritonServer

    prepared = PreparedData.load(str(data))
    test = prepared.test
    histories = [prepared.vocab.dense_to_raw(test.history(i)) for i in range(min(len(test), LATENCY_QUERIES))]
    offline = OfflineRetriever(run)
    params = parse_search(offline.limits, k=10)
    print("== serve: starting tritonserver", file=sys.stderr)
    with TritonServer(repo) as server, NannClient(server.grpc_url) as client:
        print(f"   serving at {server.grpc_url}; info: {client.info()}", file=sys.stderr)
        for i, h in enumerate(histories[:QUERY_USERS]):
            result = client.retrieve(h, k=10)
            print(f"user {test.user_ids[i]} (history of {len(h)} items, last {h[-3:].tolist()}): "
                  f"top-5 {result.item_ids[:5].tolist()} scores {np.round(result.scores[:5].astype(float), 3).tolist()}")
        measured = alternating_latency({"served": lambda h: client.retrieve(h, k=10),
                                        "offline": lambda h: offline.retrieve([h], [params])}, histories)
    served, off = (statistics.median(measured[name][0]) for name in ("served", "offline"))
    print(f"served latency (concurrency 1, median of {len(histories)}, in alternating blocks): {served * 1000:.1f} ms; "
          f"offline engine {off * 1000:.1f} ms; ratio {served / off:.2f}")


def main(args) -> int:
    work = Path(args.workdir).resolve()
    data, run, repo = work / "data", work / "run", work / "repo"
    t0 = time.perf_counter()
    run_step("synthesise data", ["data", "synth", "--out", str(work / "raw"), *SYNTH], work / "raw" / "UserBehavior.csv")
    run_step("prepare", ["data", "prepare", "--csv", str(work / "raw" / "UserBehavior.csv"), "--out", str(data), *PREPARE],
          data / "stats.json")
    run_step("train", ["train", "--data", str(data), "--run", str(run), *TRAIN], RunDir(run).scorer_file)
    run_step("graph", ["graph", "--run", str(run)], RunDir(run).graph.meta_file)
    run_step("evaluate", ["evaluate", "--run", str(run), "--data", str(data), "--users", EVAL_USERS,
                       "--json", str(work / "evaluate.json")])
    if not (repo / "nann" / "config.pbtxt").exists():
        run_step("export", ["export", "--run", str(run), "--repo", str(repo)])
    _serve_and_query(repo, data, run)
    metrics = json.loads((work / "evaluate.json").read_text())
    print(f"demo done in {time.perf_counter() - t0:.0f} s: recall-all@200 {metrics['recall_all']:.3f}, "
          f"coverage@200 {metrics['coverage']:.3f}, scored {metrics['scored_fraction'] * 100:.2f}% of items")
    return 0
