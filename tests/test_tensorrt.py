"""The GPU serving path on a CPU host: TensorRT scorer config and profiles from a real run, an export for TensorRT
with the plan build stood in for, `nann serve`'s refusal of such a repository on the bundled tritonserver, and
`--tritonserver` / `--backend-directory` / $NANN_TRITONSERVER. Building and serving a real plan needs TensorRT and
a GPU (deploy/gpu/), which these machines do not have."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from nann_cli.main import main as cli_main
from nann.engine.grid import CandidateGrid
from nann.errors import UserError
from nann.scorers.tensorrt import fixed_sequence_axis, profile_shapes, scorer_config
from nann.serving.export import MAX_BATCH, export_repository, state_specs
from nann.serving.requests import ServingLimits
from nann.serving.server import TRITONSERVER_ENV, TritonServer, make_backend_dir, pytriton_server_root
from nann.serving.services import RequestEncoder

GRID = CandidateGrid([1, 64, 128, 256])
DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def parse_config(path_or_text) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt with Triton's own schema (fails on unknown fields and malformed text)."""
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def run_specs(run: Path) -> list[dict]:
    return fixed_sequence_axis(state_specs(run), json.loads((run / "config.json").read_text())["max_seq"])


def test_tensorrt_config_matches_the_scorer_ids_contract(tiny_run):
    io = json.loads((tiny_run.run / "onnx_io.json").read_text())
    text = scorer_config(run_specs(tiny_run.run), len(GRID.sizes))
    assert "$" not in text
    cfg = parse_config(text)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("scorer", "tensorrt_plan", 0)

    def expected(tensors):  # symbolic axes are dynamic (-1) except L, which serving pads to max_seq
        return [(t["name"], DTYPES[t["dtype"]], [io["max_seq"] if d == "L" else d if isinstance(d, int) else -1
                                                 for d in t["shape"]]) for t in tensors]

    got = [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input]
    assert got == expected(io["scorer_ids"]["inputs"])
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output] == \
        expected(io["scorer_ids"]["outputs"])
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(group.profile) == [str(i) for i in range(len(GRID.sizes))]


def test_tensorrt_profiles_of_a_real_run_cover_the_candidate_grid(tiny_run):
    with pytest.raises(UserError, match="dynamic inner axis"):  # the raw specs: keys [L, 64] with L open
        profile_shapes(state_specs(tiny_run.run), GRID, MAX_BATCH)
    specs = run_specs(tiny_run.run)
    profiles = profile_shapes(specs, GRID, MAX_BATCH)
    assert [p["cand_ids"] for p in profiles] == [((n,),) * 3 for n in GRID.sizes]
    assert all(p["owner"] == p["cand_ids"] for p in profiles)
    for p in profiles:
        for spec in specs:
            assert p[spec["name"]] == ((1, *spec["dims"]), (8, *spec["dims"]), (MAX_BATCH, *spec["dims"]))
    # every scorer call retrieve can make (padded to the grid) fits exactly one profile
    for n in range(1, GRID.max_size + 1):
        size = GRID.pad_size(n)
        assert sum(lo[0] <= size <= hi[0] for lo, _, hi in (p["cand_ids"] for p in profiles)) == 1


@pytest.fixture(scope="module")
def trt_export(tiny_run, tmp_path_factory) -> SimpleNamespace:
    """The tiny run exported with --scorer tensorrt on this CPU host: TensorRT's availability and the plan build
    are stood in for (model.plan holds placeholder bytes); everything else is the real export."""
    built = {}

    def build_plan(onnx_path, plan_path, specs, grid, max_batch):
        built.update(onnx=Path(onnx_path), specs=specs, grid=grid, max_batch=max_batch)
        Path(plan_path).write_bytes(b"placeholder: no TensorRT on this host")
        return len(profile_shapes(specs, grid, max_batch))

    repo = tmp_path_factory.mktemp("trt") / "repo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nann.scorers.tensorrt.tensorrt_available", lambda: True)
        mp.setattr("nann.scorers.tensorrt.build_scorer_plan", build_plan)
        info = export_repository(tiny_run.run, repo, scorer="tensorrt", grid=GRID)
    return SimpleNamespace(repo=repo, info=info, built=built, run=tiny_run.run)


def test_export_for_tensorrt_writes_plan_config_and_matching_grid(trt_export):
    repo, built = trt_export.repo, trt_export.built
    assert trt_export.info["scorer_backend"] == "tensorrt"
    assert sorted(os.listdir(repo / "scorer" / "1")) == ["manifest.json", "model.plan"]
    assert built["onnx"] == trt_export.run / "scorer_ids.onnx"
    scorer = parse_config(repo / "scorer" / "config.pbtxt")
    assert scorer.platform == "tensorrt_plan"
    assert list(scorer.instance_group[0].profile) == ["0", "1", "2", "3"]
    # the plan's profiles are built from the grid and batch limit the served retrieve model uses
    retrieve = parse_config(repo / "retrieve" / "config.pbtxt")
    assert json.loads(retrieve.parameters["grid"].string_value)["sizes"] == list(GRID.sizes) == \
        [p["cand_ids"][0][0] for p in profile_shapes(built["specs"], built["grid"], built["max_batch"])]
    assert built["max_batch"] == retrieve.max_batch_size
    # the user state `retrieve`'s encoder passes on to the scorer: the plan's inputs, as the scorer's config names them
    encoder = RequestEncoder(trt_export.run, ServingLimits(max_seq=trt_export.info["max_seq"]))
    encoded = encoder.encode(np.zeros(0, np.int64))
    planned = {s["name"]: s["dims"] for s in built["specs"]}
    assert planned == {name: list(value.shape[1:]) for name, value in encoded.state.items()}
    assert planned == {t.name: list(t.dims[1:]) for t in scorer.input if t.data_type == model_config_pb2.TYPE_FP32}


def fake_triton_install(root: Path, backends: tuple[str, ...]) -> Path:
    """Another Triton build's layout: <root>/bin/tritonserver (a script never run) and <root>/backends/<name>/."""
    binary = root / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 99\n")
    binary.chmod(0o755)
    for name in backends:
        (root / "backends" / name).mkdir(parents=True)
    return binary


class ServerStarted(Exception):
    """Raised instead of starting a tritonserver process; carries its command line."""


@pytest.fixture
def no_server_start(monkeypatch):
    """Starting a process raises ServerStarted (so a test without it proves no server was started)."""
    def popen(argv, *args, **kwargs):
        raise ServerStarted(argv)

    monkeypatch.setattr("nann.serving.server.subprocess.Popen", popen)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # `nann serve` installs handlers before starting
    monkeypatch.delenv(TRITONSERVER_ENV, raising=False)


def test_serve_refuses_a_tensorrt_repository_on_the_bundled_server(trt_export, no_server_start, capsys):
    assert cli_main(["serve", "--repo", str(trt_export.repo)]) == 2
    assert capsys.readouterr().err == (
        f"nann serve: error: {trt_export.repo}'s scorer is a TensorRT plan; the bundled tritonserver has only the "
        "Python backend: run with --tritonserver PATH (a Triton build with the TensorRT backend, e.g. NGC's "
        "container)\n")


def test_serve_refuses_a_backend_directory_without_tensorrt(trt_export, no_server_start, monkeypatch, tmp_path,
                                                           capsys):
    monkeypatch.setenv(TRITONSERVER_ENV, str(fake_triton_install(tmp_path / "triton", ("python",))))
    assert cli_main(["serve", "--repo", str(trt_export.repo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"backend directory {tmp_path / 'triton' / 'backends'} has no tensorrt/" in err
    assert "--backend-directory" in err


def test_serve_starts_another_build_with_its_own_backends(trt_export, no_server_start, monkeypatch, tmp_path):
    binary = fake_triton_install(tmp_path / "triton", ("python", "tensorrt"))
    monkeypatch.setenv(TRITONSERVER_ENV, str(tmp_path / "not-this-one"))  # the option wins over the variable
    with pytest.raises(ServerStarted) as started:
        cli_main(["serve", "--repo", str(trt_export.repo), "--tritonserver", str(binary)])
    argv = started.value.args[0]
    assert argv[0] == str(binary)
    assert f"--backend-directory={tmp_path / 'triton' / 'backends'}" in argv
    assert f"--model-repository={trt_export.repo}" in argv


def test_serve_passes_an_explicit_backend_directory(trt_export, no_server_start, tmp_path):
    binary = fake_triton_install(tmp_path / "triton", ())
    backends = tmp_path / "elsewhere"
    (backends / "tensorrt").mkdir(parents=True)
    with pytest.raises(ServerStarted) as started:
        cli_main(["serve", "--repo", str(trt_export.repo), "--tritonserver", str(binary),
                  "--backend-directory", str(backends)])
    assert f"--backend-directory={backends}" in started.value.args[0]


def test_serve_refuses_a_tritonserver_that_is_not_executable(trt_export, no_server_start, tmp_path, capsys):
    assert cli_main(["serve", "--repo", str(trt_export.repo), "--tritonserver", str(tmp_path / "nothing")]) == 2
    assert "is not an executable file" in capsys.readouterr().err


@pytest.mark.serving
def test_another_build_layout_really_serves(tmp_path, monkeypatch):
    """A real tritonserver started the `--tritonserver PATH` way: the bundled binary linked into another build's
    layout (<prefix>/bin/tritonserver + <prefix>/backends/python), serving the stand-in repository."""
    from test_client import make_repo

    monkeypatch.delenv(TRITONSERVER_ENV, raising=False)
    prefix = tmp_path / "triton"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "tritonserver").symlink_to(pytriton_server_root() / "bin" / "tritonserver")
    make_backend_dir(prefix / "backends")
    with TritonServer(make_repo(tmp_path), tritonserver=prefix / "bin" / "tritonserver") as server:
        assert server.is_ready()
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[0] == str(prefix / "bin" / "tritonserver")
        assert f"--backend-directory={prefix / 'backends'}" in argv
