import hashlib

import numpy as np

from nann_cli.main import main as cli_main
from nann.data.reader import read_user_behavior
from nann.data.synth import WINDOW_SECONDS, WINDOW_START, synthesize


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_determinism(tmp_path):
    a, n = synthesize(str(tmp_path / "a"), 300, 2000, 40, seed=7, progress=False)
    b, _ = synthesize(str(tmp_path / "b"), 300, 2000, 40, seed=7, progress=False)
    c, _ = synthesize(str(tmp_path / "c"), 300, 2000, 40, seed=8, progress=False)
    assert n > 300 * 10
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_realism(tmp_path):
    path, n = synthesize(str(tmp_path), 1500, 5000, 100, seed=1, progress=False)
    r = read_user_behavior(path, max_malformed=0.0, progress=False)
    assert r.valid_rows == r.rows == n
    # sparse, non-contiguous raw ids
    for ids in (r.user, r.item, r.category):
        u = np.unique(ids)
        assert u.max() > 5 * len(u) and not np.all(np.diff(u) == 1)
    assert len(np.unique(r.user)) == 1500
    # an item has exactly one category; categories are skewed in size
    pairs = np.unique(np.stack([r.item, r.category]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]
    cat_sizes = np.sort(np.unique(pairs[1], return_counts=True)[1])[::-1]
    assert cat_sizes[0] > 4 * np.median(cat_sizes)
    # popularity skew: top 1% of items hold a large share of the rows
    counts = np.sort(np.unique(r.item, return_counts=True)[1])[::-1]
    assert counts[: max(1, len(counts) // 100)].sum() > 0.08 * n
    # timestamps in the window, rows not sorted by (user, time) in the file
    assert r.timestamp.min() >= WINDOW_START and r.timestamp.max() < WINDOW_START + WINDOW_SECONDS
    order = np.lexsort((r.timestamp, r.user))
    assert not np.array_equal(order, np.arange(n))
    # per user: several categories; timestamps strictly increasing once sorted; long-tailed lengths
    uid, inv, lens = np.unique(r.user, return_inverse=True, return_counts=True)
    ncat = [len(np.unique(r.category[inv == k])) for k in range(100)]
    assert np.median(ncat) >= 3
    ts_sorted = r.timestamp[order]
    same_user = np.diff(r.user[order]) == 0
    assert np.all(np.diff(ts_sorted)[same_user] > 0)
    assert np.mean(lens >= 10) > 0.9 and lens.max() > 3 * np.median(lens)
    # behaviour mix
    share = np.bincount(r.behavior, minlength=4) / n
    assert 0.85 < share[0] < 0.93 and all(0.01 < s < 0.08 for s in share[1:])


def test_cli_end_to_end(tmp_path, capsys):
    raw = tmp_path / "raw"
    data = tmp_path / "data"
    assert cli_main(["data", "synth", "--out", str(raw), "--users", "200", "--items", "1000",
                     "--categories", "20", "--seed", "3"]) == 0
    assert cli_main(["data", "prepare", "--csv", str(raw / "UserBehavior.csv"), "--out", str(data),
                     "--test-users", "10", "--val-users", "10"]) == 0
    from nann.data.prepared import PreparedData
    d = PreparedData.load(str(data))
    assert len(d.test) == 10 and len(d.val) == 10 and d.train.num_users > 100
    assert d.num_items > 100 and d.train.num_samples > 1000
    capsys.readouterr()
    rc = cli_main(["data", "prepare", "--csv", str(tmp_path / "nope.csv"), "--out", str(data)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("nann data: error:") and "nope.csv" in err and "\n" not in err
