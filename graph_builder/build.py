"""Build the HNSW graph over the item embeddings with hnswlib and export it to CSR arrays.

Output (see docs/DESIGN.md, "Graph"; the files: ``nann.run_dir.GraphDir``): the meta, the levels int8 [N], and for
every level l the CSR arrays indptr int64 [N+1] / indices int32 over dense item ids (rows of nodes that are not in
layer l are empty).

The export reads hnswlib's raw structures through ``Index.__getstate__()`` (hnswlib 0.8):

* ``data_level0``: ``cur_element_count`` records of ``size_data_per_element`` bytes, in internal-id order:
  a uint32 header whose low 16 bits are the link count, ``max_M0`` int32 links (internal ids), the vector
  (at ``offset_data``) and the uint64 label (at ``label_offset``);
* ``link_lists``: for each element with level > 0, in internal-id order, ``level`` blocks of
  ``size_links_per_element`` bytes (uint32 header + ``max_M`` int32 links), block k holding layer k+1;
* ``element_levels``, ``enterpoint_node`` (internal id), ``max_level``.

Internal ids are not the labels (items are added by several threads), so every id goes through the label
of its internal id; we add items with labels = dense ids.

The hnswlib index itself is saved beside the arrays (hnswlib's own binary format) so that ``nann items add`` can insert
new items into it (``extend_graph``) and export the grown graph again.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from graph_builder import GRAPH_EF_CONSTRUCTION, GRAPH_M, SCORE_METRIC_MAX_ITEMS, default_metric
from nann.calibration import calibrate_run, check_calibration_data, describe
from nann.engine.graph import HnswGraph
from nann.engine.params import SCALING_BASE_ITEMS, default_search
from nann.errors import UserError
from nann.run_dir import GraphDir, RunDir


def _layer_csr(labels_k: np.ndarray, counts_k: np.ndarray, links_k: np.ndarray,
               label_of_internal: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR over dense ids from the rows of the nodes in one layer.

    labels_k [K] dense id of each row, counts_k [K] link counts, links_k [K, maxM] internal ids.
    """
    order = np.argsort(labels_k, kind="stable")
    labels_k = labels_k[order]
    counts_k = counts_k[order].astype(np.int64)
    links_k = links_k[order]
    deg = np.zeros(num_items, dtype=np.int64)
    deg[labels_k] = counts_k
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    mask = np.arange(links_k.shape[1])[None, :] < counts_k[:, None]
    indices = label_of_internal[links_k[mask]].astype(np.int32)  # row-major: keeps each list's order
    return indptr, indices


def export_index(index, out_dir, extra_meta: dict | None = None) -> dict:
    """Export a built hnswlib index (labels = dense ids 0..N-1) to ``out_dir``; returns the meta dict (with
    ``extra_meta`` added)."""
    state = index.__getstate__()
    params = state[0] if isinstance(state, tuple) else state
    n = int(params["cur_element_count"])
    size_el = int(params["size_data_per_element"])
    off_data = int(params["offset_data"])
    label_off = int(params["label_offset"])
    max_m0 = int(params["max_M0"])
    max_m = int(params["max_M"])
    size_links = int(params["size_links_per_element"])
    if off_data != 4 * (max_m0 + 1) or size_links != 4 * (max_m + 1) or int(params.get("offset_level0", 0)) != 0:
        raise RuntimeError("unexpected hnswlib memory layout (is this hnswlib 0.8?)")

    data0 = np.asarray(params["data_level0"]).view(np.uint8)[: n * size_el].reshape(n, size_el)
    label_of_internal = np.ascontiguousarray(data0[:, label_off:label_off + 8]).view(np.uint64).ravel()
    label_of_internal = label_of_internal.astype(np.int64)
    if n and (label_of_internal.min() < 0 or label_of_internal.max() >= n
              or np.unique(label_of_internal).size != n):
        raise RuntimeError("labels of the index are not the dense ids 0..N-1")
    internal_levels = np.asarray(params["element_levels"], dtype=np.int64)[:n]
    levels = np.empty(n, dtype=np.int8)
    levels[label_of_internal] = internal_levels
    max_level = int(params["max_level"]) if n else 0
    entry_point = int(label_of_internal[int(params["enterpoint_node"])]) if n else 0

    out = GraphDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)

    def save_layer(level: int, indptr: np.ndarray, indices: np.ndarray) -> None:
        for path, array in zip(out.layer_files(level), (indptr, indices)):
            np.save(path, array)

    # layer 0
    head0 = np.ascontiguousarray(data0[:, :off_data]).view(np.uint32)  # [n, max_m0 + 1]
    counts0 = head0[:, 0] & 0xFFFF
    links0 = head0[:, 1:].view(np.int32)
    save_layer(0, *_layer_csr(label_of_internal, counts0, links0, label_of_internal, n))
    del head0, links0, data0

    # upper layers
    words = np.asarray(params["link_lists"]).view(np.uint8)
    words = np.ascontiguousarray(words).view(np.uint32)
    block = max_m + 1
    start = np.zeros(n, dtype=np.int64)  # word offset of each element's first block
    if n:
        np.cumsum(internal_levels[:-1] * block, out=start[1:])
    if n and int(internal_levels.sum()) * block != words.size:
        raise RuntimeError("unexpected hnswlib link_lists size")
    for lev in range(1, max_level + 1):
        members = np.nonzero(internal_levels >= lev)[0]
        rows = words[(start[members] + (lev - 1) * block)[:, None] + np.arange(block)[None, :]]
        counts = rows[:, 0] & 0xFFFF
        links = rows[:, 1:].view(np.int32)
        save_layer(lev, *_layer_csr(label_of_internal[members], counts, links, label_of_internal, n))
    np.save(out.levels_file, levels)
    return out.write_meta({"num_items": n, "max_level": max_level, "entry_point": entry_point, "m": int(params["M"]),
                           "ef_construction": int(params["ef_construction"]), **(extra_meta or {})})


def build_index(embeddings: np.ndarray, m: int = GRAPH_M, ef_construction: int = GRAPH_EF_CONSTRUCTION,
                threads: int = 0, seed: int = 100, chunk: int = 50_000, progress: bool = True):
    """The hnswlib index (space l2) over all rows of ``embeddings``, labels = row numbers."""
    import hnswlib

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {emb.shape}")
    n, d = emb.shape
    index = hnswlib.Index(space="l2", dim=d)
    index.init_index(max_elements=n, M=m, ef_construction=ef_construction, random_seed=seed)
    _add_items(index, emb, 0, threads, chunk, "hnsw build", progress)
    return index


def _add_items(index, vectors: np.ndarray, first_label: int, threads: int, chunk: int, desc: str,
               progress: bool) -> None:
    """index.add_items of every row of ``vectors`` (labels first_label, first_label + 1, ...) in chunks, with a
    progress bar; threads 0 = all cores."""
    from tqdm import tqdm

    index.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    n = vectors.shape[0]
    with tqdm(total=n, desc=desc, unit="item", disable=not progress) as bar:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            index.add_items(vectors[s:e], np.arange(first_label + s, first_label + e, dtype=np.int64))
            bar.update(e - s)


def extend_graph(graph_dir, embeddings: np.ndarray, out_dir, threads: int = 0, chunk: int = 10_000,
                 progress: bool = True) -> dict:
    """Insert new items into the hnswlib index kept in ``graph_dir`` and export the grown graph (arrays, index,
    metric) to ``out_dir``; ``graph_dir`` is left as it was. The new items get the labels N, N+1, ... in the
    order of ``embeddings`` (their e_v), taken into the graph's space (``e_v @ metric.npy`` for a graph built
    with --metric score). hnswlib also relinks old nodes to them. Returns the new meta, plus "insert_seconds"."""
    import hnswlib

    graph, out = GraphDir(graph_dir), GraphDir(out_dir)
    meta = graph.read_meta()
    if not graph.hnsw_index_file.is_file():
        raise UserError(f"{graph.path} has no {GraphDir.HNSW_INDEX} (graphs built before `nann items add` existed): "
                        f"rebuild it with `nann graph`")
    transform = np.load(graph.metric_file, allow_pickle=False) if meta.get("metric") == "score" else None
    space = np.ascontiguousarray(embeddings if transform is None else embeddings @ transform, dtype=np.float32)
    index = hnswlib.Index(space="l2", dim=space.shape[1])
    index.load_index(str(graph.hnsw_index_file))
    n = index.get_current_count()
    if n != meta["num_items"]:
        raise UserError(f"{graph.hnsw_index_file} holds {n} items, the graph {meta['num_items']}: rebuild it "
                        f"with `nann graph`")
    index.resize_index(n + space.shape[0])
    t0 = time.perf_counter()
    _add_items(index, space, n, threads, chunk, "hnsw insert", progress)
    seconds = time.perf_counter() - t0
    out.path.mkdir(parents=True, exist_ok=True)
    index.save_index(str(out.hnsw_index_file))
    if transform is not None:
        shutil.copy2(graph.metric_file, out.metric_file)
    # the calibrated walk stays: it is the model's (the score landscape), measured before the items came
    kept = {k: meta[k] for k in ("metric", "build_seconds", GraphDir.CALIBRATION) if k in meta}
    new_meta = export_index(index, out.path, {**kept, "added_items": meta.get("added_items", 0) + space.shape[0]})
    return {**new_meta, "insert_seconds": seconds}


def build_graph(embeddings: np.ndarray, out_dir, m: int = GRAPH_M, ef_construction: int = GRAPH_EF_CONSTRUCTION,
                threads: int = 0, seed: int = 100, transform: np.ndarray | None = None) -> None:
    """Build hnswlib's HNSW (L2) over ``embeddings`` (dense ids = row numbers) and export it to ``out_dir``.

    transform: a [D, D'] matrix; the graph is built over ``embeddings @ transform`` (graph_builder.metric) and the
    matrix is kept beside the graph (GraphDir.METRIC; items added later go through it too)."""
    t0 = time.perf_counter()
    space = embeddings if transform is None else np.asarray(embeddings, dtype=np.float32) @ transform
    index = build_index(space, m=m, ef_construction=ef_construction, threads=threads, seed=seed)
    t1 = time.perf_counter()
    out = GraphDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    if transform is not None:
        np.save(out.metric_file, transform.astype(np.float32))
    index.save_index(str(out.hnsw_index_file))
    meta = export_index(index, out.path, {"metric": "l2" if transform is None else "score",
                                          "build_seconds": round(t1 - t0, 1)})
    t2 = time.perf_counter()
    levels = np.load(out.levels_file)
    counts = [int((levels >= lev).sum()) for lev in range(meta["max_level"] + 1)]
    print(f"graph: {meta['num_items']} items, M={m}, efConstruction={ef_construction}: "
          f"built in {t1 - t0:.1f} s, exported in {t2 - t1:.1f} s")
    for lev, c in enumerate(counts):
        print(f"  level {lev}: {c} nodes")
    print(f"  entry point {meta['entry_point']}")


def main(args) -> int:
    run = RunDir(args.run)
    emb_path = run.item_embeddings_file
    if not emb_path.is_file():
        raise UserError(f"{emb_path} not found: run `nann train --run {run.path}` first")
    try:
        emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{emb_path} is not a readable .npy array ({e})") from None
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise UserError(f"{emb_path} must be a non-empty [N, D] array, got shape {emb.shape}")
    emb = np.asarray(emb, dtype=np.float32)
    metric = args.metric
    if metric == "auto":
        metric = default_metric(emb.shape[0])
        print(f"metric: {metric} for {emb.shape[0]} items (--metric auto: score up to {SCORE_METRIC_MAX_ITEMS})")
    data_dir = args.data or run_data_dir(run)
    calibrating = args.calibrate and emb.shape[0] < SCALING_BASE_ITEMS  # above, the size rule holds by construction
    if calibrating:
        check_calibration_data(data_dir)  # before the build: a missing --data must not cost a build
    transform = score_metric(run, emb, data_dir, args.seed, args.threads) if metric == "score" else None
    staged = run.new_graph()  # built aside, then put in place: a rebuild never rewrites files a served version links
    build_graph(emb, staged.path, m=args.m, ef_construction=args.ef_construction, threads=args.threads,
                seed=args.seed, transform=transform)
    if calibrating:
        calibration = calibrate_run(run.path, HnswGraph.load(staged.path), data_dir)
        staged.write_meta({**staged.read_meta(), GraphDir.CALIBRATION: calibration})
        print(describe(calibration))
    else:
        why = "--no-calibrate" if not args.calibrate else f"{emb.shape[0]:,} items, at least {SCALING_BASE_ITEMS:,}"
        print(f"search defaults: the catalogue size's last-layer ef {default_search(emb.shape[0]).ef[-1]} ({why})")
    run.replace_graph(staged)
    print(f"  -> {run.graph.path}")
    return 0


def run_data_dir(run: RunDir) -> str | None:
    """The prepared data the run was trained on (the data_dir of its config), None where the config names none."""
    try:
        return run.read_config()["data_dir"]
    except (UserError, KeyError, ValueError):
        return None


def score_metric(run: RunDir, emb: np.ndarray, data_dir: str | None, seed: int, threads: int = 0) -> np.ndarray:
    """graph_builder.metric's transform for a run, from its model and the training histories of its data."""
    import torch

    from graph_builder.metric import USERS, score_sensitivity, training_histories
    from nann.data.prepared import PreparedData
    from nann.model import load_model

    data_dir = data_dir or run_data_dir(run)
    if not data_dir or not Path(data_dir).is_dir():
        raise UserError(f"--metric score needs the run's training data to find what users rank high: pass "
                        f"--data DATA_DIR (the prepared data the run was trained on), or --metric l2")
    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(str(run.path))
    if emb.shape[0] < model.cfg.num_items:  # more is a run extended by `nann items add`: valid
        raise UserError(f"{run.weights_file} has {model.cfg.num_items} items but {run.item_embeddings_file.name} only "
                        f"{emb.shape[0]}: re-export the run (`nann train --run {run.path} --export-only`)")
    prepared = PreparedData.load(str(data_dir))
    histories = training_histories(prepared.train, model.cfg.max_seq, USERS, seed)
    transform = score_sensitivity(model, emb, histories, seed)
    print(f"score-sensitivity metric from {len(histories)} training users in {time.perf_counter() - t0:.1f} s")
    return transform
