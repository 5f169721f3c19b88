"""`nann data prepare` on every input format: UserBehavior CSV, header CSV, TSV and Parquet."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nann_cli.main import main as cli_main
from nann.data import delimited, tabular
from nann.data.inputs import read_input
from nann.data.prepare import prepare_arrays
from nann.data.string_ids import string_id
from nann.errors import UserError

TS = 1511568000
ML_TS = 881250949  # MovieLens 100k era (1997): before 2000
FAR_TS = 4102444800 + 86400  # after 2100-01-01
HEADER = ("uid", "iid", "cat", "beh", "ts")
MAPPING = "user=uid,item=iid,category=cat,behavior=beh,time=ts"
FORMATS = ("userbehavior", "csv", "tsv", "parquet")


def interactions(seed=0, users=40):
    """(user, item, category, behaviour, timestamp) rows in file order: shuffled, with timestamp ties inside
    users, and pre-2000 and post-2100 timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        n = int(rng.integers(3, 12))
        times = rng.choice([ML_TS, TS, TS + 60, FAR_TS], n)  # few distinct values: many ties
        items = rng.integers(1, 60, n)
        rows += [(1000 + u, int(i), int(i) % 7 * 10, ("pv", "buy", "cart", "fav")[int(i) % 4], int(t))
                 for i, t in zip(items, times)]
    return [rows[k] for k in rng.permutation(len(rows))]


def write(path, fmt, rows, header=HEADER):
    """Write rows (tuples of values, ints or text) in one format; returns the path as str."""
    path = str(path)
    if fmt == "parquet":
        pq.write_table(pa.table({h: [r[k] for r in rows] for k, h in enumerate(header)}), path, row_group_size=64)
        return path
    sep = "\t" if fmt == "tsv" else ","
    lines = ([] if fmt == "userbehavior" else [sep.join(header)]) + [sep.join(map(str, r)) for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def file_for(tmp_path, fmt, rows, header=HEADER):
    ext = {"userbehavior": "csv", "csv": "csv", "tsv": "tsv", "parquet": "parquet"}[fmt]
    return write(tmp_path / f"{fmt}.{ext}", fmt, rows, header)


def prepare(path, out, *extra):
    args = ["data", "prepare", "--input", str(path), "--out", str(out), "--split", "users", "--min-behaviors", "3",
            "--max-seq", "4",
            "--test-users", "4", "--val-users", "4", *map(str, extra)]
    assert cli_main(args) == 0
    return out


def arrays(out):
    """Every array of a prepared directory, by file and key."""
    got = {}
    for f in sorted(out.iterdir()):
        if f.suffix == ".npy":
            got[f.name] = np.load(f, allow_pickle=False)
        elif f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                got.update({f"{f.name}:{k}": z[k] for k in z.files})
    return got


def stats(out):
    return json.loads((out / "stats.json").read_text())


def read(path, **kw):
    kw.setdefault("max_malformed", None)
    return read_input(str(path), progress=False, **kw)[1]


def test_every_format_prepares_identical_arrays(tmp_path):
    rows = interactions()
    outs = {}
    for fmt in FORMATS:
        extra = () if fmt == "userbehavior" else ("--columns", MAPPING)
        outs[fmt] = prepare(file_for(tmp_path, fmt, rows), tmp_path / f"out_{fmt}", *extra)
        assert stats(outs[fmt])["input_format"] == fmt
    ref = arrays(outs["userbehavior"])
    assert len(ref) == 15 and len(ref["items.npy"]) > 40
    for fmt in FORMATS[1:]:
        got = arrays(outs[fmt])
        assert got.keys() == ref.keys()
        for name, a in ref.items():
            assert got[name].dtype == a.dtype, (fmt, name)
            np.testing.assert_array_equal(got[name], a, err_msg=f"{fmt} {name}")


def test_iso_timestamps_give_the_same_data_as_unix_seconds(tmp_path):
    base = 1511604000  # 2017-11-25T10:00:00Z
    forms = {base: "2017-11-25T10:00:00Z", base + 60: "2017-11-25 10:01:00", base + 3600: "2017-11-25T12:00:00+01:00",
             1511568000: "2017-11-25", ML_TS: "1997-12-04T15:55:49"}
    rng = np.random.default_rng(3)
    rows = [(u, int(rng.integers(1, 30)), 0, "pv", int(rng.choice(list(forms)))) for u in range(20) for _ in range(5)]
    unix = prepare(file_for(tmp_path, "csv", rows), tmp_path / "unix", "--columns", MAPPING)
    iso_rows = [r[:4] + (forms[r[4]],) for r in rows]
    for fmt in ("csv", "parquet"):
        iso = prepare(write(tmp_path / f"iso.{fmt}", fmt, iso_rows), tmp_path / f"iso_{fmt}", "--columns", MAPPING)
        for name, a in arrays(unix).items():
            np.testing.assert_array_equal(arrays(iso)[name], a, err_msg=f"{fmt} {name}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_old_and_far_future_timestamps_valid_unless_window(tmp_path, fmt):
    rows = [(1, 10, 5, "pv", ML_TS), (1, 11, 5, "pv", TS), (1, 12, 5, "pv", FAR_TS), (2, 10, 5, "pv", 0)]
    path = file_for(tmp_path, fmt, rows)
    columns = None if fmt == "userbehavior" else MAPPING
    r = read(path, columns=columns)
    np.testing.assert_array_equal(r.timestamp, [ML_TS, TS, FAR_TS, 0])
    assert r.malformed_rows == 0
    r = read(path, columns=columns, time_window=(946684800, 4102444800))
    np.testing.assert_array_equal(r.timestamp, [TS])
    assert r.malformed["timestamp"] == 3
    unit = "row" if fmt == "parquet" else "line"
    first = 1 if fmt in ("userbehavior", "parquet") else 2
    assert [(e[0], e[1]) for e in r.examples] == [(first, "timestamp"), (first + 2, "timestamp"),
                                                  (first + 3, "timestamp")]
    assert f"{unit} {first} (timestamp)" in r.summary()


def test_time_window_flag(tmp_path):
    rows = [(u, i, 0, "pv", ML_TS if i == 0 else TS + i) for u in range(8) for i in range(5)]
    path = file_for(tmp_path, "csv", rows)
    out = prepare(path, tmp_path / "o", "--columns", MAPPING, "--time-window", "2000-01-01,2100-01-01",
                  "--max-malformed", "0.2")
    assert stats(out)["malformed"]["timestamp"] == 8 and stats(out)["valid_rows"] == 32
    assert cli_main(["data", "prepare", "--input", path, "--out", str(tmp_path / "p"), "--columns", MAPPING,
                     "--time-window", "2100-01-01,2000-01-01"]) == 2


BAD_TEXT_ROWS = [  # (line in the file with the header, kind)
    ("1,10,5,pv,100", None),
    ("1,10,5,pv", "columns"),
    ("1,,5,pv,100", "missing"),
    ("1,B00X,5,pv,100", "non_integer"),
    ("", None),  # blank line: ignored
    ("-1,10,5,pv,100", "negative_id"),
    ("1,10,5,click,100", "behavior"),
    ("1,10,5,pv,yesterday", "timestamp"),
    ("1,10,5,pv,-3", "timestamp"),
    ("1,10,5,pv,100,9", "columns"),
    ("1,99999999999999999999,5,pv,100", "non_integer"),
    ("2,11,5,buy,2017-11-25", None),
]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("block", [32, 1 << 20])
def test_malformed_rows_counted_in_delimited_text(tmp_path, monkeypatch, fmt, block):
    monkeypatch.setattr(delimited, "BLOCK_BYTES", block)  # small blocks: line numbers across blocks
    sep = "\t" if fmt == "tsv" else ","
    text = "\n".join([sep.join(HEADER)] + [line.replace(",", sep) for line, _ in BAD_TEXT_ROWS]) + "\n"
    path = tmp_path / f"bad.{fmt}"
    path.write_text(text)
    r = read(path, columns=MAPPING)
    expected = [(k + 2, kind) for k, (_, kind) in enumerate(BAD_TEXT_ROWS) if kind]
    assert r.rows == len(BAD_TEXT_ROWS) - 1
    assert r.malformed == {"columns": 2, "missing": 1, "non_integer": 2, "negative_id": 1, "behavior": 1,
                           "rating": 0, "timestamp": 2}
    assert [(e[0], e[1]) for e in r.examples] == expected[:5]
    np.testing.assert_array_equal(r.user, [1, 2])
    np.testing.assert_array_equal(r.timestamp, [100, 1511568000])
    with pytest.raises(UserError, match=r"9 of 11 rows .* first at line 3 \(columns\).*--hash-ids"):
        read(path, columns=MAPPING, max_malformed=0.5)


def test_malformed_rows_counted_in_parquet(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "BATCH_ROWS", 3)  # row numbers across batches and row groups
    table = pa.table({"uid": pa.array([1, 1, None, 1, -1, 1, 1, 2], pa.int64()),
                      "iid": ["10", "10", "10", "B00X", "10", "10", "10", "11"],
                      "beh": ["pv", "pv", "pv", "pv", "pv", "click", "pv", "fav"],
                      "ts": pa.array([100, -5, 100, 100, 100, 100, None, 100], pa.int64())})
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=4)
    r = read(path, columns="user=uid,item=iid,behavior=beh,time=ts")
    assert r.rows == 8 and r.position_unit == "row"
    assert r.malformed == {"columns": 0, "missing": 2, "non_integer": 1, "negative_id": 1, "behavior": 1,
                           "rating": 0, "timestamp": 1}
    assert [(e[0], e[1]) for e in r.examples] == [(2, "timestamp"), (3, "missing"), (4, "non_integer"),
                                                  (5, "negative_id"), (6, "behavior")]
    np.testing.assert_array_equal(r.item, [10, 11])
    np.testing.assert_array_equal(r.behavior, [0, 3])
    np.testing.assert_array_equal(r.category, [0, 0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_equal_timestamps_keep_file_order(tmp_path, fmt):
    # user 7's behaviours all at one time, items in a deliberately unsorted file order; users 8, 9 interleaved
    order = [50, 3, 41, 3, 17, 9, 60, 2]
    rows = []
    for k, item in enumerate(order):
        rows += [(7, item, 1, "pv", TS), (8, 100 + k, 1, "pv", TS + 10 - k), (9, 1, 1, "pv", TS)]
    extra = () if fmt == "userbehavior" else ("--columns", MAPPING)
    out = prepare(file_for(tmp_path, fmt, rows), tmp_path / "o", "--test-users", "0", "--val-users", "0", *extra)
    with np.load(out / "train.npz") as z:
        items = np.load(out / "items.npy")
        seq = {int(u): items[z["items"][z["offsets"][k]:z["offsets"][k + 1]]].tolist()
               for k, u in enumerate(z["user_ids"])}
    assert seq[7] == order
    assert seq[8] == [100 + k for k in reversed(range(len(order)))]


def test_stable_order_when_timestamps_span_too_wide_to_pack():
    """Timestamps spanning ~2^62 s cannot share an int64 key with the user rank: the two-sort path keeps ties."""
    user = np.array([5, 6, 5, 6, 5, 6, 5, 5, 4, 4])
    item = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    ts = np.array([2 ** 62, 0, 7, 9, 7, 9, 0, 7, 3, 3])
    o = prepare_arrays(user, item, np.zeros_like(item), ts, max_seq=5, min_behaviors=2, val_users=0,
                       test_users=0, seed=0, split="users")
    tr = o["train"]
    seqs = [o["items"][tr["items"][tr["offsets"][k]:tr["offsets"][k + 1]]].tolist() for k in range(3)]
    assert seqs == [[9, 10], [7, 3, 5, 8, 1], [2, 4, 6]]


def test_string_ids_hashed_with_their_keys(tmp_path):
    asins = ["B00005N7P0", "0000031852", "B0000A0B1C", "1234", "B07XYZ1111"]
    rows = [(f"A{u % 6}XYZ", asins[(u * 7 + k) % 5], "Books" if k % 2 else "Music", "pv", TS + k)
            for u in range(30) for k in range(4)]
    mapping = MAPPING.replace("behavior=beh,", "")
    header = ("uid", "iid", "cat", "beh", "ts")
    csv_path = file_for(tmp_path, "csv", rows, header)
    with pytest.raises(UserError, match="--hash-ids"):
        read(csv_path, columns=mapping, max_malformed=0.01)
    outs = [prepare(path, tmp_path / f"o{k}", "--columns", mapping, "--hash-ids", "user,item,category")
            for k, path in enumerate([csv_path, file_for(tmp_path, "parquet", rows, header)])]
    for name, a in arrays(outs[0]).items():
        np.testing.assert_array_equal(arrays(outs[1])[name], a, err_msg=name)
    out = outs[0]
    items = np.load(out / "items.npy")
    assert items.dtype == np.int64 and (items >= 0).all()
    np.testing.assert_array_equal(items, sorted(string_id(a) for a in asins))
    with np.load(out / "item_keys.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["ids"], items)
        assert [k.decode() for k in z["keys"]] == [a for _, a in sorted((string_id(a), a) for a in asins)]
    with np.load(out / "user_keys.npz", allow_pickle=False) as z:
        assert sorted(k.decode() for k in z["keys"]) == [f"A{u}XYZ" for u in range(6)]
    np.testing.assert_array_equal(np.load(out / "categories.npy"), sorted([string_id("Books"), string_id("Music")]))
    assert stats(out)["hashed_ids"] == ["category", "item", "user"]
    assert string_id("B00005N7P0") == string_id("B00005N7P0") != string_id("B00005N7P1")


def test_missing_category_is_one_shared_category_and_behavior_pv(tmp_path):
    rows = [(u, (u * 3 + k) % 11, 0, "x", TS + k) for u in range(10) for k in range(4)]
    out = prepare(file_for(tmp_path, "tsv", rows), tmp_path / "o", "--columns", "user=uid,item=iid,time=ts")
    np.testing.assert_array_equal(np.load(out / "categories.npy"), [0])
    assert (np.load(out / "item_category.npy") == 0).all()
    r = read(tmp_path / "tsv.tsv", columns="user=uid,item=iid,time=ts")
    assert (r.behavior == 0).all() and r.valid_rows == 40


def test_min_rating_drops_rows_without_calling_them_malformed(tmp_path):
    header = ("userId", "movieId", "rating", "timestamp")
    rows = [(u, 10 + k, (1.0, 2.5, 3.5, 4.0, 5)[k % 5], ML_TS + k) for u in range(10) for k in range(6)]
    rows[3] = (0, 13, "great", ML_TS)
    path = file_for(tmp_path, "csv", rows, header)
    out = prepare(path, tmp_path / "o", "--columns", "user=userId,item=movieId,time=timestamp,rating=rating",
                  "--min-rating", "3.5", "--max-malformed", "0.05")
    st = stats(out)
    assert st["malformed"]["rating"] == 1 and sum(st["malformed"].values()) == 1
    assert st["below_min_rating"] == 30 and st["valid_rows"] == 29 and st["rows"] == 60
    assert st["behaviors"] == 27  # user 0 keeps 2 rows: dropped by --min-behaviors 3


def test_format_detection_and_option_errors(tmp_path, capsys):
    rows = interactions(users=5)
    ub = file_for(tmp_path, "userbehavior", rows)
    assert read_input(ub, progress=False)[0] == "userbehavior"
    assert read_input(file_for(tmp_path, "parquet", rows), columns=MAPPING, progress=False)[0] == "parquet"
    assert read_input(file_for(tmp_path, "tsv", rows), columns=MAPPING, progress=False)[0] == "tsv"
    semicolons = tmp_path / "eu.txt"
    semicolons.write_text("uid;iid;ts\n1;2;3\n")
    assert read_input(str(semicolons), columns="user=uid,item=iid,time=ts", progress=False)[0] == "csv"
    hdr = file_for(tmp_path, "csv", rows)
    cases = [
        ((hdr,), "--columns user=COL.*its columns: uid, iid, cat, beh, ts"),
        ((hdr, "--columns", "user=uid,item=nope,time=ts"), "no column 'nope'; its columns: uid"),
        ((hdr, "--columns", "user=uid,item=iid"), "must map time"),
        ((hdr, "--columns", "user=uid,thing=iid,time=ts"), "ROLE=COLUMN"),
        ((hdr, "--columns", MAPPING, "--min-rating", "3"), "--min-rating needs a rating column"),
        ((hdr, "--columns", MAPPING, "--hash-ids", "movie"), "--hash-ids takes roles"),
        ((ub, "--columns", MAPPING, "--format", "userbehavior"), "--columns apply to delimited text"),
        ((hdr, "--columns", MAPPING, "--format", "parquet"), "cannot read .* as parquet"),
        ((str(tmp_path / "nope.csv"),), "input file not found"),
    ]
    for argv, message in cases:
        assert cli_main(["data", "prepare", "--input", *argv, "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(message, err), (argv, err)
    assert cli_main(["data", "prepare", "--csv", ub, "--format", "csv", "--out", str(tmp_path / "o")]) == 2
    assert "--csv reads the UserBehavior format" in capsys.readouterr().err
