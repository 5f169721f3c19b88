"""`nann export`: assemble a complete, versioned Triton model repository from a trained run.

Layout of REPO_DIR (model names are a contract):
    nann/          the ensemble (public entry point): one step, `retrieve`
    retrieve/      Python: validate, raw → dense ids, gather e_v, pad to max_seq, user_encoder.onnx (one user at a
                   time); Numba beam search, one scorer call per round: a Python scorer runtime (ONNX Runtime, torch)
                   in this process, else a BLS call to `scorer`
    scorer/        only for a scorer behind BLS, what its runtime writes (`nann.scorers`): a TensorRT plan on GPU
                   hosts (or, asked for with `in_process=False`, a Python model running a Python runtime)
Each model gets a new version directory `N/` (N = newest + 1 when REPO_DIR already exists, so a running
server can switch versions), its artifacts hard-linked from the run (copied across file systems) and a
checksummed manifest verified at load. The models' `model.py` files and config templates: `nann.serving.templates`.
"""
from __future__ import annotations

import json
import os
import py_compile
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nann import scorers
from nann.engine.grid import CandidateGrid
from nann.errors import UserError
from nann.run_dir import RunDir
from nann.scorers.base import ScorerRuntime
from nann.serving.repository import model_versions, write_manifest
from nann.serving.requests import REQUEST_INPUT_NAMES, REQUEST_INPUTS, ServingLimits
from nann.serving.services import BLS, IN_PROCESS, RUNTIME_THREADS
from nann.serving.templates import model_file, render, tensor_entries

MODELS = ("retrieve", "scorer", "nann")
# an older layout's models, all merged into `retrieve` since (preprocess and user_encoder into encode, encode into
# retrieve): a repository holding one cannot take a new version (its `nann` would still route through it)
OBSOLETE_MODELS = ("preprocess", "user_encoder", "encode")
MAX_BATCH = 64
# `retrieve`'s dynamic batcher's max_queue_delay_microseconds (perf/RESULTS.md "Serving parameters:
# max_queue_delay_microseconds (retrieve)"): no wait: under load the requests that arrive while its instances are busy
# form the next batch anyway; at concurrency 1 a wait is pure latency (two instances, the scorer in their processes,
# 90,896 items: 2 ms against 0, p50 13.6 vs 10.6 ms at concurrency 1, 1.07x the req/s at 16 with 0).
QUEUE_DELAY_US = {"retrieve": 0}
# `retrieve`'s instances (stub processes), each walking and scoring one batch on one thread: on 2 cores one batch's
# walk and scoring overlap the other's (model_repository/retrieve/config.pbtxt.template says why, with its measurement)
RETRIEVE_INSTANCES = 2


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def state_specs(run_dir: Path) -> list[dict]:
    """The user-state tensors as [{"name", "dtype", "dims"}] with dims excluding the leading batch axis."""
    io = RunDir(run_dir).read_onnx_io()
    specs = []
    for s in io["state"]:
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in s["shape"][1:]]
        specs.append({"name": s["name"], "dtype": s.get("dtype", "float32"), "dims": dims})
    return specs


def search_input_entries(ragged: bool) -> str:
    """The optional per-request inputs (`REQUEST_INPUTS`: search parameters and filters) as config.pbtxt input
    entries; ragged for `retrieve`, which batches requests whose lists differ in length."""
    extra = " allow_ragged_batch: true" if ragged else ""
    return ",\n".join(f'  {{ name: "{s.name}" data_type: TYPE_{s.dtype} dims: [ {s.dims} ] optional: true{extra} }}'
                       for s in REQUEST_INPUTS)


def step_map(kind: str, names) -> str:
    """Ensemble-step `input_map` / `output_map` lines passing each tensor on under its own name."""
    return "\n".join(f'      {kind} {{ key: "{name}" value: "{name}" }}' for name in names)


def pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def parameters(values: dict[str, str]) -> str:
    """config.pbtxt `parameters` entries of string values."""
    return "\n".join(f'parameters: {{ key: "{key}" value: {{ string_value: "{pbtxt_string(value)}" }} }}'
                     for key, value in values.items())


def runtime_parameters(role: str, backend: str, prefix: str = "") -> dict[str, str]:
    """The parameters of a runtime a model loads, its names after `prefix` (`nann.serving.services.runtime_options`
    reads them); role: its entry in `RUNTIME_THREADS`."""
    threads, spinning = RUNTIME_THREADS[role]
    return {prefix + "backend": backend, prefix + "intra_op_threads": str(threads),
            prefix + "spinning": str(spinning).lower()}


def retrieve_scorer(runtime: ScorerRuntime, in_process: bool) -> str:
    """`retrieve`'s parameters saying where its scorer runs: in its process (with the runtime's) or behind BLS."""
    if not in_process:
        return parameters({"scorer": BLS})
    return parameters({"scorer": IN_PROCESS, **runtime_parameters("retrieve", runtime.name)})


# (users, candidates per user) of the scorer calls `--scorer auto` times: a walk's round scores ~60 candidates per
# request, and a served call holds the round of 1 (concurrency 1) to ~8 (concurrency 16) requests
ROUND_SHAPES = ((1, 64), (8, 64))


def measure_cpu_backends(run_dir: Path, shapes=ROUND_SHAPES, calls: int = 50, repeats: int = 5) -> dict[str, float]:
    """Candidates per second of each CPU runtime (`nann.scorers.cpu_in_python`) on this run's model at the walk's
    call sizes: every shape's candidates over the sum of their median call times. The call size decides: on the 100k perf run ONNX Runtime
    scored 1 x 64 2.8x and 8 x 64 1.3x faster than torch, torch 8 x 1,024 1.07x faster than ONNX Runtime; served,
    torch gave 0.70x the req/s at concurrency 1 and 0.89x at 16 (perf/RESULTS.md "Serving parameters: backend
    (scorer)"), where timing 8,192 candidates in one call had chosen torch."""
    from nann.runtime import ModelRuntime

    rng = np.random.default_rng(0)
    speeds = {}
    for backend in scorers.cpu_in_python():
        runtime = ModelRuntime.load(run_dir, backend=backend)
        state = runtime.encode([rng.integers(0, runtime.num_items, size=runtime.max_seq)
                                for _ in range(max(u for u, _ in shapes))])
        candidates, seconds = 0, 0.0
        for users, per_user in shapes:
            rows = {name: value[:users] for name, value in state.items()}
            owner = np.repeat(np.arange(users), per_user)
            ids = rng.integers(0, runtime.num_items, size=users * per_user)
            runtime.score(rows, owner, ids)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(calls):
                    runtime.score(rows, owner, ids)
                times.append((time.perf_counter() - t0) / calls)
            candidates += users * per_user
            seconds += statistics.median(times)
        speeds[backend] = candidates / seconds
    return speeds


def choose_scorer(requested: str, run_dir: Path) -> tuple[ScorerRuntime, dict]:
    """The scorer runtime of an export and, for `auto`, the CPU runtimes' measured speeds: auto takes the first
    available GPU runtime (`nann.scorers.RUNTIMES` order), else the faster CPU runtime on this run's model."""
    if requested != "auto":
        chosen = scorers.runtime(requested)
        if not chosen.available():
            raise UserError(f"--scorer {chosen.name} needs {chosen.needs}; use --scorer auto or "
                            f"{' or '.join(scorers.cpu_in_python())} on CPU hosts")
        return chosen, {}
    gpu = [r for r in scorers.RUNTIMES.values() if r.gpu and r.available()]
    if gpu:
        return gpu[0], {}
    speeds = measure_cpu_backends(run_dir)
    return scorers.runtime(max(speeds, key=speeds.get)), speeds


def next_version(repo: Path) -> int:
    versions = [int(v.name) for m in MODELS if (repo / m).is_dir() for v in model_versions(repo / m)]
    return max(versions, default=0) + 1


class RepositoryExport:
    """One export under way: a new `version` of the models of `repo` from `run`, rendered with `values`; what a scorer
    runtime's export hook (`ScorerRuntime.export_scorer`) writes with."""

    def __init__(self, run: RunDir, repo: Path, version: int, values: dict, specs: list[dict], limits: ServingLimits,
                 grid: CandidateGrid):
        self.run, self.repo, self.version, self.values = run, repo, version, values
        self.specs, self.limits, self.grid = specs, limits, grid  # the user state, the served limits, the grid
        self.max_batch = MAX_BATCH

    def version_dir(self, model: str) -> Path:
        """The model's new, empty version directory."""
        path = self.repo / model / str(self.version)
        path.mkdir(parents=True)
        return path

    def manifest(self, model: str, version_dir: Path) -> None:
        write_manifest(version_dir, {"run": str(self.run.path), "model": model})

    def write_config(self, model: str, text: str) -> None:
        (self.repo / model / "config.pbtxt").write_text(text)

    def python_model(self, model: str) -> None:
        """A Python-backend model: its model.py, the run's served files (and the graph, for `retrieve`), its config."""
        version_dir = self.version_dir(model)
        (version_dir / "model.py").write_bytes(model_file(model))
        # compiled now, so the stub finds its bytecode and writes nothing into the version directory at load
        # (a new __pycache__ there made poll mode reload every model right after start)
        py_compile.compile(str(version_dir / "model.py"), doraise=True)
        served = RunDir(version_dir)
        for path in self.run.served_files():
            link_or_copy(path, served.path / path.name)
        if model == "retrieve":
            for path in self.run.graph.served_files():  # all but the builder's index (for `nann items add`)
                link_or_copy(path, served.graph.path / path.name)
        self.manifest(model, version_dir)
        self.write_config(model, render(f"{model}/config.pbtxt.template", **self.values))


def export_repository(run_dir: Path, repo: Path, scorer: str = "auto", limits: ServingLimits | None = None,
                      grid: CandidateGrid | None = None, env_path: str | None = None, unknown_ids: str = "skip",
                      in_process: bool | None = None) -> dict:
    """Write a new version of every model into `repo`; returns the export summary (also in nann_info).

    limits default to the catalogue's (`ServingLimits.for_catalogue` of the graph's `search_defaults`) with the run's
    max_seq and the `unknown_ids` policy. in_process: where the scorer runs, None = its runtime's choice
    (`ScorerRuntime.in_process`); False serves a Python runtime behind BLS as its own `scorer` model (the layout before
    issue #26, kept to compare the two)."""
    run_dir, repo = Path(run_dir).resolve(), Path(repo).resolve()
    stale = [model for model in OBSOLETE_MODELS if (repo / model).is_dir()]
    if stale:
        raise UserError(f"{repo} holds {' and '.join(stale)} of an older layout (merged into `retrieve` since): "
                        "export into a fresh repository")
    run = RunDir(run_dir)
    run.check_servable()
    config = run.read_config()
    runtime, speeds = choose_scorer(scorer, run_dir)
    in_process = runtime.in_process if in_process is None else in_process
    if in_process and not runtime.in_python:
        raise UserError(f"the {runtime.name} scorer runs in its own Triton backend and cannot run inside `retrieve`: "
                        "export it behind BLS (the default)")
    grid = grid or runtime.grid()
    version = next_version(repo)
    specs = state_specs(run_dir)
    emb_dim = int(run.item_embeddings().shape[1])
    num_items = run.vocabulary_size()
    limits = limits or ServingLimits.for_catalogue(run.search_defaults(), max_seq=int(config["max_seq"]),
                                                   unknown_ids=unknown_ids)
    info = {
        "model_version": version, "num_items": num_items, "emb_dim": emb_dim, "scorer_backend": runtime.name,
        "scorer_in_process": in_process,
        "models": [m for m in MODELS if m != "scorer" or not in_process],
        # a `scorer` of an earlier export behind BLS: its `retrieve` calls it until this version serves, none after
        "unused_models": ["scorer"] if in_process and (repo / "scorer").is_dir() else [],
        "arch": config.get("arch"), "run": str(run_dir), "max_seq": limits.max_seq, **limits.published(),
        "grid": grid.to_json(),
        "cpu_scorer_candidates_per_s": {k: round(v) for k, v in speeds.items()},
    }
    values = dict(
        max_batch=MAX_BATCH, retrieve_queue_delay_us=QUEUE_DELAY_US["retrieve"],
        retrieve_instances=RETRIEVE_INSTANCES,
        env_path=pbtxt_string(env_path or sys.prefix),
        encoder_runtime=parameters(runtime_parameters("encoder", runtime.encoder_runtime, "encoder_")),
        scorer_runtime=parameters(runtime_parameters("scorer", runtime.name)),
        retrieve_scorer=retrieve_scorer(runtime, in_process),
        limits=pbtxt_string(json.dumps(limits.to_json())), grid=pbtxt_string(json.dumps(info["grid"])),
        nann_info=pbtxt_string(json.dumps(info)),
        state_inputs_unbatched=tensor_entries(specs),
        search_inputs=search_input_entries(ragged=False), search_inputs_ragged=search_input_entries(ragged=True),
        search_input_map=step_map("input_map", REQUEST_INPUT_NAMES),
    )
    repo.mkdir(parents=True, exist_ok=True)
    export = RepositoryExport(run, repo, version, values, specs, limits, grid)
    export.python_model("retrieve")
    if not in_process:
        runtime.export_scorer(export)
    export.version_dir("nann")
    export.write_config("nann", render("nann/config.pbtxt.template", **values))
    return info


def main(args) -> int:
    info = export_repository(Path(args.run), Path(args.repo), args.scorer, env_path=args.env_path,
                             unknown_ids=args.unknown_ids, in_process=False if args.bls else None)
    speeds = info["cpu_scorer_candidates_per_s"]
    if speeds:
        shapes = " and ".join(f"{users} x {per_user}" for users, per_user in ROUND_SHAPES)
        print(f"CPU scorer on round-sized calls ({shapes} candidates): "
              + ", ".join(f"{k} {v:,.0f} candidates/s" for k, v in speeds.items())
              + f" → {info['scorer_backend']}", file=sys.stderr)
    where = "inside `retrieve`" if info["scorer_in_process"] else "behind BLS"
    print(f"exported version {info['model_version']} of {info['num_items']:,} items "
          f"({info['scorer_backend']} scorer, {where}) to {args.repo}")
    for model in info["unused_models"]:
        print(f"note: {Path(args.repo) / model} (an earlier export's) is not called once version "
              f"{info['model_version']} serves: remove it then", file=sys.stderr)
    return 0
