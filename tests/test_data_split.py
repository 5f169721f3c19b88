"""`nann data prepare --split`: leave-last-out on a hand-made log, exactly; the auto choice and its record."""
import json
import subprocess
import sys

import numpy as np
import pytest

from nann_cli.main import main as cli_main
from nann.data import prepare as prepare_module
from nann.data.prepare import choose_split, prepare_arrays
from nann.data.prepared import PreparedData
from nann.errors import UserError
from trainer.sampling import load_data

TS = 1511568000
# (user, item, time offset) in FILE order; user 20 has a timestamp tie (3, 3: file order keeps 40 before 41)
ROWS = [
    (10, 1, 5), (20, 40, 3), (30, 7, 1), (10, 2, 1), (20, 41, 3), (10, 3, 2), (30, 8, 2), (20, 42, 1),
    (10, 4, 3), (30, 9, 3), (20, 43, 9), (10, 5, 4), (30, 1, 4), (20, 44, 2), (10, 6, 6), (20, 1, 8),
    (40, 1, 1), (40, 2, 2), (20, 45, 7),
]
# time-ordered sequences of the users with at least 3 behaviours (40 has 2)
SEQS = {10: [2, 3, 4, 5, 1, 6], 20: [42, 44, 40, 41, 45, 1, 43], 30: [7, 8, 9, 1]}


def write_log(path, rows=ROWS):
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{TS + t}\n" for u, i, t in rows))
    return path


def prepare(tmp_path, *extra, rows=ROWS):
    out = tmp_path / "data"
    assert cli_main(["data", "prepare", "--input", str(write_log(tmp_path / "log.csv", rows)), "--columns",
                     "user=user,item=item,time=time", "--out", str(out), *map(str, extra)]) == 0
    return out


def raw_split(d, name):
    """{raw user: (raw history, raw target)} of val or test."""
    s = getattr(d, name)
    raw = d.vocab.dense_to_raw
    return {int(u): (raw(s.history(k)).tolist(), int(raw([s.targets[k]])[0])) for k, u in enumerate(s.user_ids)}


def test_leave_last_out_exact(tmp_path):
    out = prepare(tmp_path, "--split", "last", "--min-behaviors", 4, "--max-seq", 2)
    d = PreparedData.load(str(out))
    # users 10, 20, 30 kept (40 has 2 < 4); every one trains on all but its last two behaviours
    train = {int(u): d.vocab.dense_to_raw(d.train.sequence(k)).tolist() for k, u in enumerate(d.train.user_ids)}
    assert train == {10: [2, 3, 4, 5], 20: [42, 44, 40, 41, 45], 30: [7, 8]}
    # test: the last behaviour, history the (at most 2) before it; validation: the one before the last
    assert raw_split(d, "test") == {10: ([5, 1], 6), 20: ([45, 1], 43), 30: ([8, 9], 1)}
    assert raw_split(d, "val") == {10: ([4, 5], 1), 20: ([41, 45], 1), 30: ([7, 8], 9)}
    counts = np.zeros(d.num_items, np.int64)
    np.add.at(counts, d.vocab.raw_to_dense(sum(train.values(), [])), 1)
    np.testing.assert_array_equal(d.item_counts, counts)
    # the items of every kept row, test targets included (item 43 occurs in no training sequence)
    np.testing.assert_array_equal(d.vocab.items, [1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41, 42, 43, 44, 45])
    st = d.stats
    assert (st["split"], st["users"], st["train_users"], st["test_users"], st["val_users"]) == ("last", 3, 3, 3, 3)
    assert st["samples"] == 3 + 4 + 1 and st["split_reason"] == "--split last"
    assert d.meta == {"format_version": 1, "max_seq": 2, "min_behaviors": 4, "seed": 0, "split": "last"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_last_out_samples_test_and_validation_users(seed):
    user = np.array([u for u, _, _ in ROWS])
    item = np.array([i for _, i, _ in ROWS])
    ts = np.array([TS + t for _, _, t in ROWS])
    o = prepare_arrays(user, item, np.zeros_like(item), ts, max_seq=2, min_behaviors=3, val_users=1,
                       test_users=2, seed=seed, split="last")
    kept = np.array([10, 20, 30])
    perm = np.random.default_rng(seed).permutation(3)  # the documented draw: one permutation, test first n_test
    np.testing.assert_array_equal(o["test"]["user_ids"], np.sort(kept[perm[:2]]))
    np.testing.assert_array_equal(o["val"]["user_ids"], kept[perm[:1]])
    np.testing.assert_array_equal(o["train"]["user_ids"], kept)  # test and validation users keep training
    assert o["train"]["offsets"].tolist() == [0, 4, 9, 11]  # 6-2, 7-2, 4-2 behaviours


def test_min_behaviors_default_follows_the_split(tmp_path):
    # 10 has 6 behaviours, 20 has 7, 30 has 4, 40 has 2, 50 has 5: leave-last-out's default 5 drops 30 and 40
    rows = ROWS + [(50, 2, k) for k in range(5)]
    d = PreparedData.load(str(prepare(tmp_path, "--split", "last", rows=rows)))
    assert d.train.user_ids.tolist() == [10, 20, 50] and d.meta["min_behaviors"] == 5
    user, item, offset = (np.array(c) for c in zip(*ROWS))
    with pytest.raises(UserError, match="only 0 users have at least 10 behaviours"):
        prepare_arrays(user, item, np.zeros_like(item), TS + offset, max_seq=2, min_behaviors=None, val_users=1,
                       test_users=1, seed=0, split="users")


def test_auto_split_by_users_with_enough_behaviours(monkeypatch, capsys):
    counts = np.array([12, 10, 9, 30, 3])
    assert choose_split(counts, "users", None) == ("users", 10, "--split users")
    assert choose_split(counts, "last", 3) == ("last", 3, "--split last")
    monkeypatch.setattr(prepare_module, "AUTO_USERS_MIN", 3)
    split, least, reason = choose_split(counts, "auto", None)
    assert (split, least) == ("users", 10) and reason.startswith("auto: 3 users have at least 10 behaviours")
    split, least, reason = choose_split(counts, "auto", 11)  # --min-behaviors counts for the choice
    assert (split, least) == ("last", 11) and "fewer than 3 users, so held-out users (a tenth at most) would give " \
        "only 0" in reason
    # enough users, but they hold under half of the log: leave-last-out keeps the rest of it for training
    sparse = np.array([10, 10, 10] + [5] * 7)
    split, least, reason = choose_split(sparse, "auto", None)
    assert (split, least) == ("last", 5) and "holding 46% of them" in reason and "less than 50% of the log" in reason
    assert choose_split(np.array([10, 10, 9]), "auto", None)[:2] == ("last", 5)
    with pytest.raises(UserError, match="at least 3 for --split last"):
        choose_split(counts, "last", 2)


def test_auto_is_the_default_and_is_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare_module, "AUTO_USERS_MIN", 3)
    out = prepare(tmp_path, "--min-behaviors", 4, "--max-seq", 2)
    st = json.loads((out / "stats.json").read_text())
    assert st["split"] == "users" and st["split_reason"].startswith("auto: 3 users have at least 4 behaviours")
    assert "split: users (auto: 3 users" in capsys.readouterr().err
    monkeypatch.setattr(prepare_module, "AUTO_USERS_MIN", 4)
    out = prepare(tmp_path, "--min-behaviors", 4, "--max-seq", 2)
    assert json.loads((out / "meta.json").read_text())["split"] == "last"
    assert "fewer than 4 users, so held-out" in capsys.readouterr().err


def test_training_reads_leave_last_out_data(tmp_path):
    out = prepare(tmp_path, "--split", "last", "--min-behaviors", 4, "--max-seq", 2)
    td = load_data(str(out))
    assert td.train_offsets.tolist() == [0, 4, 9, 11]
    assert len(td.test.targets) == 3 and len(td.val.targets) == 3


def test_train_graph_and_evaluate_run_on_leave_last_out_data(tmp_path):
    """The default split of a small log (auto -> last) through the pipeline: training, graph, evaluation.
    Training runs in its own process, as users run it: in this one it would leave denormal floats flushed
    (torch.set_flush_denormal is process-wide) for the tests that follow."""
    raw, data, run = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    steps = [["data", "synth", "--out", raw, "--users", 150, "--items", 400, "--categories", 10, "--seed", 2],
             ["data", "prepare", "--csv", raw / "UserBehavior.csv", "--out", data, "--test-users", 40],
             ["train", "--data", data, "--run", run, "--epochs", 1, "--negatives", 5, "--max-samples", 1000,
              "--batch-size", 128, "--eval-users", 20],
             ["graph", "--run", run, "--m", 8, "--ef-construction", 40],
             ["evaluate", "--run", run, "--data", data, "--method", "brute", "--json", tmp_path / "m.json"]]
    for argv in ([str(a) for a in step] for step in steps):
        if argv[0] == "train":
            subprocess.run([sys.executable, "-m", "nann_cli", *argv], check=True, capture_output=True)
        else:
            assert cli_main(argv) == 0, argv
    assert json.loads((data / "meta.json").read_text())["split"] == "last"
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["users"] == 40 and 0.0 <= metrics["recall_all"] <= 1.0
