"""The run directory has one owner, nann/run_dir.py: no other module spells a file name of it, and its staged
replacement never rewrites a file that an exported model version may hard-link."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from nann import run_dir
from nann.errors import UserError
from nann.run_dir import COMPLETE, STAGING, GraphDir, RunDir

ROOT = Path(__file__).resolve().parent.parent
CODE = ("nann", "nann_cli", "trainer", "graph_builder", "perf", "model_repository")
# The vocabulary files and a meta.json are the prepared data directory's names as well (its owner: nann/data/), so
# the check covers the names only the run directory has; the run's uses of the shared ones go through RunDir too.
SHARED = {*run_dir.VOCABULARY, GraphDir.META}
RUN_ONLY = sorted({value for name, value in (*vars(run_dir).items(), *vars(GraphDir).items())
                   if name.isupper() and isinstance(value, str) and "." in value} - SHARED)


def strings(source: str):
    """source's string constants, f-strings as their text with {} for each replacement field."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            yield "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def spelled_names(source: str) -> list[str]:
    """Run-directory file names that source spells in a string: the name itself, or a path ending in it (prose such
    as docstrings, help texts and messages is not a file name)."""
    return sorted(name for text in strings(source) if not any(c.isspace() for c in text)
                  for name in RUN_ONLY if text == name or text.endswith("/" + name))


def test_the_names_checked_are_the_run_directorys():
    assert {"config.json", "model.safetensors", "item_embeddings.npy", "onnx_io.json", "scorer.onnx",
            "scorer_ids.onnx", "user_encoder.onnx", "levels.npy", "hnsw_index.bin", STAGING} <= set(RUN_ONLY)
    assert spelled_names("x = run / 'graph/levels.npy'\nprint('reads onnx_io.json')\ny = 'scorer.onnx'\n"
                         "z = d / f'layer{lev}_indptr.npy'") == ["layer{}_indptr.npy", "levels.npy", "scorer.onnx"]


@pytest.mark.parametrize("path", [p for folder in CODE for p in sorted((ROOT / folder).rglob("*.py"))
                                  if p != ROOT / "nann" / "run_dir.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_but_the_owner_spells_a_run_directory_file(path):
    assert spelled_names(path.read_text()) == [], f"{path} names run-directory files itself: use nann.run_dir"


def test_the_runs_vocabulary_is_the_prepared_datas():
    from nann.data.prepared import DATA_FILES

    assert set(run_dir.VOCABULARY) <= set(DATA_FILES)


def test_graph_meta_is_checked_and_names_the_file(tmp_path):
    graph = GraphDir(tmp_path / "graph")
    with pytest.raises(UserError, match="graph not found: .*meta.json is missing"):
        graph.read_meta()
    graph.path.mkdir()
    meta = graph.write_meta({"num_items": 3, "max_level": 0, "entry_point": 1})
    assert meta["format_version"] == GraphDir.FORMAT_VERSION and graph.read_meta() == meta
    graph.meta_file.write_text(json.dumps({**meta, "format_version": GraphDir.FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match=rf"corrupt graph metadata {graph.meta_file}: format_version"):
        graph.read_meta()


def make_run(path: Path) -> RunDir:
    run = RunDir(path)
    run.path.mkdir()
    run.write_vocabulary(np.arange(3, dtype=np.int64), np.zeros(3, dtype=np.int32))
    run.graph.path.mkdir()
    np.save(run.graph.levels_file, np.zeros(3, dtype=np.int8))
    return run


def test_staged_files_replace_the_runs_by_renames(tmp_path):
    run = make_run(tmp_path / "run")
    served = tmp_path / "served"  # an exported version hard-links the run's files
    served.mkdir()
    os.link(run.items_file, served / "items")
    os.link(run.graph.levels_file, served / "levels")
    staged = run.begin_staging()
    staged.write_vocabulary(np.arange(4, dtype=np.int64), np.zeros(4, dtype=np.int32))
    staged.graph.path.mkdir()
    np.save(staged.graph.levels_file, np.ones(4, dtype=np.int8))
    run.commit_staging()
    assert run.vocabulary_size() == 4 and np.load(run.graph.levels_file).tolist() == [1] * 4
    assert not (run.path / STAGING).exists()
    # the old files were unlinked, not rewritten: the exported version still has them as they were
    assert np.load(served / "items").tolist() == [0, 1, 2] and np.load(served / "levels").tolist() == [0] * 3


def test_an_interrupted_staging_is_finished_when_complete_and_dropped_when_not(tmp_path):
    run = make_run(tmp_path / "run")
    staged = run.begin_staging()
    staged.write_vocabulary(np.arange(5, dtype=np.int64), np.zeros(5, dtype=np.int32))
    assert not run.finish_staging()  # not marked complete: nothing of it was moved, it is dropped
    assert run.vocabulary_size() == 3 and not staged.path.exists()
    staged = run.begin_staging()
    staged.write_vocabulary(np.arange(5, dtype=np.int64), np.zeros(5, dtype=np.int32))
    (staged.path / COMPLETE).touch()  # complete, then killed before the move
    assert run.finish_staging() and run.vocabulary_size() == 5 and not staged.path.exists()


def test_a_graph_is_built_aside_and_swapped_in(tmp_path):
    run = make_run(tmp_path / "run")
    staged = run.new_graph()
    staged.path.mkdir()
    staged.write_meta({"num_items": 3, "max_level": 0, "entry_point": 0})
    run.replace_graph(staged)
    assert run.graph.exists() and not staged.path.exists() and not run.graph.levels_file.exists()
    assert sorted(p.name for p in run.path.iterdir()) == sorted([*run_dir.VOCABULARY[:2], run_dir.GRAPH])


def test_a_run_without_what_a_step_needs_is_refused_naming_the_files(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(UserError, match=r"lacks config.json, onnx_io.json, item_embeddings.npy, user_encoder.onnx, "
                                        r"scorer.onnx, model.safetensors, categories.npy: run `nann train"):
        run.check_servable()
    with pytest.raises(UserError, match="onnx_io.json not found: is .* a finished training run"):
        run.check_trained()
