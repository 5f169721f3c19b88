"""`pip install .`, not editable, in a fresh environment, then `nann export` of a run: the installed copy finds the
Triton templates as package data (nann.serving.model_repository, mapped from the top-level model_repository/), and
the wheel holds every module of the packages pyproject.toml lists.

The fresh environment gets no packages from an index: the wheel is built from a copy of the sources with this
environment's setuptools, installed without dependencies, and the dependencies are this environment's site-packages,
added by a .pth file (whose own .pth files, the editable install's finder among them, are not run)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def run(*argv, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def source_dir(package: str) -> Path:
    """The directory a listed package is built from."""
    mapped = SETUPTOOLS["package-dir"].get(package)
    return ROOT / mapped if mapped else ROOT.joinpath(*package.split("."))


# Not sources: perf/results holds the git-ignored outputs of perf tools (exported repositories with model.py files).
NOT_SOURCES = ("__pycache__", "results")


def modules(top: Path, under: str) -> set[str]:
    return {str(Path(under) / p.relative_to(top)) for p in top.rglob("*.py")
            if not set(NOT_SOURCES) & set(p.relative_to(top).parts)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment with the project installed from its wheel; returns its bin directory."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    for top in {source_dir(p).relative_to(ROOT).parts[0] for p in SETUPTOOLS["packages"]}:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
        work / "wheel", src, cwd=work)
    env = work / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=work)
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=work).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel, = (work / "wheel").glob("*.whl")
    run(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-deps", "--no-index",
        wheel, cwd=work)
    return env / "bin"


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_listed_packages(installed):
    site = Path(run(installed / "python", "-c", "import nann, pathlib; print(pathlib.Path(nann.__file__).parents[1])",
                    cwd=installed).strip())
    assert site.name == "site-packages" and ROOT not in site.parents, f"nann imported from {site}"
    tops = {p.split(".")[0] for p in SETUPTOOLS["packages"]}
    listed = set().union(*(modules(source_dir(p), p.replace(".", "/")) for p in SETUPTOOLS["packages"]
                           if "." not in p or p in SETUPTOOLS["package-dir"]))
    assert set().union(*(modules(site / top, top) for top in tops)) == listed


@pytest.mark.slow
def test_nann_export_from_a_regular_install(installed, tiny_run, tmp_path):
    repo = tmp_path / "repo"
    out = run(installed / "nann", "export", "--run", tiny_run.run, "--repo", repo, "--scorer", "onnxruntime",
              "--bls", cwd=tmp_path)  # behind BLS: every model's shipped files are used
    assert "exported version 1" in out and "behind BLS" in out
    for model in ("nann", "retrieve", "scorer"):
        assert (repo / model / "config.pbtxt").is_file()
    for model in ("retrieve", "scorer"):
        shipped = (ROOT / "model_repository" / model / "model.py").read_text()
        assert (repo / model / "1" / "model.py").read_text() == shipped
