"""Picks the reader for `nann data prepare --input FILE --format ...` and checks that the options fit it."""
from __future__ import annotations

import os

from nann.data.interactions import ReadResult, check_input_file
from nann.data.reader import classify_line, read_user_behavior
from nann.data.tabular import ID_ROLES, file_columns, first_line, parse_column_map, read_tabular
from nann.errors import UserError

FORMATS = ("auto", "userbehavior", "csv", "tsv", "parquet")
_PARQUET_MAGIC = b"PAR1"


def detect_format(path: str, has_column_map: bool) -> str:
    """'parquet' by extension (.parquet, .pq) or magic bytes; 'tsv' by extension (.tsv, .tab); 'userbehavior' when
    no column mapping is given and the first line is a valid UserBehavior row; else 'csv'."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        magic = f.read(len(_PARQUET_MAGIC))
    if ext in (".parquet", ".pq") or magic == _PARQUET_MAGIC:
        return "parquet"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if not has_column_map and classify_line(first_line(path))[0] is None:
        return "userbehavior"
    return "csv"


def _hash_roles(text: str | None) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in (text or "").split(",") if r.strip())
    unknown = [r for r in roles if r not in ID_ROLES]
    if unknown:
        raise UserError(f"--hash-ids takes roles among {', '.join(ID_ROLES)}; got {', '.join(unknown)}")
    return roles


def read_input(path: str, fmt: str = "auto", *, columns: str | None = None, delimiter: str | None = None,
               hash_ids: str | None = None, min_rating: float | None = None,
               time_window: tuple[int, int] | None = None, max_malformed: float | None = 0.01,
               progress: bool = True) -> tuple[str, ReadResult]:
    """Read an interaction file in any supported format; returns (format read, result)."""
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_input_file(path)
    if fmt == "auto":
        fmt = detect_format(path, bool(columns or delimiter))
    if fmt == "userbehavior":
        given = [flag for flag, v in (("--columns", columns), ("--delimiter", delimiter), ("--hash-ids", hash_ids),
                                      ("--min-rating", min_rating)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to header CSV/TSV and Parquet input, not to the UserBehavior "
                            f"format (fixed columns user_id,item_id,category_id,behavior_type,timestamp)")
        return fmt, read_user_behavior(path, max_malformed=max_malformed, time_window=time_window,
                                       progress=progress)
    if not columns:
        raise UserError(f"{path} is read as {fmt} with a header; say which columns to use with --columns "
                        f"user=COL,item=COL,time=COL[,category=COL,behavior=COL,rating=COL] "
                        f"(its columns: {', '.join(file_columns(path, fmt, delimiter))})")
    return fmt, read_tabular(path, fmt, parse_column_map(columns), delimiter=delimiter,
                             hash_ids=_hash_roles(hash_ids), min_rating=min_rating, time_window=time_window,
                             max_malformed=max_malformed, progress=progress)
