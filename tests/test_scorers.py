"""The scorer runtimes come from one registry (nann.scorers.RUNTIMES): the command line's choices, the candidate grid,
what `nann export` writes for the scorer and where it runs when served; a runtime is one module."""
from __future__ import annotations

import json

import pytest

from nann import scorers
from nann.engine.grid import CandidateGrid
from nann.errors import UserError
from nann.scorers.onnx_runtime import OnnxRuntime
from nann_cli.main import _build_parser


def choices(*command: str, option: str) -> list:
    parser = _build_parser()
    for name in command:
        parser = next(a for a in parser._actions if a.dest.endswith("command")).choices[name]
    return next(a for a in parser._actions if option in a.option_strings).choices


def test_the_command_line_offers_the_registered_runtimes():
    assert list(scorers.RUNTIMES) == ["tensorrt", "torch-cuda", "torch-cuda-half", "onnxruntime", "torch"]
    assert choices("export", option="--scorer") == ["auto", *scorers.RUNTIMES]
    assert choices("evaluate", option="--backend") == scorers.in_python() == [
        "torch-cuda", "torch-cuda-half", "onnxruntime", "torch"]
    assert scorers.cpu_in_python() == ["onnxruntime", "torch"]
    with pytest.raises(UserError, match="unknown scorer runtime 'tpu' \\(choose from tensorrt, torch-cuda, "):
        scorers.runtime("tpu")


def test_the_grid_and_the_serving_place_are_the_runtimes():
    assert scorers.runtime("tensorrt").grid().sizes == CandidateGrid().sizes  # one optimization profile per size
    assert all(scorers.runtime(name).grid().sizes is None for name in scorers.cpu_in_python())  # any shape: unpadded
    assert scorers.runtime("torch-cuda").grid().sizes == CandidateGrid().sizes  # one CUDA graph per size
    # a runtime that runs in Python is served inside `retrieve`'s process; TensorRT behind BLS, in its own backend
    assert [name for name, r in scorers.RUNTIMES.items() if r.in_process] == scorers.in_python()
    assert scorers.runtime("tensorrt").encoder_runtime == "onnxruntime"


class PaddedOnnx(OnnxRuntime):
    """A new runtime in one class: ONNX Runtime with its scoring rounds padded to the grid."""
    name = "onnx-padded"
    summary = "ONNX Runtime, rounds padded"
    padded_grid = True


def test_a_new_runtime_is_one_registered_class(tiny_run, tmp_path, monkeypatch):
    from nann.runtime import ModelRuntime
    from nann.serving.export import export_repository, pbtxt_string

    monkeypatch.setitem(scorers.RUNTIMES, PaddedOnnx.name, PaddedOnnx())
    assert choices("export", option="--scorer")[-1] == PaddedOnnx.name
    runtime = ModelRuntime.load(tiny_run.run, backend=PaddedOnnx.name)  # offline, through its own load
    reference = ModelRuntime.load(tiny_run.run)
    state = reference.encode([[1, 2, 3]])
    assert (runtime.score(state, [0, 0], [4, 5]) == reference.score(state, [0, 0], [4, 5])).all()
    info = export_repository(tiny_run.run, tmp_path / "repo", scorer=PaddedOnnx.name)
    assert info["scorer_backend"] == PaddedOnnx.name and info["grid"]["sizes"] == list(CandidateGrid().sizes)
    assert info["scorer_in_process"] is True and info["models"] == ["retrieve", "nann"]
    assert not (tmp_path / "repo" / "scorer").exists()  # nothing would call it
    retrieve = (tmp_path / "repo" / "retrieve" / "config.pbtxt").read_text()
    for prefix in ("encoder_", ""):  # `retrieve` loads it by name, as its encoder's runtime and as its scorer's
        assert f'key: "{prefix}backend" value: {{ string_value: "{PaddedOnnx.name}" }}' in retrieve
    assert 'key: "scorer" value: { string_value: "in-process" }' in retrieve
    assert pbtxt_string(json.dumps(CandidateGrid().to_json())) in retrieve  # the engine pads to its grid


def test_a_python_runtime_can_be_exported_behind_bls_and_tensorrt_cannot_run_in_process(tiny_run, tmp_path,
                                                                                        monkeypatch):
    from nann.scorers.tensorrt import TensorRT
    from nann.serving.export import export_repository

    repo = tmp_path / "repo"
    export_repository(tiny_run.run, repo, scorer="onnxruntime")
    info = export_repository(tiny_run.run, repo, scorer="onnxruntime", in_process=False)  # version 2, behind BLS
    assert info["scorer_in_process"] is False and info["models"] == ["retrieve", "scorer", "nann"]
    retrieve = (repo / "retrieve" / "config.pbtxt").read_text()
    assert 'key: "scorer" value: { string_value: "bls" }' in retrieve and 'key: "backend"' not in retrieve
    assert 'key: "encoder_backend" value: { string_value: "onnxruntime" }' in retrieve
    scorer = (repo / "scorer" / "config.pbtxt").read_text()
    assert 'key: "backend" value: { string_value: "onnxruntime" }' in scorer and (repo / "scorer" / "2").is_dir()
    info = export_repository(tiny_run.run, repo, scorer="onnxruntime")  # version 3, in `retrieve` again
    assert info["unused_models"] == ["scorer"]  # version 2's `retrieve` calls it until version 3 serves
    monkeypatch.setattr(TensorRT, "available", lambda self: True)  # refused before anything is built
    with pytest.raises(UserError, match="the tensorrt scorer runs in its own Triton backend and cannot run inside "
                                        "`retrieve`"):
        export_repository(tiny_run.run, repo, scorer="tensorrt", in_process=True)


def test_a_runtime_of_another_triton_backend_does_not_load_here(tiny_run):
    from nann.runtime import ModelRuntime

    with pytest.raises(UserError, match="the tensorrt scorer runs in its own Triton backend, not in this process: "
                                        "use onnxruntime or torch here"):
        ModelRuntime.load(tiny_run.run, backend="tensorrt")
