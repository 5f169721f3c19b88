"""Streaming reader for the Taobao UserBehavior CSV (the fast path of `nann data prepare`).

Format: no header, one behaviour per line, ``user_id,item_id,category_id,behavior_type,timestamp`` with
behavior_type in {pv, buy, cart, fav}. The file is read in byte blocks (default 16 MiB); each block is parsed
with vectorised numpy (comma positions, per-field digit parsing), so memory stays bounded by the block size plus
the compact arrays of valid rows (8+8+8+8+1 = 33 bytes per row: the full 100M-row file needs about 3.3 GB).

Malformed lines are counted and skipped by the kinds of `nann.data.interactions` (``columns``: not exactly 5
comma-separated fields; ``missing``: an empty field; ``non_integer``: an id or the timestamp is not a plain
decimal integer that fits int64 (no spaces, no sign other than a leading '-', no decimals); ``negative_id``;
``behavior``; ``timestamp``: negative, or outside the time window when one is given).
Blank lines are ignored (not counted as rows). A trailing '\\r' (CRLF files) is accepted. Line numbers are 1-based.
"""
from __future__ import annotations

import os

import numpy as np

from nann.data.interactions import (BEHAVIORS, MALFORMED_KINDS, ReadResult, RowAccounting, check_input_file,
                                    progress_bar, timestamp_ok)

__all__ = ["BEHAVIORS", "MALFORMED_KINDS", "ReadResult", "classify_line", "parse_int", "read_user_behavior"]

EXPECTED_ROW = "UserBehavior row 'user_id,item_id,category_id,behavior_type,timestamp'"
_MAX_DIGITS = 18  # longest field the fast path parses (always fits int64)
_INT64_MAX = (1 << 63) - 1
_BEH_CODE = {b.encode(): i for i, b in enumerate(BEHAVIORS)}


def parse_int(tok: bytes) -> int | None:
    """A plain decimal integer that fits int64 (ASCII digits, an optional leading '-'), else None."""
    neg = tok[:1] == b"-"
    digits = tok[1:] if neg else tok
    if not digits.isdigit():  # bytes.isdigit: ASCII 0-9 only, False for b""
        return None
    v = int(digits)
    return None if v > _INT64_MAX else (-v if neg else v)


def classify_line(line: bytes, time_window: tuple[int, int] | None = None) -> tuple[str | None, tuple | None]:
    """Parse one line (no newline). Returns (None, (user, item, cat, beh, ts)) or (kind, None)."""
    parts = line.split(b",")
    if len(parts) != 5:
        return "columns", None
    if not all(parts):
        return "missing", None
    vals = [parse_int(tok) for tok in (parts[0], parts[1], parts[2], parts[4])]
    if None in vals:
        return "non_integer", None
    u, i, c, ts = vals
    if u < 0 or i < 0 or c < 0:
        return "negative_id", None
    beh = _BEH_CODE.get(parts[3])
    if beh is None:
        return "behavior", None
    if not timestamp_ok(ts, time_window):
        return "timestamp", None
    return None, (u, i, c, beh, ts)


def _parse_field(buf: np.ndarray, start: np.ndarray, length: np.ndarray):
    """Vectorised decimal parse of fields buf[start:start+length] (length in 1..18 checked by caller).
    Returns (values int64, ok bool) where ok is False if a non-digit byte occurs."""
    n = start.shape[0]
    val = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    if n == 0:
        return val, ok
    maxlen = int(length.max())
    last = buf.shape[0] - 1
    for k in range(maxlen):
        live = length > k
        d = buf[np.minimum(start + k, last)].astype(np.int64) - 48
        ok &= ~live | ((d >= 0) & (d <= 9))
        val = np.where(live, val * 10 + d, val)
    return val, ok


def _parse_block(buf: np.ndarray, time_window: tuple[int, int] | None):
    """Parse a block of complete lines (buf ends with b'\\n').

    Returns (line_start, line_end, valid_fast, cols) where cols = (user, item, cat, beh, ts) arrays over all
    lines (garbage where not valid_fast) and line_end excludes the newline and a trailing '\\r'."""
    nl = np.flatnonzero(buf == 10)
    n = nl.shape[0]
    start = np.empty(n, dtype=np.int64)
    start[0] = 0
    start[1:] = nl[:-1] + 1
    end = nl.copy()
    cr = (end > start) & (buf[np.maximum(end - 1, 0)] == 13)
    end -= cr
    cp = np.flatnonzero(buf == 44)
    line_of_comma = np.searchsorted(nl, cp)
    ncomma = np.bincount(line_of_comma, minlength=n)
    good = ncomma == 4
    gidx = np.flatnonzero(good)
    commas = cp[good[line_of_comma]].reshape(-1, 4)
    s = start[gidx]
    e = end[gidx]
    c0, c1, c2, c3 = commas[:, 0], commas[:, 1], commas[:, 2], commas[:, 3]
    fields = ((s, c0 - s), (c0 + 1, c1 - c0 - 1), (c1 + 1, c2 - c1 - 1), (c3 + 1, e - c3 - 1))
    ok = np.ones(gidx.shape[0], dtype=bool)
    for fs, fl in fields:
        ok &= (fl >= 1) & (fl <= _MAX_DIGITS)
    parsed = []
    for fs, fl in fields:
        v, fok = _parse_field(buf, fs, np.where(ok, fl, 0))
        ok &= fok
        parsed.append(v)
    user, item, cat, ts = parsed
    ok &= timestamp_ok(ts, time_window)
    # behaviour field: bytes c2+1 .. c3-1 (indices clipped inside the buffer)
    blen = c3 - c2 - 1
    last = buf.shape[0] - 1
    b = [buf[np.minimum(c2 + 1 + k, last)] for k in range(4)]
    beh = np.full(gidx.shape[0], -1, dtype=np.int8)
    for code, name in enumerate(BEHAVIORS):
        nb = name.encode()
        m = blen == len(nb)
        for k, ch in enumerate(nb):
            m &= b[k] == ch
        beh[m] = code
    ok &= beh >= 0
    valid = np.zeros(n, dtype=bool)
    valid[gidx[ok]] = True
    cols = []
    for arr, dt in ((user, np.int64), (item, np.int64), (cat, np.int64), (beh, np.int8), (ts, np.int64)):
        full = np.zeros(n, dtype=dt)
        full[gidx] = arr
        cols.append(full)
    return start, end, valid, cols


def read_user_behavior(path: str | os.PathLike, *, max_malformed: float | None = 0.01,
                       time_window: tuple[int, int] | None = None, chunk_bytes: int = 16 << 20,
                       progress: bool = True) -> ReadResult:
    """Read a UserBehavior CSV, skipping malformed lines (see module docstring). `time_window` (start
    inclusive, end exclusive, unix seconds) makes timestamps outside it malformed; None accepts any >= 0.

    Raises UserError if the file is missing, holds no valid row, or (when max_malformed is not None) the
    share of malformed rows exceeds max_malformed."""
    path = os.fspath(path)
    check_input_file(path)
    acct = RowAccounting("line")
    line_base = 0  # lines (including blank) before the current block

    def handle(block: bytes) -> None:
        nonlocal line_base
        buf = np.frombuffer(block, dtype=np.uint8)
        start, end, valid, cols = _parse_block(buf, time_window)
        n = start.shape[0]
        blank = end == start
        acct.rows += int(n - blank.sum())
        bad = np.flatnonzero(~valid & ~blank)
        for li in bad.tolist():  # authoritative per-line check, only for lines the fast path rejected
            line = block[start[li]:end[li]]
            kind, vals = classify_line(line, time_window)
            if kind is None:
                valid[li] = True
                for col, v in zip(cols, vals):
                    col[li] = v
                continue
            acct.add_malformed(kind, line_base + li + 1, line[:200].decode("utf-8", "replace"))
        acct.keep(*(col[valid] for col in cols))
        line_base += n

    with open(path, "rb") as f, progress_bar(path, os.path.getsize(path), "B", progress) as bar:
        rest = b""
        while True:
            data = f.read(chunk_bytes)
            bar.update(len(data))
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1:]
            handle(data[:cut + 1])
        if rest:
            handle(rest + b"\n")
    return acct.result(path, expected=EXPECTED_ROW, max_malformed=max_malformed)
