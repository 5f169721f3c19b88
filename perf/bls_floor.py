"""The floor of one BLS round trip on this machine: a Python-backend model calling another that does no work.

    python -m perf.bls_floor [--calls 32] [--repeats 200]

Every scoring round of `retrieve` is one BLS call to `scorer`; this measures what such a call costs with nothing to
compute, so the served path's overhead per round can be read against it. A throwaway model repository holds
`echo` (a Python model returning a float32 zero per candidate id it gets) and `caller` (per request: `calls` BLS
calls to `echo`, each sending `candidates` int64 ids, timed inside the stub). Reports the median time per call over
`repeats` requests for several candidate counts, and the end-to-end gRPC latency of a request with no BLS call,
all through a real tritonserver. Writes its section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "BLS round trip floor"

ECHO = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "cand_ids").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", np.zeros(ids.shape, np.float32))]))
        return out
'''

CALLER = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            calls = int(pb_utils.get_input_tensor_by_name(request, "calls").as_numpy().reshape(-1)[0])
            n = int(pb_utils.get_input_tensor_by_name(request, "candidates").as_numpy().reshape(-1)[0])
            k = int(pb_utils.get_input_tensor_by_name(request, "tensors").as_numpy().reshape(-1)[0])
            inputs = [pb_utils.Tensor("cand_ids", np.arange(n, dtype=np.int64))]
            inputs += [pb_utils.Tensor(f"s{i}", np.zeros((1, 50, 64), np.float32)) for i in range(k)]
            t0 = time.perf_counter()
            for _ in range(calls):
                reply = pb_utils.InferenceRequest(model_name="echo", requested_output_names=["scores"],
                                                  inputs=inputs).exec()
                if reply.has_error():
                    raise RuntimeError(reply.error().message())
                pb_utils.get_output_tensor_by_name(reply, "scores").as_numpy()
            seconds = np.array([time.perf_counter() - t0], np.float64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("seconds", seconds)]))
        return out
'''

CONFIGS = {
    "echo": '''name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "cand_ids" data_type: TYPE_INT64 dims: [ -1 ] }$state_inputs ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: "$env_path" } }
''',
    "caller": '''name: "caller"
backend: "python"
max_batch_size: 0
input [ { name: "calls" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "candidates" data_type: TYPE_INT32 dims: [ 1 ] },
        { name: "tensors" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "seconds" data_type: TYPE_FP64 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: "$env_path" } }
''',
}


def write_repository(root: Path, max_tensors: int) -> Path:
    """`echo` accepts up to `max_tensors` extra float32 inputs s0, s1, ... (optional), as `scorer` takes user state."""
    repo = root / "repo"
    state_inputs = "".join(f',\n  {{ name: "s{i}" data_type: TYPE_FP32 dims: [ -1, -1, -1 ] optional: true }}'
                           for i in range(max_tensors))
    for name, source in (("echo", ECHO), ("caller", CALLER)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source.lstrip())
        config = CONFIGS[name].replace("$env_path", sys.prefix).replace("$state_inputs", state_inputs)
        (repo / name / "config.pbtxt").write_text(config)
    return repo


def measure(url: str, calls: int, candidates: int, tensors: int, repeats: int) -> dict:
    """Median seconds per BLS call (inside the stub) and median end-to-end request latency."""
    import tritonclient.grpc as grpcclient

    def tensor(name, value):
        t = grpcclient.InferInput(name, [1], "INT32")
        t.set_data_from_numpy(np.array([value], np.int32))
        return t

    inside, outside = [], []
    with grpcclient.InferenceServerClient(url) as client:
        for i in range(repeats + 5):
            t0 = time.perf_counter()
            reply = client.infer("caller", [tensor("calls", calls), tensor("candidates", candidates),
                                            tensor("tensors", tensors)])
            if i >= 5:  # warm-up
                outside.append(time.perf_counter() - t0)
                inside.append(float(reply.as_numpy("seconds")[0]) / max(calls, 1))
    return {"calls": calls, "candidates": candidates, "tensors": tensors, "per_call_ms": statistics.median(inside) * 1e3,
            "request_ms": statistics.median(outside) * 1e3}


def main(argv=None) -> int:
    from nann.serving.server import TritonServer
    from perf.run import machine_info
    from perf.sections import command_line, provenance, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=32, help="BLS calls per request (default 32)")
    p.add_argument("--repeats", type=int, default=200, help="requests per setting (default 200)")
    p.add_argument("--candidates", default="64,1024,16384",
                   help="int64 ids sent per call, comma-separated (default 64,1024,16384)")
    p.add_argument("--tensors", default="0,5",
                   help="extra float32 [1, 50, 64] tensors sent per call, comma-separated (default 0,5: `scorer` "
                        "gets 5 user-state tensors besides cand_ids and owner)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    command = command_line("perf.bls_floor", argv)
    counts = [int(t) for t in args.tensors.split(",")]
    with tempfile.TemporaryDirectory() as tmp, TritonServer(write_repository(Path(tmp), max(counts))) as server:
        empty = measure(server.grpc_url, 0, 0, 0, args.repeats)
        rows = [measure(server.grpc_url, args.calls, int(c), t, args.repeats)
                for t in counts for c in args.candidates.split(",")]
    lines = [provenance(command, info, cores=True), "",
             f"A request without BLS calls: {empty['request_ms']:.2f} ms end to end (gRPC, median of {args.repeats}).",
             "", f"| int64 ids per call | extra float32 [1, 50, 64] tensors per call | median time per BLS call "
             f"({args.calls} per request, timed in the stub) |", "|---|---|---|"]
    lines += [f"| {r['candidates']:,} | {r['tensors']} | {r['per_call_ms']:.3f} ms |" for r in rows]
    report(NAME, "\n".join(lines), write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
