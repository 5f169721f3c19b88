import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nann.data.reader import BEHAVIORS, MALFORMED_KINDS, read_user_behavior
from nann.errors import UserError

TS = 1511568000

LINES = [
    f"1,10,100,pv,{TS}",             # 1 ok
    f"1,10,100,pv,{TS},7",           # 2 columns
    f"x,10,100,pv,{TS}",             # 3 non_integer
    f"2,1.5,100,pv,{TS}",            # 4 non_integer
    "",                              # 5 blank (ignored)
    f"-3,10,100,pv,{TS}",            # 6 negative_id
    f"3,10,100,click,{TS}",          # 7 behavior
    "3,10,100,pv,12",                # 8 valid; timestamp (1970) with the 2000..2100 window
    f"5,11,101,fav,{TS + 1}",        # 9 ok
    f"6,12,102,cart,{TS + 2}\r",     # 10 ok (CRLF)
    "7,13,103,buy,4102444800",       # 11 valid; timestamp (2100-01-01) with the window
    f"000000000000000000008,14,104,buy,{TS + 3}",  # 12 ok (long field with leading zeros)
    f"9,99999999999999999999,104,pv,{TS}",  # 13 non_integer (overflows int64)
    f"10,15,105,PV,{TS}",            # 14 behavior (case-sensitive)
    "11,16,106,pv",                  # 15 columns
    f"13,,107,pv,{TS}",              # 16 missing
    f"14,18,108,pv,-5",              # 17 timestamp (negative)
    f"12,17,107,buy,{TS + 4}",       # 18 ok, no trailing newline
]
WINDOW = (946_684_800, 4_102_444_800)  # --time-window 2000-01-01,2100-01-01


def write(tmp_path, lines, name="ub.csv", final_newline=False):
    p = tmp_path / name
    p.write_bytes(("\n".join(lines) + ("\n" if final_newline else "")).encode())
    return str(p)


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_malformed_kinds_and_line_numbers(tmp_path, chunk):
    path = write(tmp_path, LINES)
    r = read_user_behavior(path, max_malformed=None, time_window=WINDOW, chunk_bytes=chunk, progress=False)
    assert r.rows == 17
    assert r.malformed == {"columns": 2, "missing": 1, "non_integer": 3, "negative_id": 1, "behavior": 2,
                           "rating": 0, "timestamp": 3}
    assert set(r.malformed) == set(MALFORMED_KINDS)
    assert r.examples == [(2, "columns", f"1,10,100,pv,{TS},7"), (3, "non_integer", f"x,10,100,pv,{TS}"),
                          (4, "non_integer", f"2,1.5,100,pv,{TS}"), (6, "negative_id", f"-3,10,100,pv,{TS}"),
                          (7, "behavior", f"3,10,100,click,{TS}")]
    np.testing.assert_array_equal(r.user, [1, 5, 6, 8, 12])
    np.testing.assert_array_equal(r.item, [10, 11, 12, 14, 17])
    np.testing.assert_array_equal(r.category, [100, 101, 102, 104, 107])
    np.testing.assert_array_equal(r.behavior, [BEHAVIORS.index(b) for b in ("pv", "fav", "cart", "buy", "buy")])
    np.testing.assert_array_equal(r.timestamp, [TS, TS + 1, TS + 2, TS + 3, TS + 4])
    assert r.valid_rows + r.malformed_rows == r.rows
    assert "line 2 (columns)" in r.summary()


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_any_non_negative_timestamp_without_window(tmp_path, chunk):
    """Without --time-window, 1970 (line 8) and 2100 (line 11) are valid; only the negative one is not."""
    r = read_user_behavior(write(tmp_path, LINES), max_malformed=None, chunk_bytes=chunk, progress=False)
    assert r.malformed["timestamp"] == 1
    np.testing.assert_array_equal(r.user, [1, 3, 5, 6, 7, 8, 12])
    np.testing.assert_array_equal(r.timestamp, [TS, 12, TS + 1, TS + 2, 4102444800, TS + 3, TS + 4])


def test_all_valid_rows_kept_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    n = 20000
    u = rng.integers(0, 10**12, n)
    i = rng.integers(0, 10**9, n)
    c = rng.integers(0, 10**6, n)
    b = rng.integers(0, 4, n)
    t = rng.integers(TS, TS + 10**6, n)
    lines = [f"{a},{bb},{cc},{BEHAVIORS[d]},{e}" for a, bb, cc, d, e in zip(u, i, c, b, t)]
    bad_at = sorted(rng.choice(n, 50, replace=False).tolist())
    for k in bad_at:
        lines[k] = lines[k].replace(",", ";", 1)
    path = write(tmp_path, lines, final_newline=True)
    r = read_user_behavior(path, chunk_bytes=4096, progress=False)
    keep = np.ones(n, bool)
    keep[bad_at] = False
    np.testing.assert_array_equal(r.user, u[keep])
    np.testing.assert_array_equal(r.item, i[keep])
    np.testing.assert_array_equal(r.category, c[keep])
    np.testing.assert_array_equal(r.behavior, b[keep])
    np.testing.assert_array_equal(r.timestamp, t[keep])
    assert r.malformed["columns"] == 50
    assert [e[0] for e in r.examples] == [k + 1 for k in bad_at[:5]]


def test_threshold_failure(tmp_path):
    lines = [f"{k},1,1,pv,{TS}" for k in range(98)] + ["bad", "worse,1"]
    path = write(tmp_path, lines)
    with pytest.raises(UserError, match=r"2 of 100 rows .* above --max-malformed 0.01; first at line 99"):
        read_user_behavior(path, progress=False)
    assert read_user_behavior(path, max_malformed=0.02, progress=False).valid_rows == 98


def test_no_valid_rows(tmp_path):
    with pytest.raises(UserError, match="none of its 2 rows"):
        read_user_behavior(write(tmp_path, ["a,b,c", "1,2,3,pv,5"]), max_malformed=1.0, time_window=WINDOW,
                           progress=False)
    with pytest.raises(UserError, match="no rows"):
        read_user_behavior(write(tmp_path, [""], name="empty.csv"), progress=False)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_user_behavior(str(tmp_path / "nope.csv"), progress=False)
    with pytest.raises(UserError, match="directory"):
        read_user_behavior(str(tmp_path), progress=False)


def test_bounded_memory_on_large_file(tmp_path):
    """2M rows (~70 MB): peak RSS growth must stay near the compact arrays (33 B/row), far below Python rows."""
    n = 2_000_000
    path = tmp_path / "big.csv"
    rng = np.random.default_rng(1)
    with open(path, "w") as f:
        for lo in range(0, n, 500_000):
            m = min(500_000, n - lo)
            u = rng.integers(1, 10**6, m)
            it = rng.integers(1, 5 * 10**6, m)
            ts = rng.integers(TS, TS + 777600, m)
            f.write("\n".join(f"{a},{b},{a % 9000},pv,{t}" for a, b, t in
                              zip(u.tolist(), it.tolist(), ts.tolist())) + "\n")
    size = os.path.getsize(path)
    code = textwrap.dedent(f"""
        import resource, numpy, nann.data.reader as R
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = R.read_user_behavior({str(path)!r}, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(r.valid_rows, (peak - base) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == n
    growth = int(out[1])
    # Python tuples of 5 ints would take > 200 B/row (400 MB); the compact arrays take 66 MB (+ chunk buffers)
    print("rss growth MB", growth / 2**20, "file MB", size / 2**20)
    assert growth < 250 * 2**20, growth
    assert growth < 2.5 * size
