import argparse
import json

import numpy as np
import pytest

from nann.data.prepare import prepare_arrays, split_counts
from nann.data.prepared import PreparedData, Vocabulary
from nann.errors import UserError

TS = 1511568000
# (user, item, category, time offset) in FILE order (deliberately not sorted; U100 has a timestamp tie 5/5)
ROWS = [
    (300, 1000, 70, 2), (100, 30, 60, 5), (200, 2000, 70, 4), (100, 7, 50, 3), (300, 500, 50, 1),
    (400, 99999, 80, 1), (200, 7, 60, 5), (100, 500, 50, 5), (500, 2000, 70, 1), (300, 7, 50, 4),
    (200, 1000, 70, 1), (300, 2000, 70, 3), (500, 7, 50, 3), (100, 30, 60, 9), (200, 7, 50, 2),
    (300, 30, 60, 5), (500, 2000, 70, 2), (200, 30, 60, 3), (300, 500, 50, 6), (400, 99999, 80, 2),
    (500, 30, 60, 4), (300, 1000, 70, 7), (500, 500, 50, 5), (500, 7, 50, 6),
]
# time-sorted raw sequences of the kept users (min_behaviors=3), ties in file order
SEQS = {100: [7, 30, 500, 30], 200: [1000, 7, 30, 2000, 7], 300: [500, 1000, 2000, 7, 30, 500, 1000],
        500: [2000, 2000, 7, 30, 500, 7]}
# max_seq=2: target = ceil(l/2)-th behaviour, history = at most 2 behaviours right before it
EXPECTED = {100: ([7], 30), 200: ([1000, 7], 30), 300: ([1000, 2000], 7), 500: ([2000, 2000], 7)}
ITEMS = [7, 30, 500, 1000, 2000]


def write_csv(path, rows=ROWS):
    beh = ["pv", "buy", "cart", "fav"]
    path.write_text("".join(f"{u},{i},{c},{beh[k % 4]},{TS + t}\n" for k, (u, i, c, t) in enumerate(rows)))
    return str(path)


def prep_args(csv, out, **kw):
    a = dict(csv=csv, input=None, format="auto", columns=None, delimiter=None, encoding=None, no_header=False,
             hash_ids=None, min_rating=None, time_window=None, items=None, item_columns=None, item_delimiter=None,
             category_separator="|", out=str(out), split="users", max_seq=2, min_behaviors=3, test_users=10_000,
             val_users=10_000, max_malformed=0.01, seed=0)
    a.update(kw)
    return argparse.Namespace(**a)


def to_raw(vocab, dense):
    return vocab.dense_to_raw(np.asarray(dense)).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_rules_exact(tmp_path, seed):
    from nann.data.prepare import main
    out = tmp_path / "data"
    assert main(prep_args(write_csv(tmp_path / "ub.csv"), out, seed=seed)) == 0
    d = PreparedData.load(str(out))
    v = d.vocab
    np.testing.assert_array_equal(v.items, ITEMS)
    assert v.items.dtype == np.int64
    np.testing.assert_array_equal(np.load(out / "categories.npy"), [50, 60, 70])
    # item 7 first appears (file order) with category 50, later also with 60: first seen wins
    np.testing.assert_array_equal(v.item_category, [0, 1, 0, 2, 2])
    assert v.item_category.dtype == np.int32
    # 4 kept users -> val/test clipped to max(1, 4 // 10) = 1 each
    assert len(d.val) == 1 and len(d.test) == 1 and d.train.num_users == 2
    seen = []
    for split in (d.val, d.test):
        assert split.history_items.dtype == np.int32 and split.targets.dtype == np.int32
        assert split.history_offsets.dtype == np.int64 and split.user_ids.dtype == np.int64
        for k in range(len(split)):
            u = int(split.user_ids[k])
            hist, target = EXPECTED[u]
            assert to_raw(v, split.history(k)) == hist
            assert to_raw(v, split.histories[k]) == hist
            assert to_raw(v, [split.targets[k]]) == [target]
            seen.append(u)
    tr = d.train
    assert tr.items.dtype == np.int32 and tr.offsets.dtype == np.int64
    assert list(tr.user_ids) == sorted(tr.user_ids)
    for k, u in enumerate(tr.user_ids.tolist()):
        assert to_raw(v, tr.sequence(k)) == SEQS[u]
        seen.append(u)
    assert sorted(seen) == sorted(SEQS)  # 400 dropped (2 behaviours), every kept user in exactly one split
    assert tr.num_samples == sum(len(SEQS[u]) - 1 for u in tr.user_ids.tolist())
    counts = np.zeros(5, np.int64)
    for u in tr.user_ids.tolist():
        for it in SEQS[u]:
            counts[ITEMS.index(it)] += 1
    np.testing.assert_array_equal(d.item_counts, counts)
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"format_version": 1, "max_seq": 2, "min_behaviors": 3, "seed": seed, "split": "users"}
    st = d.stats
    assert (st["users"], st["items"], st["categories"], st["rows"], st["valid_rows"]) == (4, 5, 3, 24, 24)
    assert st["train_users"] + st["val_users"] + st["test_users"] == 4
    assert st["samples"] == tr.num_samples and sum(st["malformed"].values()) == 0


def test_targets_all_users_max_seq_and_lengths():
    """Many users with lengths 2..40: every val/test user gets exactly the ceil(l/2) rule."""
    rng = np.random.default_rng(5)
    users, items, ts = [], [], []
    for u in range(200):
        l = 2 + u % 39
        users += [1000 + u] * l
        items += rng.integers(0, 50, l).tolist()
        ts += sorted(rng.integers(TS, TS + 100, l).tolist())
    users, items, ts = map(np.array, (users, items, ts))
    perm = rng.permutation(users.shape[0])
    u, i, t = users[perm], items[perm], ts[perm]
    o = prepare_arrays(u, i, np.zeros_like(i), t, max_seq=5, min_behaviors=4, val_users=15, test_users=15, seed=3,
                       split="users")
    vocab = o["items"]
    assert o["counts"]["users"] == sum(1 for k in range(200) if 2 + k % 39 >= 4)
    # reference: stable sort by time within each user (file order = perm order)
    for name in ("val", "test"):
        s = o[name]
        assert len(s["targets"]) == 15
        for k, uid in enumerate(s["user_ids"].tolist()):
            rows = np.flatnonzero(u == uid)
            seq = i[rows][np.argsort(t[rows], kind="stable")]
            p = -(-len(seq) // 2)  # ceil(l/2), 1-based
            hist = vocab[s["history_items"][s["history_offsets"][k]:s["history_offsets"][k + 1]]]
            assert vocab[s["targets"][k]] == seq[p - 1]
            np.testing.assert_array_equal(hist, seq[max(0, p - 1 - 5):p - 1])


def test_split_counts_clipping():
    assert split_counts(1_000_000, 10_000, 10_000) == (10_000, 10_000)
    assert split_counts(20_000, 10_000, 10_000) == (2_000, 2_000)
    assert split_counts(4, 10_000, 10_000) == (1, 1)
    assert split_counts(50, 0, 3) == (0, 3)


def test_too_few_users(tmp_path):
    from nann.data.prepare import main
    with pytest.raises(UserError, match="at least 50 behaviours"):
        main(prep_args(write_csv(tmp_path / "ub.csv"), tmp_path / "o", min_behaviors=50))


def test_bad_args(tmp_path):
    from nann.data.prepare import main
    with pytest.raises(UserError, match="--max-seq"):
        main(prep_args("x.csv", tmp_path / "o", max_seq=0))
    with pytest.raises(UserError, match="--max-malformed"):
        main(prep_args("x.csv", tmp_path / "o", max_malformed=2.0))


def test_vocabulary_round_trip():
    v = Vocabulary(np.array([3, 17, 1000, 10**12]), np.array([0, 1, 1, 0], dtype=np.int32))
    raw = np.array([1000, 3, 10**12, 17, 4, 0, 10**13, -5])
    dense = v.raw_to_dense(raw)
    np.testing.assert_array_equal(dense, [2, 0, 3, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(v.dense_to_raw(dense[:4]), raw[:4])
    np.testing.assert_array_equal(v.dense_to_raw(np.arange(4)), v.items)
    np.testing.assert_array_equal(v.raw_to_dense(v.items), np.arange(4))
    assert v.num_items == 4


def test_prepared_load_errors(tmp_path):
    from nann.data.prepare import main
    with pytest.raises(UserError, match="not found"):
        PreparedData.load(str(tmp_path / "missing"))
    out = tmp_path / "d"
    main(prep_args(write_csv(tmp_path / "ub.csv"), out))
    (out / "meta.json").write_text(json.dumps({"format_version": 99, "max_seq": 2}))
    with pytest.raises(UserError, match="format_version 99"):
        PreparedData.load(str(out))
    (out / "val.npz").unlink()
    with pytest.raises(UserError, match="missing val.npz"):
        PreparedData.load(str(out))
