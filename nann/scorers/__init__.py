"""The scorer runtimes, registered in one place: `RUNTIMES`, from which come the command line's choices (`nann export
--scorer`, `nann evaluate --backend`), the candidate grid of an export and of the offline engine, what `nann export`
writes for the scorer, and where the served scorer runs. One module per runtime (`nann.scorers.base.ScorerRuntime`):
ONNX Runtime and torch in a Python process, TensorRT in Triton's TensorRT backend. A new runtime is one module and
one entry here."""
from __future__ import annotations

from nann.errors import UserError
from nann.scorers import onnx_runtime, tensorrt, torch_runtime
from nann.scorers.base import ScorerRuntime

# In order of preference: `nann export --scorer auto` takes the first available GPU runtime, else it times the CPU
# runtimes that run in Python on the run's model and takes the faster.
RUNTIMES: dict[str, ScorerRuntime] = {r.name: r for r in (tensorrt.RUNTIME, onnx_runtime.RUNTIME, torch_runtime.RUNTIME)}


def runtime(name: str) -> ScorerRuntime:
    if name not in RUNTIMES:
        raise UserError(f"unknown scorer runtime {name!r} (choose from {', '.join(RUNTIMES)})")
    return RUNTIMES[name]


def in_python() -> list[str]:
    """The runtimes a Python process runs (offline evaluation and retrieval, the Python-backend models)."""
    return [name for name, r in RUNTIMES.items() if r.in_python]


def cpu_in_python() -> list[str]:
    """The runtimes `nann export --scorer auto` times on a host without an available GPU runtime."""
    return [name for name, r in RUNTIMES.items() if r.in_python and not r.gpu]
