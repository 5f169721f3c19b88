"""The TensorRT scorer runtime on GPU hosts: a plan of the scorer served by Triton's TensorRT backend, behind BLS,
with the paper's XLA auto-padding as optimization profiles.

The run's scorer with the item table inside (candidates passed as ids) is compiled with one optimization profile
per candidate-grid size: profile i fixes the candidate axis to exactly grid size i (min = opt = max), and
the user-state axis R ranges over 1..max_batch. `retrieve` pads every round to a grid size (`padded_grid`), so exactly
one profile matches each call, the way XLA compiled one program per padded size. `retrieve`'s encoder runs ONNX Runtime.

TensorRT cannot be installed on the CPU machines this project is developed on: `build_scorer_plan` runs only
where `tensorrt` (10 or newer: the scorer has INT64 inputs) imports and a CUDA device is present; the profiles
and the scorer's config.pbtxt are generated and unit-tested everywhere (tests/test_tensorrt.py).
"""
from __future__ import annotations

from pathlib import Path

from nann.engine.grid import CandidateGrid
from nann.errors import UserError
from nann.scorers.base import ScorerRuntime
from nann.serving.templates import render, tensor_entries

CANDIDATE_INPUTS = ("cand_ids", "owner")


def fixed_sequence_axis(state_specs: list[dict], max_seq: int) -> list[dict]:
    """The state specs with the sequence axis (-1 in `state_specs`) fixed to max_seq: `retrieve`'s encoder pads every
    served history to max_seq, and TensorRT profiles (and the plan's config) need fixed inner dimensions."""
    return [{**spec, "dims": [max_seq if d < 0 else d for d in spec["dims"]]} for spec in state_specs]


def profile_shapes(state_specs: list[dict], grid: CandidateGrid, max_batch: int) -> list[dict[str, tuple]]:
    """Per profile: input name → (min, opt, max) shapes. One profile per grid size."""
    if grid.sizes is None:
        raise UserError("a TensorRT scorer needs a padded candidate grid (one profile per size), not an unpadded one")
    profiles = []
    opt_users = max(1, min(max_batch, 8))
    for size in grid.sizes:
        shapes = {}
        for spec in state_specs:
            inner = tuple(spec["dims"])
            if any(d < 0 for d in inner):
                raise UserError(f"state tensor {spec['name']} has a dynamic inner axis {list(inner)}: "
                                "TensorRT profiles need fixed inner dimensions")
            shapes[spec["name"]] = ((1, *inner), (opt_users, *inner), (max_batch, *inner))
        for name in CANDIDATE_INPUTS:
            shapes[name] = ((size,), (size,), (size,))
        profiles.append(shapes)
    return profiles


def build_scorer_plan(onnx_path: Path, plan_path: Path, state_specs: list[dict], grid: CandidateGrid,
                      max_batch: int, fp16: bool = False) -> int:
    """Compile onnx_path into plan_path; returns the number of optimization profiles."""
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) < 10:
        raise UserError(f"TensorRT {trt.__version__} cannot take the scorer's INT64 inputs: TensorRT 10 or newer is "
                        "needed (pip install 'nann-serve[gpu]', or an NGC container from 24.05 on)")
    if not Path(onnx_path).is_file():
        raise UserError(f"{onnx_path} is missing: re-run `nann train` (it exports it)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = profile_shapes(state_specs, grid, max_batch)
    for profile_shapes_i in shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes_i.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path}")
    Path(plan_path).write_bytes(bytes(plan))
    return len(shapes)


def tensorrt_available() -> bool:
    """Whether this host has the tensorrt package and a CUDA GPU."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def scorer_config(specs: list[dict], profiles: int) -> str:
    """config.pbtxt of the TensorRT `scorer` for state `specs` (fixed inner dims) and a plan with `profiles`
    optimization profiles (one per candidate-grid size); renders without TensorRT or a plan."""
    return render("scorer_tensorrt/config.pbtxt.template", state_inputs_unbatched=tensor_entries(specs),
                  profiles=", ".join(f'"{p}"' for p in range(profiles)))


class TensorRT(ScorerRuntime):
    name = "tensorrt"
    summary = "a TensorRT plan on a GPU, served by Triton's TensorRT backend"
    in_python = False
    in_process = False
    gpu = True
    padded_grid = True
    encoder = "onnxruntime"
    needs = "the tensorrt package and a CUDA GPU on this host"

    def available(self) -> bool:
        return tensorrt_available()

    def export_scorer(self, export) -> None:
        """The `scorer` model as a plan of the run's scorer with the item table inside; the state's history axis fixed
        to max_seq (encode pads to it), one profile per grid size."""
        specs = fixed_sequence_axis(export.specs, export.limits.max_seq)
        version_dir = export.version_dir("scorer")
        profiles = build_scorer_plan(export.run.scorer_ids_file, version_dir / "model.plan", specs, export.grid,
                                     export.max_batch)
        export.manifest("scorer", version_dir)
        export.write_config("scorer", scorer_config(specs, profiles))


RUNTIME = TensorRT()
