"""What every input reader returns, and the row accounting they share.

A reader (UserBehavior CSV in `reader.py`, delimited text and Parquet in `tabular.py`) streams its file, keeps
the valid rows as compact arrays (33 bytes a row) and counts the rest with a `RowAccounting`. A row is malformed,
and skipped, for the first of these kinds that applies:
- ``columns``      wrong number of fields (delimited text);
- ``missing``      a field the reader needs is empty (or null);
- ``non_integer``  an id (or a UserBehavior timestamp) is not a decimal integer that fits int64;
- ``negative_id``  user, item or category id is negative;
- ``behavior``     behaviour type is not one of pv, buy, cart, fav (case-sensitive);
- ``rating``       the rating is not a number;
- ``timestamp``    the time is not an integer (unix seconds) or ISO-8601 date/time, is negative, or lies outside
                   the --time-window when one is given.
Rows with a rating below --min-rating are not malformed: they are dropped and counted as ``below_min_rating``.
"""
from __future__ import annotations

import bisect
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from nann.errors import UserError

BEHAVIORS = ("pv", "buy", "cart", "fav")
"""Behaviour codes: index in this tuple (int8)."""
MALFORMED_KINDS = ("columns", "missing", "non_integer", "negative_id", "behavior", "rating", "timestamp")
MAX_EXAMPLES = 5


def check_input_file(path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; pass the interaction file itself")


def timestamp_ok(ts, window: tuple[int, int] | None):
    """Non-negative and, when a window (start inclusive, end exclusive) is given, inside it (scalar or array)."""
    start, end = window if window is not None else (0, None)
    ok = ts >= max(start, 0)
    if end is not None:
        ok = ok & (ts < end)
    return ok


@dataclass
class ReadResult:
    """Valid rows in file order, plus counts of what was skipped."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    category: np.ndarray  # int64
    behavior: np.ndarray  # int8, index into BEHAVIORS
    timestamp: np.ndarray  # int64, unix seconds
    rows: int  # non-blank rows seen
    malformed: dict[str, int] = field(default_factory=dict)  # kind -> count (every kind present, 0 if none)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (line / row number, kind, text)
    position_unit: str = "line"  # what the example numbers count: "line" (text files) or "row" (Parquet)
    below_min_rating: int = 0
    id_keys: dict = field(default_factory=dict)  # role -> string_ids.KeyRegistry, for the --hash-ids roles

    @property
    def valid_rows(self) -> int:
        return int(self.user.shape[0])

    @property
    def malformed_rows(self) -> int:
        return int(sum(self.malformed.values()))

    def summary(self) -> str:
        """Multi-line human report of the malformed rows ('' when there are none)."""
        if not self.malformed_rows:
            return ""
        kinds = ", ".join(f"{k}: {v}" for k, v in self.malformed.items() if v)
        lines = [f"skipped {self.malformed_rows} malformed of {self.rows} rows ({kinds})"]
        for pos, kind, text in self.examples:
            lines.append(f"  {self.position_unit} {pos} ({kind}): {text!r}")
        return "\n".join(lines)


class RowAccounting:
    """Collects a reader's valid rows (as arrays, batch by batch) and counts its malformed ones by kind,
    keeping the first MAX_EXAMPLES with their line (or row) number."""

    _DTYPES = (np.int64, np.int64, np.int64, np.int8, np.int64)

    def __init__(self, position_unit: str = "line"):
        self.position_unit = position_unit
        self.rows = 0
        self.below_min_rating = 0
        self.malformed = {k: 0 for k in MALFORMED_KINDS}
        self.examples: list[tuple[int, str, str]] = []
        self._parts: list[list[np.ndarray]] = [[] for _ in self._DTYPES]

    def add_malformed(self, kind: str, position: int, text: str) -> None:
        self.malformed[kind] += 1
        self._example(position, kind, text)

    def add_malformed_codes(self, codes: np.ndarray, position, text) -> None:
        """Count a batch's rows by kind code (0 = not malformed, k = MALFORMED_KINDS[k - 1]); position(i) and
        text(i) describe row i of the batch, asked only for rows that may become examples (position None: none)."""
        counts = np.bincount(codes, minlength=len(MALFORMED_KINDS) + 1)
        for kind, n in zip(MALFORMED_KINDS, counts[1:].tolist()):
            self.malformed[kind] += n
        for i in np.flatnonzero(codes)[:MAX_EXAMPLES if position else 0].tolist():
            pos = position(i)
            if self.examples_settled(pos):
                break
            self._example(pos, MALFORMED_KINDS[codes[i] - 1], text(i))

    def examples_settled(self, position: int) -> bool:
        """True when no row at `position` or later can be an example any more (the first MAX_EXAMPLES are known)."""
        return len(self.examples) >= MAX_EXAMPLES and self.examples[-1][0] < position

    def _example(self, position: int, kind: str, text: str) -> None:
        """Keep the MAX_EXAMPLES malformed rows with the smallest positions, in order (a reader may meet a block's
        bad rows out of line order)."""
        if not self.examples_settled(position):
            bisect.insort(self.examples, (position, kind, text[:200]))
            del self.examples[MAX_EXAMPLES:]

    def keep(self, user, item, category, behavior, timestamp) -> None:
        """Append a batch of valid rows (arrays in file order)."""
        for dst, col, dt in zip(self._parts, (user, item, category, behavior, timestamp), self._DTYPES):
            dst.append(np.asarray(col, dtype=dt))

    def result(self, path: str, *, expected: str, max_malformed: float | None, hint: str = "",
               id_keys: dict | None = None) -> ReadResult:
        """The collected rows as a ReadResult. Raises UserError when the file holds no valid row or (max_malformed
        not None) more than that share of its rows is malformed. `expected` describes a valid row; `hint` is
        appended to those errors."""
        cols = [np.concatenate(p) if p else np.zeros(0, dtype=dt) for p, dt in zip(self._parts, self._DTYPES)]
        self._parts = [[] for _ in self._DTYPES]
        res = ReadResult(*cols, rows=self.rows, malformed=self.malformed, examples=self.examples,
                         position_unit=self.position_unit, below_min_rating=self.below_min_rating,
                         id_keys=id_keys or {})
        rows, bad = self.rows, res.malformed_rows
        first = f"; first at {self.position_unit} {self.examples[0][0]} ({self.examples[0][1]}): " \
                f"{self.examples[0][2]!r}" if self.examples else ""
        if res.valid_rows == 0 and rows == 0:
            raise UserError(f"{path} holds no rows; expected {expected}")
        if res.valid_rows == 0 and bad:
            raise UserError(f"{path}: none of its {rows} rows is a valid {expected}{first}{hint}")
        if res.valid_rows == 0:
            raise UserError(f"{path}: all {rows} rows have a rating below --min-rating; lower it")
        if max_malformed is not None and bad > max_malformed * rows:
            kinds = ", ".join(f"{k}: {v}" for k, v in self.malformed.items() if v)
            raise UserError(f"{path}: {bad} of {rows} rows ({bad / rows:.2%}) are malformed ({kinds}), above "
                            f"--max-malformed {max_malformed:g}{first}. Fix the file or raise --max-malformed{hint}")
        return res


def progress_bar(path: str, total: int, unit: str, enabled: bool):
    """A tqdm bar on stderr for reading `path` (a no-op bar when not enabled)."""
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, unit_scale=True, desc=f"reading {os.path.basename(path)}",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, disable=not enabled)
