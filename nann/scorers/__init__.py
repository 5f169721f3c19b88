"""The scorer runtimes, registered in one place: `RUNTIMES`, from which come the command line's choices (`nann export
--scorer`, `nann evaluate --backend`), the candidate grid of an export and of the offline engine, what `nann export`
writes for the scorer, and where the served scorer runs. One module per runtime (`nann.scorers.base.ScorerRuntime`):
ONNX Runtime and torch in a Python process, torch on a CUDA device in a Python process (`torch_cuda`: where TensorRT
is not installed), TensorRT in Triton's TensorRT backend. A new runtime is one module and
one entry here."""
from __future__ import annotations

from nann.errors import UserError
from nann.scorers import onnx_runtime, tensorrt, torch_cuda, torch_runtime
from nann.scorers.base import ScorerRuntime

# In order of preference: `nann export --scorer auto` takes the first available GPU runtime, else it times the CPU
# runtimes that run in Python on the run's model and takes the faster.
RUNTIMES: dict[str, ScorerRuntime] = {r.name: r for r in (tensorrt.RUNTIME, *torch_cuda.RUNTIMES, onnx_runtime.RUNTIME,
                                                           torch_runtime.RUNTIME)}


def runtime(name: str | ScorerRuntime) -> ScorerRuntime:
    """The registered runtime of that name; a `ScorerRuntime` instance is taken as it is (e.g. the CUDA scorer
    built for another device: `nann.scorers.torch_cuda.TorchCudaRuntime(device="cpu")`)."""
    if isinstance(name, ScorerRuntime):
        return name
    if name not in RUNTIMES:
        raise UserError(f"unknown scorer runtime {name!r} (choose from {', '.join(RUNTIMES)})")
    return RUNTIMES[name]


def in_python() -> list[str]:
    """The runtimes a Python process runs (offline evaluation and retrieval, the Python-backend models)."""
    return [name for name, r in RUNTIMES.items() if r.in_python]


def usable_here() -> list[str]:
    """The runtimes a Python process runs on this host."""
    return [name for name in in_python() if RUNTIMES[name].available()]


def cpu_in_python() -> list[str]:
    """The runtimes `nann export --scorer auto` times on a host without an available GPU runtime."""
    return [name for name, r in RUNTIMES.items() if r.in_python and not r.gpu]
