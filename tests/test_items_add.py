"""`nann items add` (trainer/add_items.py): new items in a trained run, retrievable, old ids untouched.

The shared fixture `items_added` is a copy of the tiny run with one new item per category; tests that change a run
copy it (or the tiny run) first."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nann_cli.main import main as cli_main
from nann.data.prepared import PreparedData, Vocabulary
from nann.engine.graph import HnswGraph
from nann.engine.search import brute_force
from nann.errors import UserError
from nann.run_dir import STAGING, GraphDir, RunDir
from nann.runtime import ModelRuntime
from nann.serving.export import export_repository
from nann.serving.repository import verify_repository
from nann.serving.requests import ServingLimits, parse_search
from nann.serving.retrieval import OfflineRetriever
from trainer import add_items as add_module

HNSW_INDEX = GraphDir.HNSW_INDEX
# The widest search the limits allow: the walk then scores ~99% of the tiny run's items, so a new item in the
# brute-force top-K is missed only if the graph does not link it (what these tests are about); the default search's
# misses depend on the trained model and graph build, which differ between CPUs.
WIDEST = {"ef": [ServingLimits().maximum("ef")] * 3, "rounds": [ServingLimits().maximum("rounds")] * 3, "frontier": 0}


def copy_run(run, dst):
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoint"))
    return dst


def write_csv(path, rows):
    path.write_text("".join(f"{line}\n" for line in rows))
    return path


def one_new_item_csv(run, path):
    """A CSV adding one item (a fresh raw id) of the run's first category."""
    return write_csv(path, [f"{np.load(run / 'items.npy').max() + 1},{np.load(run / 'categories.npy')[0]}"])


# ---------------------------------------------------------------- the vocabulary

def test_vocabulary_looks_up_an_unsorted_items_array():
    items = np.array([50, 10, 40, 20, 30, 7], dtype=np.int64)  # prepared ascending, then items appended
    vocab = Vocabulary(items, np.zeros(6, np.int32), np.array([3, 8], np.int64))
    assert vocab.raw_to_dense(items).tolist() == list(range(6))
    assert vocab.raw_to_dense([5, 11, 60, 41, 7]).tolist() == [-1, -1, -1, -1, 5]
    assert vocab.raw_to_dense(np.array([[20, 99]])).tolist() == [[3, -1]]
    assert vocab.category_to_dense([8, 3, 4]).tolist() == [1, 0, -1]
    ascending = Vocabulary(np.sort(items), np.zeros(6, np.int32))
    assert ascending.raw_to_dense([7, 50, 8]).tolist() == [0, 5, -1]
    assert Vocabulary(np.zeros(0, np.int64), np.zeros(0, np.int32)).raw_to_dense([1]).tolist() == [-1]


def test_old_ids_keep_their_dense_ids(tiny_run, items_added):
    old, new, n = tiny_run.run, items_added.run, items_added.num_old
    a = len(items_added.new_raw)
    vocab = Vocabulary.load(str(new))
    assert vocab.num_items == n + a and np.array_equal(vocab.items[:n], np.load(old / "items.npy"))
    assert np.array_equal(vocab.item_category[:n], np.load(old / "item_category.npy"))
    assert vocab.raw_to_dense(np.load(old / "items.npy")).tolist() == list(range(n))
    assert vocab.raw_to_dense(items_added.new_raw).tolist() == list(range(n, n + a))
    for name in ("item_embeddings.npy", "item_embeddings_fp16.npy"):
        table = np.load(new / name)
        assert table.shape[0] == n + a and np.array_equal(table[:n], np.load(old / name))
    assert json.loads((new / "config.json").read_text())["num_items"] == n  # the trained model's items
    assert json.loads((new / "onnx_io.json").read_text())["num_items"] == n + a
    meta = json.loads((new / "graph" / "meta.json").read_text())
    assert meta["num_items"] == n + a and meta["added_items"] == a and meta["metric"] == "score"
    # the calibrated walk is the model's: the grown graph keeps it, and so do its search defaults
    calibration = RunDir(old).graph.read_meta()[GraphDir.CALIBRATION]
    assert meta[GraphDir.CALIBRATION] == calibration
    searched = RunDir(new).search_defaults()
    assert (searched.ef, searched.frontier) == ((*calibration["descent_ef"], calibration["ef"]), calibration["frontier"])
    assert HnswGraph.load(new / "graph").num_items == n + a
    RunDir(new).check_servable()


def test_new_items_get_the_category_only_e_v_in_both_tables(items_added):
    import onnxruntime as ort
    import torch

    from nann.model import load_model

    run, n = items_added.run, items_added.num_old
    table = np.load(run / "item_embeddings.npy")
    added = table.shape[0] - n
    model = load_model(str(run))
    with torch.no_grad():  # trained items 0..added-1 given a zero id row and the new items' categories
        model.id_emb.weight[:added] = 0
        model.item_category[:added] = torch.from_numpy(Vocabulary.load(str(run)).item_category[n:].astype(np.int64))
        np.testing.assert_allclose(table[n:], model.item_embed(torch.arange(added)).numpy(), atol=1e-6)
    assert np.unique(table[n:], axis=0).shape[0] == added  # one per category: all different
    # scorer_ids.onnx (the TensorRT path) holds the grown table: its scores for new ids are scorer.onnx's for their e_v
    runtime = ModelRuntime.load(run)
    state = runtime.encode([np.arange(5), np.arange(7, 30)])
    ids = np.arange(n - 3, table.shape[0], dtype=np.int64)
    owner = (np.arange(ids.shape[0]) >= ids.shape[0] // 2).astype(np.int64)
    session = ort.InferenceSession(str(run / "scorer_ids.onnx"), providers=["CPUExecutionProvider"])
    by_id = session.run(["scores"], {**state, "cand_ids": ids, "owner": owner})[0]
    np.testing.assert_allclose(by_id, runtime.score(state, owner, ids), atol=1e-5)


# ---------------------------------------------------------------- retrievable

@pytest.fixture(scope="module")
def new_in_brute_top(items_added):
    """(test user, raw history, new dense ids in its brute-force top k) for every test user that has some (k: deep
    enough for several users, `items_added.k`)."""
    runtime = ModelRuntime.load(items_added.run)
    test = PreparedData.load(str(items_added.data)).test
    histories = [test.history(i) for i in range(len(test))]
    state = runtime.encode(histories)
    exact = brute_force(runtime.num_items, len(histories), lambda o, i: runtime.score(state, o, i),
                        items_added.k).ids
    vocab = Vocabulary.load(str(items_added.run))
    found = [(u, vocab.dense_to_raw(histories[u]), set(exact[u][exact[u] >= items_added.num_old].tolist()))
             for u in range(len(histories))]
    return [f for f in found if f[2]]


def test_new_items_are_retrieved_offline(items_added, new_in_brute_top):
    """A query whose brute-force top-K holds a new item finds it through the beam (widest search)."""
    assert len(new_in_brute_top) >= 3, "too few test users rank a new item high: the test would prove little"
    retriever = OfflineRetriever(items_added.run)
    params = parse_search(retriever.limits, k=items_added.k, **WIDEST)
    vocab = Vocabulary.load(str(items_added.run))
    for _, history, want in new_in_brute_top:
        answer, = retriever.retrieve([history], [params])
        assert want <= set(vocab.raw_to_dense(answer.item_ids).tolist())


def test_nann_retrieve_returns_a_new_item(items_added, new_in_brute_top, capsys):
    _, history, want = new_in_brute_top[0]
    code = cli_main(["retrieve", "--run", str(items_added.run), "--history", ",".join(map(str, history)),
                     "--k", str(items_added.k), "--frontier", "0", "--json",
                     "--ef", ",".join(map(str, WIDEST["ef"])), "--rounds", ",".join(map(str, WIDEST["rounds"]))])
    assert code == 0
    got = json.loads(capsys.readouterr().out)["item_ids"]
    assert set(Vocabulary.load(str(items_added.run)).items[sorted(want)].tolist()) <= set(got)


# ---------------------------------------------------------------- the run's other commands

def test_served_versions_keep_their_files_while_items_are_added(tiny_run, tmp_path):
    """Files are replaced, never rewritten: a version exported before (hard links) stays intact."""
    run = copy_run(tiny_run.run, tmp_path / "run")
    repo = tmp_path / "repo"
    export_repository(run, repo, scorer="onnxruntime")
    items = np.load(run / "items.npy")
    assert cli_main(["items", "add", "--run", str(run), "--csv", str(one_new_item_csv(run, tmp_path / "a.csv"))]) == 0
    verify_repository(repo)
    assert not (repo / "retrieve" / "1" / "graph" / HNSW_INDEX).exists()  # the builder's index is not served
    info = export_repository(run, repo, scorer="onnxruntime")
    assert info["num_items"] == items.shape[0] + 1 and info["model_version"] == 2


def test_export_only_graph_and_evaluate_accept_an_extended_run(items_added, tmp_path, capsys):
    run = copy_run(items_added.run, tmp_path / "run")
    table = np.load(run / "item_embeddings.npy")
    data = str(items_added.data)
    assert cli_main(["train", "--data", data, "--run", str(run), "--export-only"]) == 0
    assert "added with `nann items add`" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(run / "item_embeddings.npy"), table, atol=1e-6)  # the additions re-applied
    assert cli_main(["graph", "--run", str(run), "--m", "8", "--ef-construction", "40"]) == 0
    assert HnswGraph.load(run / "graph").num_items == table.shape[0] and (run / "graph" / HNSW_INDEX).is_file()
    assert cli_main(["evaluate", "--run", str(run), "--data", data, "--users", "10"]) == 0


# ---------------------------------------------------------------- what is refused or skipped

def test_known_repeated_and_malformed_rows_are_counted(items_added, tmp_path, capsys):
    run = copy_run(items_added.run, tmp_path / "run")
    known, cat = int(np.load(run / "items.npy")[3]), int(np.load(run / "categories.npy")[1])
    new = int(np.load(run / "items.npy").max()) + 1
    rows = [f"{new},{cat}", f"{known},{cat}", f"{new},{cat}", "x,1", ""] + [f"{new + i},{cat}" for i in range(1, 120)]
    assert cli_main(["items", "add", "--run", str(run), "--csv", str(write_csv(tmp_path / "a.csv", rows))]) == 0
    out, err = capsys.readouterr()
    assert "added 120 items" in out and "skipped 1 already in the vocabulary, 1 repeated in the file" in out
    assert "line 4 (non_integer): 'x,1'" in err
    assert cli_main(["items", "add", "--run", str(run), "--csv", str(tmp_path / "a.csv")]) == 0
    assert "nothing to add" in capsys.readouterr().out  # idempotent: a second run adds nothing


def test_items_file_as_prepare_reads_it(items_added, tmp_path, capsys):
    """A movies.dat-style file (`::`, no header, several '|'-separated categories: the first counts)."""
    run = copy_run(items_added.run, tmp_path / "run")
    cats = np.load(run / "categories.npy")
    new = int(np.load(run / "items.npy").max()) + 1
    rows = [f"{new + k}::Title {k}::{cats[k]}|{cats[-1]}" for k in range(3)] + [f"{new}::Again::{cats[-1]}"]
    path = write_csv(tmp_path / "movies.dat", rows)
    assert cli_main(["items", "add", "--run", str(run), "--csv", str(path), "--item-columns", "item=1,category=3"]) == 0
    out = capsys.readouterr().out
    assert "added 3 items" in out and "skipped 0 already in the vocabulary, 1 repeated in the file" in out
    vocab = Vocabulary.load(str(run))
    dense = vocab.raw_to_dense(new + np.arange(3))
    assert (dense >= items_added.num_old + len(cats)).all()
    np.testing.assert_array_equal(vocab.categories[vocab.category_of(dense)], cats[:3])


def test_unknown_category_refuses_the_file_and_changes_nothing(items_added, tmp_path, capsys):
    run = copy_run(items_added.run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    new = int(np.load(run / "items.npy").max()) + 1
    unknown = int(np.load(run / "categories.npy").max()) + 1
    csv = write_csv(tmp_path / "a.csv", [f"{new},{np.load(run / 'categories.npy')[0]}", f"{new + 1},{unknown}"])
    assert cli_main(["items", "add", "--run", str(run), "--csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert f"categories the model was not trained on (raw category ids {unknown})" in err and "nothing was added" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_graph_without_the_hnswlib_index_is_refused(items_added, tmp_path):
    run = copy_run(items_added.run, tmp_path / "run")
    (run / "graph" / HNSW_INDEX).unlink()
    csv = one_new_item_csv(run, tmp_path / "a.csv")
    with pytest.raises(UserError, match=f"has no {HNSW_INDEX}.*rebuild it with `nann graph`"):
        add_module.add_items(run, csv, progress=False)


def test_an_interrupted_move_is_finished_by_the_next_call(items_added, tmp_path, monkeypatch):
    run = copy_run(items_added.run, tmp_path / "run")
    n = np.load(run / "items.npy").shape[0]
    csv = one_new_item_csv(run, tmp_path / "a.csv")

    def crash(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(RunDir, "replace_graph", crash)
    with pytest.raises(RuntimeError, match="killed"):
        add_module.add_items(run, csv, progress=False)
    with pytest.raises(UserError, match="is inconsistent"):  # files moved, the graph not yet: export refuses
        RunDir(run).check_servable()
    monkeypatch.undo()
    assert add_module.add_items(run, csv, progress=False)["added"] == 0  # finishes the move, then finds it known
    RunDir(run).check_servable()
    assert HnswGraph.load(run / "graph").num_items == n + 1 and not (run / STAGING).exists()
