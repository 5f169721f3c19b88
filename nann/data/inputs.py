"""Picks the reader for `nann data prepare --input FILE --format ...` and checks that the options fit it."""
from __future__ import annotations

import dataclasses
import os

from nann.data import delimited
from nann.data.interactions import ReadResult, check_input_file
from nann.data.reader import classify_line, read_user_behavior
from nann.data.tabular import ID_ROLES, parquet_columns, parse_column_map, read_tabular
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
    if not has_column_map and classify_line(delimited.first_line(path))[0] is None:
        return "userbehavior"
    return "csv"


def _hash_roles(text: str | None) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in (text or "").split(",") if r.strip())
    unknown = [r for r in roles if r not in ID_ROLES]
    if unknown:
        raise UserError(f"--hash-ids takes roles among {', '.join(ID_ROLES)}; got {', '.join(unknown)}")
    return roles


def _no_columns_error(path: str, fmt: str, delimiter: str | None, encoding: str | None) -> UserError:
    """The refusal of a file without --columns, naming its columns (or, headerless, its first line's fields)."""
    roles = "user=COL,item=COL,time=COL[,category=COL,behavior=COL,rating=COL]"
    if fmt == "parquet":
        return UserError(f"{path} is read as parquet; say which columns to use with --columns {roles} (its columns: "
                         f"{', '.join(parquet_columns(path))})")
    layout = delimited.layout_of(path, fmt, ["1"], delimiter=delimiter, encoding=encoding)
    fields = layout.first_fields(path)
    if not layout.header:
        return UserError(f"{path} has no header (its first line is data: {', '.join(fields)}); name its "
                         f"{len(fields)} columns by 1-based position with --columns, e.g. user=1,item=2,time=4 "
                         f"(roles: {roles})")
    header = delimited.file_columns(path, dataclasses.replace(layout, positional=False))
    return UserError(f"{path} is read as {fmt} with a header; say which columns to use with --columns {roles} "
                     f"(its columns: {', '.join(header)})")


def read_input(path: str, fmt: str = "auto", *, columns: str | None = None, delimiter: str | None = None,
               encoding: str | None = None, no_header: bool = False, hash_ids: str | None = None,
               min_rating: float | None = None, time_window: tuple[int, int] | None = None,
               max_malformed: float | None = 0.01, progress: bool = True) -> tuple[str, ReadResult]:
    """Read an interaction file in any supported format; returns (format read, result)."""
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_input_file(path)
    if fmt == "auto":
        fmt = detect_format(path, bool(columns or delimiter))
    if fmt == "userbehavior":
        given = [flag for flag, v in (("--columns", columns), ("--delimiter", delimiter), ("--encoding", encoding),
                                      ("--no-header", no_header or None), ("--hash-ids", hash_ids),
                                      ("--min-rating", min_rating)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to delimited text and Parquet input, not to the UserBehavior "
                            f"format (fixed columns user_id,item_id,category_id,behavior_type,timestamp)")
        return fmt, read_user_behavior(path, max_malformed=max_malformed, time_window=time_window,
                                       progress=progress)
    if not columns:
        raise _no_columns_error(path, fmt, delimiter, encoding)
    return fmt, read_tabular(path, fmt, parse_column_map(columns), delimiter=delimiter, encoding=encoding,
                             no_header=no_header, hash_ids=_hash_roles(hash_ids), min_rating=min_rating,
                             time_window=time_window, max_malformed=max_malformed, progress=progress)
