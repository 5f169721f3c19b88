"""Graph export (graph_builder.build) and loading (nann.engine.graph)."""
from __future__ import annotations

import json
import struct
import time
from types import SimpleNamespace

import numpy as np
import pytest

from graph_builder.build import build_graph, build_index, export_index
from nann.engine.graph import HnswGraph
from nann.run_dir import GraphDir
from nann.errors import UserError


def _parse_saved_index(path):
    """Independent reader of hnswlib's save_index file: {level: {label: [labels]}}, levels, entry point."""
    b = open(path, "rb").read()
    fmt = "<QQQQQQiIQQQdQ"
    (_off0, _maxel, n, size_el, label_off, off_data, max_level, ep, max_m, max_m0, _m, _mult,
     _efc) = struct.unpack_from(fmt, b, 0)
    pos = struct.calcsize(fmt)
    data0 = b[pos:pos + n * size_el]
    pos += n * size_el
    labels = [struct.unpack_from("<Q", data0, i * size_el + label_off)[0] for i in range(n)]
    links = {}
    levels = {}
    for i in range(n):
        rec = data0[i * size_el:(i + 1) * size_el]
        cnt = struct.unpack_from("<H", rec, 0)[0]
        ids = struct.unpack_from(f"<{cnt}I", rec, 4)
        links.setdefault(0, {})[labels[i]] = [labels[j] for j in ids]
    for i in range(n):
        size = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        blk = 4 * (max_m + 1)
        lev = size // blk
        levels[labels[i]] = lev
        for k in range(lev):
            off = pos + k * blk
            cnt = struct.unpack_from("<H", b, off)[0]
            ids = struct.unpack_from(f"<{cnt}I", b, off + 4)
            links.setdefault(k + 1, {})[labels[i]] = [labels[j] for j in ids]
        pos += size
    assert pos == len(b)
    return links, levels, labels[ep], max_level


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    d = tmp_path_factory.mktemp("g")
    index = build_index(x, m=6, ef_construction=30, threads=2, seed=7, chunk=700, progress=False)
    index.save_index(str(d / "index.bin"))
    meta = export_index(index, d / "graph")
    return x, d, index, meta


def test_export_matches_hnswlib(built):
    x, d, index, meta = built
    links, levels, ep, max_level = _parse_saved_index(d / "index.bin")
    g = HnswGraph.load(d / "graph")
    assert g.num_items == len(x) == meta["num_items"]
    assert g.max_level == max_level == meta["max_level"] >= 2
    assert g.entry_point == ep == meta["entry_point"]
    assert meta["m"] == 6 and meta["ef_construction"] == 30 and meta["format_version"] == 1
    assert [int(g.levels[i]) for i in range(len(x))] == [levels[i] for i in range(len(x))]
    assert int(g.levels[g.entry_point]) == g.max_level
    for lev in range(max_level + 1):
        indptr, indices = g.layer(lev)
        assert indptr.dtype == np.int64 and indices.dtype == np.int32
        for node in range(len(x)):
            got = indices[indptr[node]:indptr[node + 1]].tolist()
            assert got == links.get(lev, {}).get(node, []), (lev, node)
        members = g.nodes_at_level(lev)
        assert members.dtype == np.int32
        assert set(members.tolist()) == {i for i in range(len(x)) if levels[i] >= lev}


def test_export_is_a_usable_graph(built):
    """Greedy search on the exported layer 0 finds near neighbours (sanity of the id mapping)."""
    x, d, index, _ = built
    g = HnswGraph.load(d / "graph")
    indptr, indices = g.layer(0)
    deg = np.diff(indptr)
    assert deg.min() >= 1
    # neighbours are much closer than random pairs
    src = np.repeat(np.arange(len(x)), deg)
    dn = ((x[src] - x[indices]) ** 2).sum(1).mean()
    dr = ((x[src] - x[np.random.default_rng(1).permutation(src)]) ** 2).sum(1).mean()
    assert dn < 0.5 * dr


def test_build_graph_writes_files(tmp_path, capsys):
    x = np.random.default_rng(2).standard_normal((500, 4)).astype(np.float32)
    build_graph(x, tmp_path / "graph", m=4, ef_construction=20)
    out = capsys.readouterr().out
    assert "level 0: 500 nodes" in out
    meta = json.loads((tmp_path / "graph" / "meta.json").read_text())
    assert meta["num_items"] == 500
    for lev in range(meta["max_level"] + 1):
        assert (tmp_path / "graph" / f"layer{lev}_indptr.npy").is_file()
    assert np.load(tmp_path / "graph" / "levels.npy").dtype == np.int8


def test_main_requires_embeddings(tmp_path):
    from graph_builder.build import main
    args = SimpleNamespace(run=str(tmp_path), m=4, ef_construction=20, threads=1, seed=1, metric="l2", data=None,
                           calibrate=True)
    with pytest.raises(UserError, match="nann train"):
        main(args)
    np.save(tmp_path / "item_embeddings.npy", np.random.default_rng(0).standard_normal((300, 4)).astype("f4"))
    # no prepared data: the calibration of the search defaults asks for it (or --no-calibrate) before building
    with pytest.raises(UserError, match="--data DATA_DIR .* or --no-calibrate"):
        main(args)
    assert not (tmp_path / "graph").exists()
    args.calibrate = False
    assert main(args) == 0
    assert GraphDir.CALIBRATION not in GraphDir(tmp_path / "graph").read_meta()
    assert HnswGraph.load(tmp_path / "graph").num_items == 300
    first = (tmp_path / "graph" / "layer0_indices.npy").stat().st_ino
    assert main(args) == 0  # a rebuild swaps in a new directory: files an export hard-links are never rewritten
    assert (tmp_path / "graph" / "layer0_indices.npy").stat().st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph", "item_embeddings.npy"]
    assert (tmp_path / "graph" / GraphDir.HNSW_INDEX).is_file()


def test_main_auto_metric_follows_the_catalogue_size(tmp_path, capsys):
    import graph_builder.build as build
    from graph_builder import SCORE_METRIC_MAX_ITEMS, default_metric

    assert default_metric(SCORE_METRIC_MAX_ITEMS) == "score" and default_metric(SCORE_METRIC_MAX_ITEMS + 1) == "l2"
    np.save(tmp_path / "item_embeddings.npy", np.random.default_rng(0).standard_normal((300, 4)).astype("f4"))
    args = SimpleNamespace(run=str(tmp_path), m=4, ef_construction=20, threads=1, seed=1, metric="auto", data=None,
                           calibrate=False)
    # no training data beside this run: the score metric (auto's choice at 300 items) asks for it by name
    with pytest.raises(UserError, match="--metric score needs the run's training data"):
        build.main(args)
    assert "metric: score for 300 items" in capsys.readouterr().out


def _write_big_graph(d, n, deg=8):
    d.mkdir()
    rng = np.random.default_rng(0)
    levels = np.zeros(n, dtype=np.int8)
    levels[rng.choice(n, n // 32, replace=False)] = 1
    ep = int(np.nonzero(levels)[0][0])
    levels[ep] = 2
    np.save(d / "levels.npy", levels)
    for lev in range(3):
        members = np.nonzero(levels >= lev)[0]
        cnt = np.zeros(n, dtype=np.int64)
        cnt[members] = min(deg, len(members) - 1) if len(members) > 1 else 0
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(cnt, out=indptr[1:])
        indices = rng.choice(members, int(indptr[-1])).astype(np.int32)
        np.save(d / f"layer{lev}_indptr.npy", indptr)
        np.save(d / f"layer{lev}_indices.npy", indices)
    (d / "meta.json").write_text(json.dumps({"num_items": n, "max_level": 2, "entry_point": ep, "m": 4,
                                             "ef_construction": 40, "format_version": 1}))


def test_load_maps_and_is_fast(tmp_path):
    d = tmp_path / "big"
    _write_big_graph(d, 1_000_000)
    t0 = time.perf_counter()
    g = HnswGraph.load(d)
    dt = time.perf_counter() - t0
    assert dt < 0.5, dt
    assert isinstance(g.levels, np.memmap)
    for lev in range(3):
        p, i = g.layer(lev)
        assert isinstance(p, np.memmap) and isinstance(i, np.memmap)
        assert not p.flags.writeable
    assert g.num_items == 1_000_000 and g.max_level == 2
    assert len(g.nodes_at_level(1)) == 1_000_000 // 32
    assert g.nodes_at_level(2).tolist() == [g.entry_point]
    g2 = HnswGraph.load(d, mmap=False)
    assert not isinstance(g2.levels, np.memmap)


def test_load_errors(tmp_path, built):
    _, d, _, _ = built
    with pytest.raises(UserError, match="meta.json"):
        HnswGraph.load(tmp_path / "nothing")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(d / "graph", bad)
    (bad / "layer1_indices.npy").unlink()
    with pytest.raises(UserError, match="layer1_indices.npy"):
        HnswGraph.load(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(d / "graph", bad2)
    (bad2 / "levels.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="levels.npy"):
        HnswGraph.load(bad2)
    bad3 = tmp_path / "bad3"
    shutil.copytree(d / "graph", bad3)
    np.save(bad3 / "layer0_indptr.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(UserError, match="layer0_indptr.npy"):
        HnswGraph.load(bad3)
    (bad3 / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="meta.json"):
        HnswGraph.load(bad3)
