"""Does setting a Python-backend gauge from a thread while execute() makes BLS calls crash tritonserver 2.51?

    python -m perf.gauge_race [--seconds 120] [--variants unlocked,locked] [--hog 2]

The interleaving that preceded a tritonserver SIGSEGV once in CI: the `retrieve` model's blocked-set watcher thread
set its gauges while an execute() was in its BLS calls to `scorer` (model_repository/retrieve/model.py now holds a
lock across both). This reproduces that interleaving as fast as it can happen, in a repository of two Python models
(no NANN code): `caller`, whose thread sets two gauges back to back (unlocked: at any time; locked: never during an
execute, as `retrieve` does) while its execute() makes `--calls` BLS calls per request to `callee`, driven by
`--clients` client threads beside `--hog` busy processes (perf.stress's). Reports the BLS calls, the gauge sets and
how many of them fell inside an execute, and whether the server survived (exit code, `Signal (11)` in its log).
Writes the section "Gauge updates during BLS calls" of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

SECTION = "Gauge updates during BLS calls"

CALLER = '''import threading

import numpy as np
import triton_python_backend_utils as pb_utils

LOCKED = {locked}


class TritonPythonModel:
    """Sets two gauges from a thread, back to back, while execute() makes BLS calls to `callee`."""

    def initialize(self, args):
        labels = {{"model": args["model_name"], "version": args["model_version"]}}
        self.family = pb_utils.MetricFamily(name="race_gauge", description="set by a thread",
                                            kind=pb_utils.MetricFamily.GAUGE)
        self.gauges = [self.family.Metric(labels={{**labels, "which": w}}) for w in ("a", "b")]
        self.talking = threading.Lock()
        self.executing = 0
        self.sets = self.sets_during = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.set_gauges, daemon=True)
        self.thread.start()

    def set_gauges(self):
        # a gauge set holds the GIL for its round trip to the server: the pause lets execute() reach its BLS calls
        while not self.stop.wait({pause_s}):
            if LOCKED:
                self.talking.acquire()
            try:
                for gauge in self.gauges:
                    gauge.set(float(self.sets))
                    self.sets += 1
                    self.sets_during += self.executing > 0
            finally:
                if LOCKED:
                    self.talking.release()

    def finalize(self):
        self.stop.set()
        self.thread.join(5)

    def execute(self, requests):
        if LOCKED:
            with self.talking:
                return self._execute(requests)
        return self._execute(requests)

    def _execute(self, requests):
        self.executing += 1
        try:
            responses = []
            for request in requests:
                calls = int(pb_utils.get_input_tensor_by_name(request, "calls").as_numpy()[0])
                x = pb_utils.Tensor("x", np.arange(4096, dtype=np.int64))
                for _ in range(calls):
                    reply = pb_utils.InferenceRequest(model_name="callee", requested_output_names=["y"],
                                                      inputs=[x]).exec()
                    if reply.has_error():
                        raise pb_utils.TritonModelException(reply.error().message())
                counts = np.array([self.sets, self.sets_during], dtype=np.int64)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("counts", counts)]))
            return responses
        finally:
            self.executing -= 1
'''

CALLEE = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''

CONFIGS = {
    "caller": 'input [ { name: "calls" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
              'output [ { name: "counts" data_type: TYPE_INT64 dims: [ 2 ] } ]\n',
    "callee": 'input [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
              'output [ { name: "y" data_type: TYPE_INT64 dims: [ -1 ] } ]\n',
}


def write_repository(repo: Path, locked: bool, pause_s: float) -> Path:
    for name, source in (("caller", CALLER.format(locked=locked, pause_s=pause_s)), ("callee", CALLEE)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "1" / "model.py").write_text(source)
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{CONFIGS[name]}'
            f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{sys.prefix}" }} }}\n')
    return repo


def race(repo: Path, seconds: float, clients: int, calls: int) -> dict:
    """Serve `repo`, drive `caller` for `seconds`; the counts and whether tritonserver survived."""
    import tritonclient.grpc as grpcclient

    from nann.serving.server import TritonServer

    server = TritonServer(repo, log_path=repo.parent / f"{repo.name}.log").start()
    done, errors, last = [0] * clients, [], [np.zeros(2, np.int64)]
    deadline = time.monotonic() + seconds

    def client(t: int) -> None:
        n = np.array([calls], np.int32)
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            while time.monotonic() < deadline and server.running():
                inputs = [grpcclient.InferInput("calls", [1], "INT32")]
                inputs[0].set_data_from_numpy(n)
                try:
                    last[0] = np.maximum(last[0], c.infer("caller", inputs, client_timeout=60).as_numpy("counts"))
                    done[t] += 1
                except Exception as e:  # noqa: BLE001 - a crashed server fails every call; the first few are kept
                    errors.append(str(e).splitlines()[0][:160])
                    time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    alive = server.running()
    code = None if alive else server._proc.returncode
    server.stop(10)
    log = server.log_path.read_text(errors="replace")
    return {"requests": sum(done), "bls_calls": sum(done) * calls, "gauge_sets": int(last[0][0]),
            "sets_during_execute": int(last[0][1]), "alive": alive, "exit_code": code,
            "segfault_in_log": "Signal (11)" in log, "errors": len(errors), "first_errors": errors[:3]}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from perf.run import machine_info
    from perf.sections import command_line, provenance, report
    from perf.stress import start_hogs, stop_hogs

    p = argparse.ArgumentParser(prog="python -m perf.gauge_race", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="seconds per variant (default 120)")
    p.add_argument("--variants", default="unlocked,locked", help="unlocked, locked or both (default both)")
    p.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--calls", type=int, default=20, help="BLS calls per request (default 20)")
    p.add_argument("--pause-us", type=float, default=200.0,
                   help="pause of the gauge thread between its pairs of sets, microseconds (default 200)")
    p.add_argument("--hog", type=int, default=0, help="busy processes beside it (default 0)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    results = {}
    hogs = start_hogs(args.hog)
    try:
        with tempfile.TemporaryDirectory(prefix="nann-gauge-race-") as work:
            for variant in args.variants.split(","):
                repo = write_repository(Path(work) / variant, locked=variant == "locked", pause_s=args.pause_us / 1e6)
                results[variant] = race(repo, args.seconds, args.clients, args.calls)
                print(variant, results[variant], file=sys.stderr)
    finally:
        stop_hogs(hogs)
    lines = [provenance(command_line("perf.gauge_race", argv), info, cores=True), "",
             f"Two Python models on the bundled tritonserver: `caller`'s thread sets two gauges, pausing "
             f"{args.pause_us:g} µs after each pair, while its execute() makes {args.calls} BLS calls per request to "
             f"`callee` ({args.clients} clients, {args.seconds:g} s per variant, beside {args.hog} busy processes); "
             "`locked` holds one lock across the gauge sets and execute(), as model_repository/retrieve/model.py does.",
             "",
             "| variant | requests | BLS calls | gauge sets | of them during an execute | tritonserver | "
             "failed requests |",
             "|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        state = "alive" if r["alive"] else f"**exited (code {r['exit_code']})**"
        state += ", SIGSEGV in its log" if r["segfault_in_log"] else ""
        lines.append(f"| {variant} | {r['requests']:,} | {r['bls_calls']:,} | {r['gauge_sets']:,} | "
                     f"{r['sets_during_execute']:,} | {state} | {r['errors']:,} |")
    report(SECTION, "\n".join(lines), write=not args.no_results_md)
    return 0 if all(r["alive"] and not r["segfault_in_log"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
