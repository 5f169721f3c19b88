"""The runs `perf.gpu_check` measures on a machine that has no hnswlib and gets nothing but a small pack.

* `random_run`: a model of the default `ModelConfig` with its initial (random) weights over N items, written as a run
  directory by the trainer's own export (`trainer.export.write_run_artifacts`), with an identity vocabulary.
* the pack (`make_pack` here, `unpack_run` there): a trained run's weights, vocabulary and graph arrays, plus some of
  its test users' histories: everything the run's other files are made from. `unpack_run` re-exports the item table
  and the ONNX files from the weights (they are most of a run's bytes), so the 100k-item demo run travels in ~23 MiB.
* `knn_graph`: `graph_builder.knn_layers` over a run's item embeddings, into the run's graph directory.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from nann.errors import UserError
from nann.run_dir import RunDir

PACK_LIMIT = 48 << 20   # bytes: what may travel with the device command besides the repository
PACK_META = "pack.json"
HISTORIES = "histories.npz"  # raw item ids of test users: "items" (concatenated), "offsets" [U+1]
PACK_USERS = 2000


def random_run(run_dir, num_items: int, num_categories: int = 500, seed: int = 0) -> RunDir:
    """A run of the default ModelConfig with random (initial) weights over ``num_items`` items whose raw id is the
    dense id, categories drawn uniformly."""
    import torch

    from nann.model import ModelConfig, NANNModel
    from trainer.export import write_run_artifacts

    torch.manual_seed(seed)
    item_category = np.random.default_rng(seed).integers(0, num_categories, num_items)
    model = NANNModel(ModelConfig(num_items=num_items, num_categories=num_categories), torch.from_numpy(item_category))
    run = RunDir(run_dir)
    write_run_artifacts(model, str(run.path))
    run.write_vocabulary(np.arange(num_items, dtype=np.int64), item_category.astype(np.int32))
    return run


def knn_graph(run: RunDir, device: str, seed: int = 100) -> dict:
    """The kNN-layered graph over the run's item embeddings (L2), as the run's graph."""
    from graph_builder.knn_layers import build_knn_graph

    staged = run.new_graph()
    meta = build_knn_graph(run.item_embeddings(), staged.path, device=device, seed=seed)
    run.replace_graph(staged)
    return meta


# ---- the pack ----------------------------------------------------------------------------------------------------
def _pack_files(run: RunDir) -> list[Path]:
    files = [run.config_file, run.weights_file, *run.vocabulary_files()]
    return [p for p in files if p.is_file()] + run.graph.served_files()


def make_pack(run_dir, data_dir, pack_dir, limit: int = PACK_LIMIT) -> int:
    """Write the pack of a trained run with a graph into ``pack_dir`` (replaced); returns its bytes. UserError when it
    would exceed ``limit`` or the run lacks what it needs. ``data_dir``: the run's prepared data (None: the one its
    config names), whose test users' histories travel along."""
    from nann.data.prepared import PreparedData

    run = RunDir(run_dir)
    run.require([run.config_file, run.weights_file, run.items_file, run.graph.meta_file],
                f"pack a trained run with a graph (`nann train`, `nann graph`)")
    data_dir = data_dir or run.read_config().get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        raise UserError(f"the pack holds test users of the run's prepared data: pass --data DATA_DIR")
    files = _pack_files(run)
    prepared = PreparedData.load(str(data_dir))
    test = prepared.test
    histories = [prepared.vocab.dense_to_raw(test.history(i)) for i in range(min(PACK_USERS, len(test)))]
    items = np.concatenate(histories).astype(np.int64)
    size = sum(p.stat().st_size for p in files) + items.nbytes + 8 * (len(histories) + 1) + 4096
    if size > limit:
        raise UserError(f"the pack of {run.path} would be {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB "
                        f"that may travel with the device command: pack a smaller run")
    pack = RunDir(pack_dir)
    shutil.rmtree(pack.path, ignore_errors=True)
    pack.graph.path.mkdir(parents=True)
    for p in files:
        shutil.copyfile(p, pack.path / p.relative_to(run.path))
    np.savez(pack.path / HISTORIES, items=items, offsets=np.cumsum([0] + [len(h) for h in histories]))
    meta = {"run": str(run.path.resolve()), "data": str(Path(data_dir).resolve()), "num_items": run.vocabulary_size(),
            "users": len(histories)}
    (pack.path / PACK_META).write_text(json.dumps(meta))
    return sum(p.stat().st_size for p in pack.path.rglob("*") if p.is_file())


def check_pack(pack_dir) -> RunDir:
    """The pack at ``pack_dir``; UserError when there is none."""
    pack = RunDir(pack_dir)
    if not (pack.path / PACK_META).is_file():
        raise UserError(f"{pack.path} is not a pack: make one with `python -m perf.gpu_check --pack {pack.path} "
                        f"--run RUN_DIR`")
    return pack


def unpack_run(pack_dir, run_dir) -> tuple[RunDir, list[np.ndarray], dict]:
    """The packed run as a complete run directory at ``run_dir`` (its item table and ONNX files exported again from
    the weights), its test users' raw histories and the pack's meta."""
    from nann.model import load_model
    from trainer.export import write_run_artifacts

    pack = check_pack(pack_dir)
    run = RunDir(run_dir)
    shutil.rmtree(run.path, ignore_errors=True)
    shutil.copytree(pack.path, run.path)
    write_run_artifacts(load_model(str(run.path)), str(run.path), config=run.read_config())
    with np.load(run.path / HISTORIES, allow_pickle=False) as h:
        items, offsets = h["items"], h["offsets"]
    histories = [items[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return run, histories, json.loads((pack.path / PACK_META).read_text())
