"""Typed values of one column of a header CSV/TSV or Parquet batch (an arrow array), each with a mask of the rows
whose value is bad. Text columns are parsed row by row in effect (vectorised), so a bad value makes only its own
row malformed, whatever the rest of its batch holds. Timestamp text is integer unix seconds or ISO-8601."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nann.data.interactions import BEHAVIORS
from nann.errors import UserError

_INT64_MAX = (1 << 63) - 1
_WHOLE_INT = r"-?[0-9]+"
_SHORT_INT = r"^-?[0-9]{1,18}$"  # always fits int64
_LONG_INT = r"^-?[0-9]{19,}$"  # may not: checked one by one
NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # decimal text: ratings; a first line with one is data
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BAD_TIME = -1  # stands for an unparseable time; negative times are bad anyway


def plain(values: pa.Array) -> pa.Array:
    """Dictionary-encoded columns (pandas categoricals in Parquet) decoded to their value type."""
    return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def _is_text(values: pa.Array) -> bool:
    return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)


def missing(values: pa.Array) -> np.ndarray:
    """Rows whose value is null, NaN or empty text."""
    values = plain(values)
    absent = pc.is_null(values, nan_is_null=True)
    if _is_text(values):
        absent = pc.or_(absent, pc.equal(values, ""))
    return pc.fill_null(absent, True).to_numpy(zero_copy_only=False)


def _numpy(values: pa.Array, fill) -> np.ndarray:
    return pc.fill_null(values, fill).to_numpy(zero_copy_only=False)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    return _numpy(pc.match_substring_regex(text, pattern), False)


def _unsupported(column: str, values: pa.Array, what: str) -> UserError:
    return UserError(f"column {column!r} has type {values.type}; expected {what}")


def _text_integers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, ok) of decimal integer text (no spaces, no '+', no decimals)."""
    ok = _matches(text, _SHORT_INT)
    values = pc.cast(pc.if_else(pa.array(ok), text, "0"), pa.int64()).to_numpy().copy()
    for i in np.flatnonzero(_matches(text, _LONG_INT)).tolist():
        v = int(text[i].as_py())
        if abs(v) <= _INT64_MAX:
            values[i], ok[i] = v, True
    return values, ok


def integers(values: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad) of an id column: integer types pass through, integral floats and integer text convert;
    anything else is bad (missing values too: check `missing` first)."""
    values = plain(values)
    t = values.type
    if pa.types.is_integer(t):
        raw = _numpy(values, 0)
        bad = _numpy(pc.is_null(values), True)
        if raw.dtype == np.uint64:
            bad |= raw > _INT64_MAX
            raw = np.where(bad, 0, raw)
        return raw.astype(np.int64), bad
    if pa.types.is_floating(t):
        f = _numpy(values.cast(pa.float64()), np.nan)
        ok = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2.0 ** 63)
        return np.where(ok, f, 0).astype(np.int64), ~ok
    if _is_text(values):
        v, ok = _text_integers(values)
        return v, ~ok
    raise _unsupported(column, values, "integer ids (or text: see --hash-ids)")


def parse_time_text(text: str) -> int:
    """Unix seconds of integer text or an ISO-8601 date / date-time (no zone = UTC; 'Z' and offsets honoured;
    fractions of a second dropped); -1 if it is neither."""
    if re.fullmatch(_WHOLE_INT, text):
        value = int(text)
        return value if abs(value) <= _INT64_MAX else _BAD_TIME
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        return _BAD_TIME
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(seconds=1)


def timestamps(values: pa.Array, column: str) -> np.ndarray:
    """Unix seconds (int64) of a time column; negative where the value is not a time (check `missing` first).
    Integers are seconds; floats are floored; timestamp and date types convert; text is integer seconds or
    ISO-8601, the ISO strings parsed once per distinct value."""
    values = plain(values)
    t = values.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        seconds = pc.cast(pc.cast(values, pa.timestamp("s"), safe=False), pa.int64())
        return _numpy(seconds, _BAD_TIME)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        seconds, bad = integers(pc.floor(values) if pa.types.is_floating(t) else values, column)
        return np.where(bad, _BAD_TIME, seconds)
    if not _is_text(values):
        raise _unsupported(column, values, "unix seconds, a timestamp type or ISO-8601 text")
    seconds, ok = _text_integers(values)
    seconds[~ok] = _BAD_TIME
    rest = np.flatnonzero(~ok & ~missing(values))
    if rest.size:
        encoded = pc.dictionary_encode(values.take(pa.array(rest)))
        parsed = np.array([parse_time_text(s) for s in encoded.dictionary.to_pylist()], dtype=np.int64)
        seconds[rest] = parsed[encoded.indices.to_numpy()]
    return seconds


def ratings(values: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, bad) of a rating column: numbers, or decimal text."""
    values = plain(values)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        r = _numpy(values.cast(pa.float64()), np.nan)
        return r, ~np.isfinite(r)
    if not _is_text(values):
        raise _unsupported(column, values, "numbers")
    ok = _matches(values, NUMBER)
    return pc.cast(pc.if_else(pa.array(ok), values, "0"), pa.float64()).to_numpy(), ~ok


def behavior_codes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int8 index into BEHAVIORS, bad) of a behaviour column (case-sensitive pv / buy / cart / fav)."""
    values = plain(values)
    text = values if _is_text(values) else values.cast(pa.string())
    code = _numpy(pc.index_in(text, value_set=pa.array(BEHAVIORS, type=text.type)), -1).astype(np.int8)
    return np.maximum(code, 0), code < 0


def parse_time_window(text: str) -> tuple[int, int]:
    """--time-window START,END (each unix seconds or ISO-8601; START inclusive, END exclusive)."""
    parts = [p.strip() for p in text.split(",")]
    bounds = [parse_time_text(p) if p else _BAD_TIME for p in parts]
    if len(parts) != 2 or min(bounds) < 0 or bounds[0] >= bounds[1]:
        raise UserError(f"--time-window takes START,END (unix seconds or ISO-8601 dates, START before END), "
                        f"got {text!r}")
    return bounds[0], bounds[1]
