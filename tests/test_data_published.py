"""Logs and items files as published: headerless files read by position (MovieLens 100k `u.data`), multi-character
delimiters (MovieLens 1M `ratings.dat`, `::`), and an items file joined by id (`movies.csv`, `movies.dat`, `u.item`).
Every file is written here, small, in its published format."""
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nann_cli.main import main as cli_main
from nann.data import delimited
from nann.data.inputs import read_input
from nann.data.items import UNKNOWN_CATEGORY, read_items
from nann.data.string_ids import string_id
from nann.errors import UserError
from test_data_formats import arrays

ML_TS = 881250949
# (user, item, rating, time) in file order: 4 users of 3-6 ratings, a timestamp tie, items 1..7
RATINGS = [(196, 2, 3, ML_TS + 5), (186, 3, 3, ML_TS + 1), (196, 1, 4, ML_TS + 2), (22, 7, 1, ML_TS + 3),
           (186, 1, 5, ML_TS + 2), (196, 5, 2, ML_TS + 2), (22, 2, 4, ML_TS + 1), (244, 4, 2, ML_TS + 9),
           (186, 6, 4, ML_TS + 3), (244, 1, 5, ML_TS + 1), (196, 6, 5, ML_TS + 9), (22, 4, 3, ML_TS + 2),
           (244, 3, 3, ML_TS + 4), (196, 3, 4, ML_TS + 1)]
POSITIONS = "user=1,item=2,rating=3,time=4"
NAMES = "user=userId,item=movieId,rating=rating,time=timestamp"


def write(path, rows, sep, header=None, encoding="utf-8"):
    lines = ([sep.join(header)] if header else []) + [sep.join(map(str, r)) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return str(path)


def prepare(path, out, columns, *extra):
    argv = ["data", "prepare", "--input", str(path), "--columns", columns, "--out", str(out), "--split", "users",
            "--min-behaviors", "3", "--test-users", "1", "--val-users", "1", *map(str, extra)]
    assert cli_main(argv) == 0, argv
    return out


def assert_same_data(a, b):
    a, b = arrays(a), arrays(b)
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_array_equal(b[name], value, err_msg=name)


@pytest.fixture
def reference(tmp_path):
    """The ratings prepared from a CSV with a header, columns by name."""
    csv = write(tmp_path / "ratings.csv", RATINGS, ",", header=("userId", "movieId", "rating", "timestamp"))
    return prepare(csv, tmp_path / "ref", NAMES)


def test_udata_as_published_reads_by_position(tmp_path, reference, capsys):
    udata = write(tmp_path / "u.data", RATINGS, "\t")
    assert_same_data(reference, prepare(udata, tmp_path / "o", POSITIONS))
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["rows"] == len(RATINGS)  # first line is data
    # without --columns the refusal says the file has no header and how to name its columns
    assert cli_main(["data", "prepare", "--input", udata, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"u.data has no header (its first line is data: 196, 2, 3, {ML_TS + 5}); name its 4 columns by " \
           f"1-based position with --columns, e.g. user=1,item=2,time=4" in err


def test_positions_over_a_header_and_parquet(tmp_path, reference):
    # a header line (no number in it) is skipped when the columns are named by position
    csv = write(tmp_path / "r.csv", RATINGS, ",", header=("userId", "movieId", "rating", "timestamp"))
    assert_same_data(reference, prepare(csv, tmp_path / "o1", POSITIONS))
    table = pa.table({name: [r[k] for r in RATINGS] for k, name in enumerate(("u", "i", "r", "t"))})
    pq.write_table(table, tmp_path / "r.parquet")
    assert_same_data(reference, prepare(tmp_path / "r.parquet", tmp_path / "o2", POSITIONS))


@pytest.mark.parametrize("block", [32, 33, 1 << 20])  # small blocks cut '::' in two
@pytest.mark.parametrize("given", [None, "::"])
def test_ratings_dat_double_colon(tmp_path, reference, monkeypatch, block, given):
    monkeypatch.setattr(delimited, "BLOCK_BYTES", block)
    dat = write(tmp_path / "ratings.dat", RATINGS, "::")
    assert delimited.resolve_delimiter(dat, "csv", None) == "::"
    extra = ("--delimiter", given) if given else ()
    assert_same_data(reference, prepare(dat, tmp_path / "o", POSITIONS, *extra))


@pytest.mark.parametrize("size", range(1, 8))
def test_delimiter_rewriter_across_read_boundaries(size):
    text = b"1::22::333\n:::4::\n5::6\n"
    stream = delimited.DelimiterRewriter(io.BytesIO(text), "::", "utf-8")
    got = b""
    while chunk := stream.read(size):
        got += chunk
    assert got == text.replace(b"::", delimited.STAND_IN.encode())
    with pytest.raises(UserError, match="holds the byte 0x1F"):
        delimited.DelimiterRewriter(io.BytesIO(b"1::\x1f::2\n"), "::", "utf-8").read(100)


def test_double_colon_malformed_rows_keep_their_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 40)
    rows = [f"{u}::{i}::{r}::{t}" for u, i, r, t in RATINGS]
    rows[3] = "22::7::1"  # line 4: a field short
    rows[8] = "186::x::4::881250952"  # line 9: not an id
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(rows) + "\n")
    res = read_input(str(path), columns=POSITIONS, max_malformed=None, progress=False)[1]
    assert (res.rows, res.valid_rows, res.malformed["columns"], res.malformed["non_integer"]) == (14, 12, 1, 1)
    assert res.examples == [(4, "columns", "22::7::1"), (9, "non_integer", "1=186 2=x 3=4 4=881250952")]


def test_header_detection_and_no_header(tmp_path):
    # string ids, and a first row whose time is bad: nothing in it says data, so it is taken as a header...
    rows = [("alice", "apple", "yesterday"), ("alice", "pear", ML_TS), ("bob", "apple", ML_TS + 1)]
    path = write(tmp_path / "log.csv", rows, ",")
    kw = dict(columns="user=1,item=2,time=3", hash_ids="user,item", max_malformed=None, progress=False)
    assert read_input(path, **kw)[1].rows == 2
    # ... unless --no-header says there is none: then it is a malformed row, counted
    res = read_input(path, no_header=True, **kw)[1]
    assert res.rows == 3 and res.malformed["timestamp"] == 1 and res.examples[0][0] == 1
    # an ISO date makes a first line data
    iso = write(tmp_path / "iso.csv", [("alice", "apple", "2017-11-25")] + rows[1:], ",")
    assert read_input(iso, **kw)[1].rows == 3
    with pytest.raises(UserError, match="name every column by its header name or every one by its 1-based"):
        read_input(path, columns="user=1,item=item,time=3", progress=False)
    with pytest.raises(UserError, match="has no column '7'; it has 3 columns"):
        read_input(path, columns="user=1,item=2,time=7", progress=False)
    with pytest.raises(UserError, match="--no-header: name the columns by 1-based position"):
        read_input(path, columns="user=a,item=b,time=c", no_header=True, progress=False)


# ---------------------------------------------------------------- items files

MOVIES = [(1, "Toy Story (1995)", "Animation|Children's|Comedy"), (2, "Jumanji (1995)", "Adventure|Fantasy"),
          (3, "Misérables, Les (1995)", "Drama|Musical"), (4, "Heat (1995)", "Action"),
          (5, "Père Noël (1982)", "Comédie"), (6, "(untitled)", ""), (2, "Jumanji again", "Horror")]
# items 1..6 listed (6 with an empty category, 2 twice: the first row wins); 7 is in the log only
FIRST_GENRE = {1: "Animation", 2: "Adventure", 3: "Drama", 4: "Action", 5: "Comédie"}


def expected_categories(items):
    return [string_id(FIRST_GENRE[i]) if i in FIRST_GENRE else UNKNOWN_CATEGORY for i in items]


def check_items_join(out):
    items, categories = np.load(out / "items.npy"), np.load(out / "categories.npy")
    assert items.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert categories[np.load(out / "item_category.npy")].tolist() == expected_categories(range(1, 8))
    with np.load(out / "category_keys.npz") as z:
        names = dict(zip(z["ids"].tolist(), (k.decode() for k in z["keys"])))
    assert names == {**{string_id(g): g for g in FIRST_GENRE.values()}, UNKNOWN_CATEGORY: ""}
    st = json.loads((out / "stats.json").read_text())["items_file"]
    assert (st["rows"], st["items"], st["repeated"], st["unknown_category_items"]) == (7, 6, 1, 2)


def test_items_csv_with_a_header(tmp_path):
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title,genres\n" + "".join(f'{i},"{t}",{g}\n' for i, t, g in MOVIES))
    log = write(tmp_path / "r.csv", [r + (r[1] % 3,) for r in RATINGS], ",",
                header=("userId", "movieId", "rating", "timestamp", "cat"))
    out = prepare(log, tmp_path / "o", NAMES + ",category=cat", "--items", movies, "--item-columns",
                  "item=movieId,category=genres")  # the items file wins over the log's category column
    check_items_join(out)


def test_movies_dat_latin1_with_double_colon(tmp_path, capsys):
    movies = write(tmp_path / "movies.dat", MOVIES, "::", encoding="latin-1")
    log = write(tmp_path / "ratings.dat", RATINGS, "::")
    argv = ("--items", movies, "--item-columns", "item=1,category=3")
    assert cli_main(["data", "prepare", "--input", log, "--columns", POSITIONS, "--out", str(tmp_path / "x"),
                     *argv]) == 2
    assert "invalid UTF8 data; pass its --encoding (e.g. latin-1)" in capsys.readouterr().err
    check_items_join(prepare(log, tmp_path / "o", POSITIONS, *argv, "--encoding", "latin-1"))


def test_u_item_genre_flags(tmp_path):
    flags = {1: [0, 0, 0, 1, 1], 2: [0, 1, 0, 0, 1], 3: [0, 0, 0, 0, 0], 4: [1, 0, 0, 0, 0], 5: [0, 0, 1, 0, 0]}
    rows = [(i, f"Movie {i}", "01-Jan-1995", "", f"http://x/{i}", *f) for i, f in flags.items()]
    uitem = write(tmp_path / "u.item", rows, "|", encoding="latin-1")
    got = read_items(uitem, "item=1,category=flags:6-10")
    assert got.item.tolist() == [1, 2, 3, 4, 5]
    assert got.category.tolist() == [3, 1, UNKNOWN_CATEGORY, 0, 2] and got.category_names == {}
    out = prepare(write(tmp_path / "u.data", RATINGS, "\t"), tmp_path / "o", POSITIONS, "--items", uitem,
                  "--item-columns", "item=1,category=flags:6-10")
    cats = np.load(out / "categories.npy")
    assert cats[np.load(out / "item_category.npy")].tolist() == [3, 1, UNKNOWN_CATEGORY, 0, 2, UNKNOWN_CATEGORY,
                                                                 UNKNOWN_CATEGORY]
    assert not (out / "category_keys.npz").exists()


def test_items_file_rules(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,category_id\n10,5\n11,Books|Music\n,3\nx,1\n12,-4\n13\n10,6\n14,  Toys  \n\n15,7\n")
    got = read_items(str(path), "item=1,category=2", max_malformed=None)
    assert got.item.tolist() == [10, 11, 14, 15] and got.repeated == 1
    assert got.category.tolist() == [5, string_id("Books"), string_id("Toys"), 7]
    assert got.malformed == {"columns": 1, "missing": 1, "non_integer": 1, "negative_id": 1}
    assert re.search(r"line 4 \(missing\).*line 5 \(non_integer\).*line 6 \(negative_id\).*line 7 \(columns\)",
                     got.report.replace("\n", " "))
    whole = read_items(str(path), "item=1,category=2", separator="", max_malformed=None)
    assert whole.category[1] == string_id("Books|Music")
    np.testing.assert_array_equal(got.category_of(np.array([15, 99, 10])), [7, UNKNOWN_CATEGORY, 5])
    for columns, message in (("item=1", "must map item and category"), ("item=1,category=2,item=3", "each once"),
                             ("item=1,category=flags:2-1", "the first not after the second")):
        with pytest.raises(UserError, match=message):
            read_items(str(path), columns)


def test_items_option_errors(tmp_path, capsys):
    log = write(tmp_path / "u.data", RATINGS, "\t")
    base = ["data", "prepare", "--input", log, "--columns", POSITIONS, "--out", str(tmp_path / "o")]
    cases = [(["--items", log], "--items FILE and --item-columns"),
             (["--items", log, "--item-columns", "item=1,category=2", "--hash-ids", "category"],
              "--hash-ids category does not apply with --items"),
             (["--encoding", "klingon"], "unknown --encoding 'klingon'")]
    for extra, message in cases:
        assert cli_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
