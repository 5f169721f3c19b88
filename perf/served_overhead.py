"""Where a served request's time goes at concurrency 1, beside the offline engine answering the same users.

    python -m perf.served_overhead --run RUN --data DATA [--users 100] [--repeats 3] [--no-results-md]

Exports RUN (the scorer inside `retrieve`, as `nann export` does) into a throwaway repository; each repeat starts a
fresh tritonserver (where a server lands in memory and on the cores differs from start to start: the repeats sample
that too) and times, in alternating blocks on the same test users (`nann.latency`):

- served: `NannClient.retrieve` over gRPC, with Triton's statistics of `nann` and `retrieve` read before and after
  each timed block, so that they cover exactly the timed requests;
- offline: the same request through `OfflineRetriever`'s services in this process, its encoding (`request`) and its
  walk (`retrieve`) timed apart: what `retrieve`'s `execute` runs for one request, without a server;
- nothing: a gRPC call that does no work (`is_server_live`), the transport's floor.

Means per request (Triton's statistics are sums), median over the repeats [spread]. The served path's parts: the
client and gRPC (served end to end minus `nann`'s time in the server), Triton around `retrieve` (`nann`'s time minus
`retrieve`'s queue and compute), `retrieve`'s queue, inputs and outputs, and `retrieve`'s execute (the stub's
hand-off, reading the request, encoding, the walk, the response), set against the offline engine's encoding and walk.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

NAME = "Served overhead at concurrency 1"
ENSEMBLE, RETRIEVE = "nann", "retrieve"
K = 200


class StatsWindow:
    """Triton's statistics summed over the blocks this window was entered around (`block`, a context)."""

    def __init__(self, http_url: str):
        self.http_url = http_url
        self.total: dict[str, dict[str, int]] = {}

    @contextmanager
    def block(self):
        from perf.load import model_stats

        before = model_stats(self.http_url)
        yield
        after = model_stats(self.http_url)
        for model in (ENSEMBLE, RETRIEVE):
            acc = self.total.setdefault(model, {})
            for key, value in after[model].items():
                acc[key] = acc.get(key, 0) + value - before[model].get(key, 0)

    def mean_ms(self, model: str, key: str) -> float:
        """Mean of one statistic per successful request of `model`, in ms."""
        counts = self.total[model]["success"]
        return self.total[model][key] / 1e6 / counts if counts else float("nan")


class PartTimes:
    """Seconds of each part of a path's queries, kept only inside `block` (the timed queries)."""

    def __init__(self, *parts: str):
        self.kept: dict[str, list[float]] = {p: [] for p in parts}
        self._recording = False

    def record(self, part: str, seconds: float) -> None:
        if self._recording:
            self.kept[part].append(seconds)

    @contextmanager
    def block(self):
        self._recording = True
        try:
            yield
        finally:
            self._recording = False


def measure_once(repo: Path, run: Path, histories: list[np.ndarray]) -> dict:
    """One repeat on a fresh server: each path's mean latency (ms), its parts and Triton's per-model means."""
    import tritonclient.grpc as grpcclient
    from nann_client import NannClient

    from nann.latency import alternating_latency
    from nann.serving.requests import NO_FILTERS, parse_search
    from nann.serving.retrieval import OfflineRetriever
    from nann.serving.server import TritonServer

    offline = OfflineRetriever(run)
    params = parse_search(offline.limits, k=K)
    service, parts = offline.service, PartTimes("encode", "walk")

    def offline_answer(history):  # OfflineRetriever.retrieve of one request, its two steps timed
        t0 = time.perf_counter()
        request = service.request(params, history, NO_FILTERS)
        t1 = time.perf_counter()
        answer = service.retrieve([request], offline.scorer.scores_for, offline.blocked)[0]
        parts.record("encode", t1 - t0)
        parts.record("walk", time.perf_counter() - t1)
        return answer.item_ids

    with TritonServer(repo) as server, NannClient(server.grpc_url, timeout=60) as client, \
            grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        stats = StatsWindow(server.http_url)
        measured = alternating_latency(
            {"served": lambda h: client.retrieve(h, k=K).item_ids, "offline": offline_answer,
             "nothing": lambda h: grpc.is_server_live()},
            histories, around={"served": stats.block, "offline": parts.block})
    ms = {name: 1e3 * statistics.mean(seconds) for name, (seconds, _) in measured.items()}
    served, off = measured["served"], measured["offline"]
    return {
        "served_ms": ms["served"], "offline_ms": ms["offline"], "nothing_ms": ms["nothing"],
        "served_median_ms": 1e3 * statistics.median(served[0]), "offline_median_ms": 1e3 * statistics.median(off[0]),
        "encode_ms": 1e3 * statistics.mean(parts.kept["encode"]), "walk_ms": 1e3 * statistics.mean(parts.kept["walk"]),
        "nann_in_server_ms": stats.mean_ms(ENSEMBLE, "success_ns"),
        "retrieve_in_server_ms": stats.mean_ms(RETRIEVE, "success_ns"),
        "retrieve_execute_ms": stats.mean_ms(RETRIEVE, "compute_infer_ns"),
        "served_requests": stats.total[ENSEMBLE]["success"], "timed": len(served[0]),
        "same_answers": float(np.mean([np.array_equal(a, b) for a, b in zip(served[1], off[1])])),
    }


# (label, how it is derived from one repeat's measurement), in the order of the table; "· " marks a part of the
# row above
ROWS = (
    ("served end to end (NannClient, gRPC)", lambda m: m["served_ms"]),
    ("· client and gRPC: served − `nann`'s time in the server", lambda m: m["served_ms"] - m["nann_in_server_ms"]),
    ("· Triton around `retrieve`: `nann`'s time − `retrieve`'s",
     lambda m: m["nann_in_server_ms"] - m["retrieve_in_server_ms"]),
    ("· `retrieve`'s queue, inputs and outputs", lambda m: m["retrieve_in_server_ms"] - m["retrieve_execute_ms"]),
    ("· `retrieve`'s execute (stub hand-off, request, encoding, walk, response)", lambda m: m["retrieve_execute_ms"]),
    ("offline engine (the same request in this process)", lambda m: m["offline_ms"]),
    ("· encoding (`RetrieveService.request`)", lambda m: m["encode_ms"]),
    ("· walk (`RetrieveService.retrieve`)", lambda m: m["walk_ms"]),
    ("`retrieve`'s execute − offline engine", lambda m: m["retrieve_execute_ms"] - m["offline_ms"]),
    ("served − offline", lambda m: m["served_ms"] - m["offline_ms"]),
    ("a gRPC call doing nothing (`is_server_live`)", lambda m: m["nothing_ms"]),
)


def summary(runs: list[dict]) -> dict:
    """Each row's median over the repeats with its spread, and the latency ratios."""
    def spread(values):
        return statistics.median(values), min(values), max(values)

    return {"rows": [(label, *spread([f(m) for m in runs])) for label, f in ROWS],
            "ratio_of_means": spread([m["served_ms"] / m["offline_ms"] for m in runs]),
            "ratio_of_medians": spread([m["served_median_ms"] / m["offline_median_ms"] for m in runs])}


def markdown(runs: list[dict], users: int, command: str, info: dict) -> str:
    from perf.sections import provenance

    s = summary(runs)
    lines = [provenance(command, info, cores=True), "",
             f"{len(runs)} repeats, a fresh server each; {users} test users per repeat in alternating blocks, k={K}; "
             f"means per request in ms, median over the repeats [spread]; served answers equal to offline: "
             f"{min(m['same_answers'] for m in runs):.0%} of the users in the worst repeat.", "",
             "| part | ms |", "|---|---|"]
    lines += [f"| {label} | {med:.2f} [{lo:.2f}–{hi:.2f}] |" for label, med, lo, hi in s["rows"]]
    (m, lo, hi), (mm, mlo, mhi) = s["ratio_of_means"], s["ratio_of_medians"]
    lines += ["", f"Served / offline: mean latency **{m:.2f}** [{lo:.2f}–{hi:.2f}], median latency **{mm:.2f}** "
                  f"[{mlo:.2f}–{mhi:.2f}]."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from nann.serving.export import export_repository
    from perf.compare import raw_test_histories
    from perf.run import machine_info
    from perf.sections import command_line, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="trained run directory with a graph")
    p.add_argument("--data", type=Path, required=True, help="its prepared data (the test users' histories)")
    p.add_argument("--users", type=int, default=100, help="test users per repeat (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="repeats, a fresh server each (default 3)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    if args.users < 1 or args.repeats < 1:
        p.error("--users and --repeats must be at least 1")
    info = machine_info()
    command = command_line("perf.served_overhead", argv)
    histories = raw_test_histories(args.data, args.users)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        export_repository(args.run, repo, scorer="onnxruntime")
        runs = []
        for i in range(args.repeats):
            runs.append(measure_once(repo, args.run, histories))
            print(f"[served_overhead] repeat {i + 1}/{args.repeats}: served {runs[-1]['served_ms']:.2f} ms, "
                  f"offline {runs[-1]['offline_ms']:.2f} ms", file=sys.stderr, flush=True)
    report(NAME, markdown(runs, len(histories), command, info), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
