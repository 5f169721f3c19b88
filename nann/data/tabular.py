"""Header CSV / TSV and Parquet input of `nann data prepare`, with a column mapping (--columns).

Both stream, so memory stays bounded by one batch plus the compact arrays of valid rows: delimited text goes
through pyarrow's CSV reader in 4 MiB blocks, Parquet row group by row group (ParquetFile.iter_batches). Only the
mapped columns are read: as text from CSV/TSV (so each value is checked on its own and a bad one makes only its
row malformed), in their stored type from Parquet. Every batch then goes through the same conversion
(`nann.data.columns`) and accounting (`nann.data.interactions`).

Defaults for the optional roles: no ``category`` column puts every item in one shared category (raw id 0); no
``behavior`` column makes every row ``pv``; no ``rating`` column keeps every row.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from nann.data import columns as col
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
CSV_BLOCK_BYTES = 4 << 20
SNIFFED_DELIMITERS = (",", "\t", ";", "|")


def parse_column_map(text: str | None) -> dict[str, str]:
    """--columns 'user=COL,item=COL,time=COL[,category=COL][,behavior=COL][,rating=COL]' -> {role: column}."""
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
                        f"time=timestamp)")
    return mapping


def first_line(path: str) -> bytes:
    """The file's first line (at most 64 KiB, no newline)."""
    with open(path, "rb") as f:
        return f.read(1 << 16).split(b"\n", 1)[0].rstrip(b"\r")


def resolve_delimiter(path: str, fmt: str, given: str | None) -> str:
    """--delimiter if given ('tab' or '\\t' for a tab), a tab for TSV, else the most frequent of , TAB ; | in
    the header line."""
    if given:
        delimiter = "\t" if given in ("tab", "\\t") else given
        if len(delimiter) != 1:
            raise UserError(f"--delimiter must be one character (or 'tab'), got {given!r}")
        return delimiter
    if fmt == "tsv":
        return "\t"
    header = first_line(path).decode("utf-8", "replace")
    best = max(SNIFFED_DELIMITERS, key=header.count)
    if not header.count(best):
        raise UserError(f"cannot tell the delimiter of {path} from its header {header[:100]!r}; pass --delimiter")
    return best


def _delimited_options(delimiter: str, on_invalid_row=None):
    read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)  # serial: rows get their number
    parse = pa_csv.ParseOptions(delimiter=delimiter, ignore_empty_lines=False, invalid_row_handler=on_invalid_row)
    return read, parse


def file_columns(path: str, fmt: str, delimiter: str | None = None) -> list[str]:
    """Column names of a header CSV/TSV or Parquet file."""
    try:
        if fmt == "parquet":
            return list(pq.ParquetFile(path).schema_arrow.names)
        read, parse = _delimited_options(resolve_delimiter(path, fmt, delimiter), lambda row: "skip")
        with pa_csv.open_csv(path, read_options=read, parse_options=parse) as reader:
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"cannot read {path} as {fmt}: {str(e).splitlines()[0]}") from None


def _delimited_batches(path: str, delimiter: str, names: list[str], acct: RowAccounting, progress: bool):
    """(batch, position) pairs of a header CSV/TSV, mapped columns as text; position(i) is row i's line number.
    Rows with the wrong number of fields are counted here (kind ``columns``)."""
    invalid: list[int] = []  # line numbers of those rows, while they may still matter for an example's position

    def on_invalid_row(row) -> str:
        acct.rows += 1
        acct.add_malformed("columns", row.number, row.text)
        if not acct.examples_settled(row.number):
            invalid.append(row.number)
        return "skip"

    def line_number(i: int, base: int) -> int:
        # records are the header (line 1), then data rows and invalid rows in file order
        skipped = np.asarray(invalid, dtype=np.int64) - np.arange(len(invalid))
        return base + i + 2 + int(np.searchsorted(skipped, base + i + 2, side="right"))

    read, parse = _delimited_options(delimiter, on_invalid_row)
    convert = pa_csv.ConvertOptions(include_columns=names, column_types={n: pa.string() for n in names})
    delivered = 0  # data rows handed out so far
    with open(path, "rb") as f, progress_bar(path, os.path.getsize(path), "B", progress) as bar:
        try:
            reader = pa_csv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                settled = acct.examples_settled(delivered + 2)
                position = None if settled else functools.partial(line_number, base=delivered)
                yield batch, position
                delivered += batch.num_rows
                bar.update(f.tell() - bar.n)
        except pa.ArrowException as e:
            raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


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
                 hash_ids: tuple[str, ...] = (), min_rating: float | None = None,
                 time_window: tuple[int, int] | None = None, max_malformed: float | None = 0.01,
                 progress: bool = True) -> ReadResult:
    """Read a header CSV / TSV (fmt 'csv' / 'tsv') or Parquet file whose columns `mapping` names by role.
    `hash_ids` roles hold string keys (nann.data.string_ids); rows rated below `min_rating` are dropped."""
    check_input_file(path)
    for role in hash_ids:
        if role not in mapping:
            raise UserError(f"--hash-ids {role}: --columns maps no {role} column")
    if min_rating is not None and "rating" not in mapping:
        raise UserError("--min-rating needs a rating column: add rating=COLUMN to --columns")
    delimiter = None if fmt == "parquet" else resolve_delimiter(path, fmt, delimiter)
    present = file_columns(path, fmt, delimiter)
    unknown = [name for name in mapping.values() if name not in present]
    if unknown:
        raise UserError(f"{path} has no column {', '.join(map(repr, unknown))}; its columns: "
                        f"{', '.join(present)}")
    names = list(dict.fromkeys(mapping.values()))
    acct = RowAccounting("row" if fmt == "parquet" else "line")
    registries = {role: KeyRegistry(role, mapping[role]) for role in hash_ids}
    converter = _BatchConverter(mapping, registries, min_rating, time_window, blank_rows_ignored=fmt != "parquet")
    batches = (_parquet_batches(path, names, progress) if fmt == "parquet"
               else _delimited_batches(path, delimiter, names, acct, progress))
    for batch, position in batches:
        converter.add(batch, position, acct)
    hint = ("; if the ids are strings (ASINs, UUIDs...), pass --hash-ids"
            if acct.malformed["non_integer"] else "")
    expected = "row of " + ", ".join(f"{role}={name}" for role, name in mapping.items())
    return acct.result(path, expected=expected, max_malformed=max_malformed, hint=hint, id_keys=registries)
