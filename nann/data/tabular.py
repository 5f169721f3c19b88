"""Delimited text (CSV / TSV / any delimiter, with a header or columns by position) and Parquet input of `nann data
prepare`, with a column mapping (--columns).

Both stream, so memory stays bounded by one batch plus the compact arrays of valid rows: delimited text goes
through pyarrow's CSV reader in 4 MiB blocks (layout and streaming: `nann.data.delimited`), Parquet row group by
row group (ParquetFile.iter_batches). Only the mapped columns are read: as text from delimited files (so each value
is checked on its own and a bad one makes only its row malformed), in their stored type from Parquet. Every batch
then goes through the same conversion (`nann.data.columns`) and accounting (`nann.data.interactions`).

Defaults for the optional roles: no ``category`` column puts every item in one shared category (raw id 0); no
``behavior`` column makes every row ``pv``; no ``rating`` column keeps every row.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nann.data import columns as col
from nann.data import delimited
from nann.data.interactions import (MALFORMED_KINDS, ReadResult, RowAccounting, check_input_file, progress_bar,
                                    timestamp_ok)
from nann.data.string_ids import KeyRegistry
from nann.errors import UserError

ROLES = ("user", "item", "time", "category", "behavior", "rating")
REQUIRED_ROLES = ("user", "item", "time")
ID_ROLES = ("user", "item", "category")
SHARED_CATEGORY = 0
"""Raw category id of every item when the input has no category column."""
BATCH_ROWS = 1 << 18  # Parquet rows per batch


def parse_column_map(text: str | None) -> dict[str, str]:
    """--columns 'user=COL,item=COL,time=COL[,category=COL][,behavior=COL][,rating=COL]' -> {role: column}; COL is a
    header name or a 1-based position (every one the same way)."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        role, sep, name = (s.strip() for s in part.partition("="))
        if not part.strip():
            continue
        if not sep or not name or role not in ROLES:
            raise UserError(f"--columns takes ROLE=COLUMN pairs with ROLE in {', '.join(ROLES)}; got {part!r}")
        if role in mapping:
            raise UserError(f"--columns maps {role!r} twice")
        mapping[role] = name
    absent = [r for r in REQUIRED_ROLES if r not in mapping]
    if absent:
        raise UserError(f"--columns must map {', '.join(absent)} (e.g. --columns user=userId,item=movieId,"
                        f"time=timestamp, or by position user=1,item=2,time=4)")
    delimited.by_position(mapping.values())
    return mapping


def parquet_columns(path: str) -> list[str]:
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from None


def _parquet_mapping(path: str, mapping: dict[str, str]) -> dict[str, str]:
    """The mapping with positions replaced by the Parquet file's column names; unknown columns refused."""
    present = parquet_columns(path)
    if delimited.by_position(mapping.values()):
        if max(int(c) for c in mapping.values()) > len(present):
            raise UserError(f"{path} has {len(present)} columns; --columns names a position past them")
        mapping = {role: present[int(c) - 1] for role, c in mapping.items()}
    unknown = [name for name in mapping.values() if name not in present]
    if unknown:
        raise UserError(f"{path} has no column {', '.join(map(repr, unknown))}; its columns: "
                        f"{', '.join(present)}")
    return mapping


def _parquet_batches(path: str, names: list[str], progress: bool):
    """(batch, position) pairs of a Parquet file, one row group at a time; position(i) is row i's 1-based row."""
    try:
        pf = pq.ParquetFile(path)
        with progress_bar(path, pf.metadata.num_rows, "rows", progress) as bar:
            done = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=names):
                yield batch, (lambda i, base=done: base + i + 1)
                done += batch.num_rows
                bar.update(batch.num_rows)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"cannot read {path} as Parquet: {str(e).splitlines()[0]}") from None


class _BatchConverter:
    """Checks and converts one batch's mapped columns, then hands its rows to the accounting."""

    def __init__(self, mapping: dict[str, str], registries: dict[str, KeyRegistry], min_rating: float | None,
                 time_window: tuple[int, int] | None, blank_rows_ignored: bool):
        self.mapping, self.registries = mapping, registries
        self.min_rating, self.time_window = min_rating, time_window
        self.blank_rows_ignored = blank_rows_ignored

    def _ids(self, batch: pa.RecordBatch, role: str) -> tuple[np.ndarray, np.ndarray]:
        n = batch.num_rows
        if role not in self.mapping:  # only category can be absent
            return np.full(n, SHARED_CATEGORY, dtype=np.int64), np.zeros(n, dtype=bool)
        values = batch.column(self.mapping[role])
        if role in self.registries:
            return self.registries[role].ids_of(col.plain(values)), np.zeros(n, dtype=bool)
        return col.integers(values, self.mapping[role])

    def add(self, batch: pa.RecordBatch, position, acct: RowAccounting) -> None:
        n = batch.num_rows
        absent = np.stack([col.missing(batch.column(name)) for name in self.mapping.values()])
        blank = absent.all(axis=0) if self.blank_rows_ignored else np.zeros(n, dtype=bool)
        ids = {role: self._ids(batch, role) for role in ID_ROLES}
        behavior, behavior_bad = (col.behavior_codes(batch.column(self.mapping["behavior"]))
                                  if "behavior" in self.mapping else (np.zeros(n, np.int8), np.zeros(n, bool)))
        rating, rating_bad = (col.ratings(batch.column(self.mapping["rating"]), self.mapping["rating"])
                              if "rating" in self.mapping else (None, np.zeros(n, dtype=bool)))
        ts = col.timestamps(batch.column(self.mapping["time"]), self.mapping["time"])
        checks = (("missing", absent.any(axis=0)),
                  ("non_integer", np.logical_or.reduce([bad for _, bad in ids.values()])),
                  ("negative_id", np.logical_or.reduce([v < 0 for v, _ in ids.values()])),
                  ("behavior", behavior_bad), ("rating", rating_bad),
                  ("timestamp", ~timestamp_ok(ts, self.time_window)))
        codes = np.zeros(n, dtype=np.int8)
        for kind, bad in reversed(checks):  # the first kind that applies wins
            codes[bad] = MALFORMED_KINDS.index(kind) + 1
        codes[blank] = 0
        acct.rows += int(n - blank.sum())
        acct.add_malformed_codes(codes, position, lambda i: " ".join(
            f"{name}={batch.column(name)[i].as_py()}" for name in self.mapping.values()))
        keep = (codes == 0) & ~blank
        if self.min_rating is not None:
            low = keep & (rating < self.min_rating)
            acct.below_min_rating += int(low.sum())
            keep &= ~low
        acct.keep(*(v[keep] for v, _ in ids.values()), behavior[keep], ts[keep])


def read_tabular(path: str, fmt: str, mapping: dict[str, str], *, delimiter: str | None = None,
                 encoding: str | None = None, no_header: bool = False, hash_ids: tuple[str, ...] = (),
                 min_rating: float | None = None, time_window: tuple[int, int] | None = None,
                 max_malformed: float | None = 0.01, progress: bool = True) -> ReadResult:
    """Read a delimited (fmt 'csv' / 'tsv': `nann.data.delimited` says how) or Parquet file whose columns `mapping`
    names by role. `hash_ids` roles hold string keys (nann.data.string_ids); rows rated below `min_rating` are
    dropped."""
    check_input_file(path)
    for role in hash_ids:
        if role not in mapping:
            raise UserError(f"--hash-ids {role}: --columns maps no {role} column")
    if min_rating is not None and "rating" not in mapping:
        raise UserError("--min-rating needs a rating column: add rating=COLUMN to --columns")
    acct = RowAccounting("row" if fmt == "parquet" else "line")
    if fmt == "parquet":
        mapping = _parquet_mapping(path, mapping)
        batches = _parquet_batches(path, list(dict.fromkeys(mapping.values())), progress)
    else:
        layout = delimited.layout_of(path, fmt, mapping.values(), delimiter=delimiter, encoding=encoding,
                                     no_header=no_header)
        delimited.check_columns(path, layout, mapping.values())
        batches = delimited.batches(path, layout, list(dict.fromkeys(mapping.values())), acct, progress)
    registries = {role: KeyRegistry(role, mapping[role]) for role in hash_ids}
    converter = _BatchConverter(mapping, registries, min_rating, time_window, blank_rows_ignored=fmt != "parquet")
    for batch, position in batches:
        converter.add(batch, position, acct)
    hint = ("; if the ids are strings (ASINs, UUIDs...), pass --hash-ids"
            if acct.malformed["non_integer"] else "")
    expected = "row of " + ", ".join(f"{role}={name}" for role, name in mapping.items())
    return acct.result(path, expected=expected, max_malformed=max_malformed, hint=hint, id_keys=registries)
