"""Deep Retrieval baseline: beam search, M-step, tiny end-to-end train + evaluate."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from nann.dr_model import PathIndex, beam_search, code_paths, path_codes
from trainer.dr_mstep import accumulate_topk, assign_paths, random_codes


def _stub(K, D, U, seed=0):
    """Fixed log-prob tables: layer d, user u, prefix code p -> log-softmax over K."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.log_softmax(torch.randn(U, K ** d, K, generator=g, dtype=torch.float64) * 2, dim=2)
              for d in range(D)]

    def step(d, users, prefix):
        code = torch.zeros(len(users), dtype=torch.long)
        for i in range(d):
            code = code * K + prefix[:, i]
        return tables[d][users, code]
    return tables, step


@pytest.mark.parametrize("K,D,B", [(4, 3, 5), (3, 4, 7), (5, 2, 25), (2, 3, 100)])
def test_beam_search_matches_exhaustive(K, D, B):
    U = 3
    tables, step = _stub(K, D, U, seed=K * 10 + D)
    paths, scores = beam_search(step, U, K, D, B)
    for u in range(U):
        allp = list(itertools.product(range(K), repeat=D))
        sc = []
        for p in allp:
            s, code = 0.0, 0
            for d in range(D):
                s += float(tables[d][u, code, p[d]])
                code = code * K + p[d]
            sc.append(s)
        order = np.argsort(-np.array(sc), kind="stable")[:min(B, K ** D)]
        assert [tuple(x) for x in paths[u].tolist()] == [allp[i] for i in order]
        np.testing.assert_allclose(scores[u].numpy(), np.array(sc)[order], rtol=1e-9)


def test_path_codes_roundtrip_and_index():
    rng = np.random.default_rng(0)
    codes = random_codes(40, 3, 6 ** 3, rng)
    assert (np.sort(codes, 1)[:, 1:] != np.sort(codes, 1)[:, :-1]).all()
    np.testing.assert_array_equal(path_codes(code_paths(codes, 6, 3), 6), codes)
    idx = PathIndex(codes)
    assert idx.sizes().sum() == 120
    got = idx.collect(codes[5, :1])
    assert 5 in got and all(codes[i, :].tolist().count(codes[5, 0]) for i in got)
    assert idx.collect(np.array([6 ** 3 + 1])).size == 0


def test_accumulate_topk_streams_sums_and_keeps_best():
    top_code = np.full((2, 2), -1, np.int64)
    top_score = np.zeros((2, 2))
    accumulate_topk(top_code, top_score, np.array([0, 0, 1]), np.array([[5, 6], [5, 7], [9, 8]]),
                    np.array([[0.5, 0.1], [0.3, 0.4], [0.2, 0.1]]), 1.0)
    row = dict(zip(top_code[0].tolist(), top_score[0].tolist()))
    assert row == pytest.approx({5: 0.8, 7: 0.4})       # 6 (0.1) evicted by 7 (0.4)
    assert dict(zip(top_code[1].tolist(), top_score[1].tolist())) == pytest.approx({9: 0.2, 8: 0.1})


def _skewed(N=60, S=6, J=3, seed=0):
    rng = np.random.default_rng(seed)
    top_code = np.stack([rng.permutation(np.arange(1, 30))[:S] for _ in range(N)])
    top_code[:, 0] = 0                                   # every item's favourite path is 0
    top_score = rng.uniform(0.5, 1.0, size=(N, S))
    top_score[:, 0] = 5.0
    counts = rng.integers(5, 20, size=N)
    prev = random_codes(N, J, 1000, rng) + 100
    return top_code, top_score, counts, prev


def test_mstep_assigns_exactly_j_distinct_paths_and_penalty_spreads():
    top_code, top_score, counts, prev = _skewed()
    sizes = {}
    for alpha in (0.0, 1e-2):
        new = assign_paths(top_code, top_score, counts, prev, alpha, rounds=2, seed=0)
        assert new.shape == prev.shape
        s = np.sort(new, 1)
        assert (s[:, 1:] != s[:, :-1]).all()             # J distinct
        for v in range(len(new)):                        # only candidates are used
            assert set(new[v]) <= set(top_code[v]) | set(prev[v])
        sizes[alpha] = PathIndex(new).sizes().max()
    assert sizes[0.0] == len(prev)                       # without penalty everybody takes path 0
    assert sizes[1e-2] < sizes[0.0]


def _write_tiny_data(d, n_items=300, n_users=200, n_test=30, n_val=20, seed=0):
    rng = np.random.default_rng(seed)
    n_cats = 10
    item_cat = (np.arange(n_items) % n_cats).astype(np.int32)
    seqs = []
    for _ in range(n_users):
        c = rng.integers(n_cats)
        pool = np.flatnonzero(item_cat == c)
        seqs.append(rng.choice(pool, size=rng.integers(12, 30)).astype(np.int32))
    train, val, test = seqs[:n_users - n_test - n_val], seqs[-n_test - n_val:-n_test], seqs[-n_test:]
    np.save(d / "items.npy", np.arange(n_items, dtype=np.int64) * 3 + 1)
    np.save(d / "categories.npy", np.arange(n_cats, dtype=np.int64))
    np.save(d / "item_category.npy", item_cat)
    allt = np.concatenate(train)
    np.save(d / "item_counts.npy", np.bincount(allt, minlength=n_items).astype(np.int64))
    np.savez(d / "train.npz", items=allt, offsets=np.concatenate([[0], np.cumsum([len(s) for s in train])]),
             user_ids=np.arange(len(train), dtype=np.int64))
    for name, part in (("val", val), ("test", test)):
        hs = [s[:math.ceil(len(s) / 2) - 1] for s in part]
        np.savez(d / f"{name}.npz", history_items=np.concatenate(hs).astype(np.int32),
                 history_offsets=np.concatenate([[0], np.cumsum([len(h) for h in hs])]).astype(np.int64),
                 targets=np.array([s[math.ceil(len(s) / 2) - 1] for s in part], dtype=np.int32),
                 user_ids=np.arange(len(part), dtype=np.int64))
    (d / "stats.json").write_text(json.dumps({"users": n_users, "items": n_items}))
    (d / "meta.json").write_text(json.dumps({"format_version": 1, "max_seq": 50, "min_behaviors": 10, "seed": 0}))


def test_tiny_end_to_end_deterministic(tmp_path):
    from safetensors.numpy import load_file

    from nann.dr_model import load_dr
    from nann.evaluate import evaluate_dr
    from trainer.deep_retrieval import train_dr

    data = tmp_path / "data"
    data.mkdir()
    _write_tiny_data(data)
    kw = dict(layers=2, nodes=8, paths=2, beam=8, alpha=1e-4, em_iterations=2, batch_size=128, max_samples=1500,
              mstep_samples=800, mstep_beam=6, top_s=6, negatives=32, emb_dim=16, hidden=32, node_dim=8, seed=3,
              quiet=True)
    train_dr(str(data), str(tmp_path / "a"), **kw)
    train_dr(str(data), str(tmp_path / "b"), **kw)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["arch"] == "deep-retrieval" and cfg["num_items"] == 300
    pa, pb = np.load(tmp_path / "a" / "item_paths.npy"), np.load(tmp_path / "b" / "item_paths.npy")
    assert pa.shape == (300, 2, 2) and pa.dtype == np.int32
    np.testing.assert_array_equal(pa, pb)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert len((tmp_path / "a" / "train_log.jsonl").read_text().splitlines()) == 3
    load_dr(str(tmp_path / "a"))

    m = evaluate_dr(str(tmp_path / "a"), str(data), users=0, top_m=20, quiet=True)
    for key in ("recall_retrieval", "recall_all", "recall_delta", "coverage", "scored_fraction", "items_scored",
                "seconds_per_query"):
        assert math.isfinite(m[key]), key
    assert m["users"] == 30 and 0 <= m["recall_retrieval"] <= 1 and 0 < m["items_scored"] <= 300
    full = evaluate_dr(str(tmp_path / "a"), str(data), top_m=20, beam=64, quiet=True)   # all 64 paths: exact
    assert full["items_scored"] == 300 and full["coverage"] == pytest.approx(1.0)
    assert full["recall_retrieval"] == pytest.approx(full["recall_all"])


def test_load_dr_rejects_other_runs(tmp_path):
    from nann.errors import UserError
    from nann.dr_model import load_dr

    with pytest.raises(UserError):
        load_dr(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"arch": "attention"}))
    with pytest.raises(UserError):
        load_dr(str(tmp_path))


def test_cli_trains_and_evaluates_deep_retrieval(tmp_path, capsys):
    from nann_cli.main import main as cli_main

    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    _write_tiny_data(data)
    assert cli_main(["train", "--arch", "deep-retrieval", "--data", str(data), "--run", str(run),
                     "--max-samples", "1500", "--batch-size", "256"]) == 0
    assert json.loads((run / "config.json").read_text())["arch"] == "deep-retrieval"
    assert cli_main(["evaluate", "--method", "dr", "--run", str(run), "--data", str(data), "--top-m", "20",
                     "--beam", "4", "--json", str(tmp_path / "dr.json")]) == 0
    m = json.loads((tmp_path / "dr.json").read_text())
    assert m["method"] == "dr" and m["users"] == 30 and math.isfinite(m["recall_retrieval"])
