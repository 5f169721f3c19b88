"""Item-side data: an items file that gives each item its category, joined to the log by item id (`nann data
prepare --items FILE --item-columns ...`) and read the same way by `nann items add`.

An items file is delimited text, one item a row, with a header or not and any delimiter (`nann.data.delimited`:
MovieLens' ``movies.csv``, ``movies.dat`` with ``::``, ``u.item`` with ``|``). ``--item-columns`` names two roles,
by header name or 1-based position:

- ``item``: the raw item id, an integer (or a string key hashed as the log's when ``--hash-ids`` names item);
- ``category``: a column whose text is the category, or ``flags:A-B``, one-hot columns A..B (inclusive).
  A text category that holds several values (MovieLens genres ``Animation|Children's|Comedy``) gives its
  **first** value, split on the category separator (``|`` by default; '' keeps the whole text); integer text is
  the raw category id itself, any other text is hashed to one (``string_ids.string_id``, as ``--hash-ids``
  does) and its name kept. With flags, the category is the 0-based index of the first non-zero flag within A..B
  (MovieLens 100k ``u.item``: ``category=flags:6-24``, index = the genre id of ``u.genre``).

An empty category, or no flag set, gives the shared category UNKNOWN_CATEGORY, as do items of the log that the
file does not list. The first row of an item wins; its later rows are counted as repeated. Malformed rows are
counted and skipped by the kinds of `nann.data.interactions` (``columns``; ``missing`` item id; ``non_integer``
item id or flag; ``negative_id``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nann.data import columns as col
from nann.data import delimited
from nann.data.interactions import MALFORMED_KINDS, RowAccounting, check_input_file
from nann.data.string_ids import KeyRegistry, string_id
from nann.errors import UserError

UNKNOWN_CATEGORY = (1 << 63) - 1
"""Raw category id of items without one: not in the items file, an empty category, no flag set."""
ITEM_ROLES = ("item", "category")
MALFORMED_ITEM_KINDS = ("columns", "missing", "non_integer", "negative_id")  # the kinds an items file can have
DEFAULT_SEPARATOR = "|"
_FLAGS = re.compile(r"flags:([^-]+)-(.+)")


@dataclass(frozen=True)
class ItemColumns:
    """Parsed --item-columns: the item column, and the category's column or its flag columns."""

    item: str
    category: str | None = None
    flags: tuple[str, str] | None = None

    @classmethod
    def parse(cls, text: str) -> "ItemColumns":
        """'item=COL,category=COL' or 'item=COL,category=flags:A-B' (COL a header name or a 1-based position)."""
        mapping: dict[str, str] = {}
        for part in (p for p in text.split(",") if p.strip()):
            role, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not value or role not in ITEM_ROLES or role in mapping:
                raise UserError(f"--item-columns takes item=COL,category=COL (or category=flags:A-B), each once; "
                                f"got {part!r}")
            mapping[role] = value
        if set(mapping) != set(ITEM_ROLES):
            raise UserError(f"--item-columns must map item and category, e.g. item=movieId,category=genres; "
                            f"got {text!r}")
        flags = _FLAGS.fullmatch(mapping["category"])
        if flags:
            return cls(mapping["item"], flags=(flags.group(1).strip(), flags.group(2).strip()))
        return cls(mapping["item"], category=mapping["category"])

    def named(self) -> list[str]:
        return [self.item, *([self.category] if self.category else self.flags)]

    def flag_columns(self, present: list[str]) -> list[str]:
        """The columns A..B in file order."""
        lo, hi = (present.index(c) if c in present else -1 for c in self.flags)
        if lo < 0 or hi < lo:
            raise UserError(f"category=flags:{self.flags[0]}-{self.flags[1]}: name two columns of the file, the first "
                            f"not after the second")
        return present[lo:hi + 1]


@dataclass
class ItemsFile:
    """The items of an items file, distinct, in file order, with their raw category ids."""

    item: np.ndarray  # int64 raw item ids
    category: np.ndarray  # int64 raw category ids
    category_names: dict[int, str] = field(default_factory=dict)  # raw id -> text, for hashed categories
    rows: int = 0
    repeated: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    report: str = ""  # the malformed rows, for humans ('' if none)

    def category_of(self, raw_items: np.ndarray) -> np.ndarray:
        """Raw category ids (int64) of raw item ids; UNKNOWN_CATEGORY for items the file does not list."""
        raw_items = np.asarray(raw_items, dtype=np.int64)
        if not self.item.shape[0]:
            return np.full(raw_items.shape, UNKNOWN_CATEGORY, dtype=np.int64)
        order = np.argsort(self.item)
        ids = self.item[order]
        pos = np.minimum(np.searchsorted(ids, raw_items), ids.shape[0] - 1)
        return np.where(ids[pos] == raw_items, self.category[order][pos], UNKNOWN_CATEGORY).astype(np.int64)


class _CategoryText:
    """Raw category ids of text values (first of the separated values; integer text as is, other text hashed),
    remembering the names of the hashed ones."""

    def __init__(self, separator: str):
        self.separator = separator
        self.names: dict[int, str] = {}

    def ids(self, values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(raw ids, negative) of a text column; UNKNOWN_CATEGORY where empty."""
        text = values
        if self.separator:
            text = pc.list_element(pc.split_pattern(pc.fill_null(text, ""), self.separator, max_splits=1), 0)
        text = pc.utf8_trim_whitespace(pc.fill_null(text, ""))
        empty = col.missing(text)
        ids, not_integer = col.integers(text, "category")
        words = np.flatnonzero(not_integer & ~empty)
        if words.size:
            encoded = pc.dictionary_encode(text.take(pa.array(words)))
            names = encoded.dictionary.to_pylist()
            hashed = np.array([string_id(n) for n in names], dtype=np.int64)
            self.names.update(zip(hashed.tolist(), names))
            ids[words] = hashed[encoded.indices.to_numpy()]
        ids[empty] = UNKNOWN_CATEGORY
        return ids, ~not_integer & ~empty & (ids < 0)


def _flag_categories(batch: pa.RecordBatch, flags: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw ids, missing, non_integer) of one-hot flag columns: the index of the first non-zero flag."""
    values = [col.integers(batch.column(c), c) for c in flags]
    missing = np.logical_or.reduce([col.missing(batch.column(c)) for c in flags])
    non_integer = np.logical_or.reduce([bad for _, bad in values]) & ~missing
    set_ = np.stack([v != 0 for v, _ in values], axis=1)
    ids = np.where(set_.any(axis=1), set_.argmax(axis=1), UNKNOWN_CATEGORY).astype(np.int64)
    return ids, missing, non_integer


def read_items(path: str, columns: str, *, delimiter: str | None = None, encoding: str | None = None,
               no_header: bool = False, separator: str = DEFAULT_SEPARATOR, hash_item: bool = False,
               max_malformed: float | None = 0.01, progress: bool = False) -> ItemsFile:
    """Read an items file (module doc); `columns` is the --item-columns text."""
    check_input_file(path)
    spec = ItemColumns.parse(columns)
    layout = delimited.layout_of(path, "csv", spec.named(), delimiter=delimiter, encoding=encoding,
                                 no_header=no_header)
    present = delimited.file_columns(path, layout)
    flags = spec.flag_columns(present) if spec.flags else []
    wanted = list(dict.fromkeys([spec.item, *([spec.category] if spec.category else flags)]))
    delimited.check_columns(path, layout, wanted)
    acct = RowAccounting("line")
    text = _CategoryText(separator)
    registry = KeyRegistry("item", spec.item) if hash_item else None
    for batch, position in delimited.batches(path, layout, wanted, acct, progress):
        n = batch.num_rows
        raw = batch.column(spec.item)
        item_missing = col.missing(raw)
        blank = np.logical_and.reduce([col.missing(batch.column(c)) for c in wanted])
        if registry is not None:
            item, item_bad = registry.ids_of(col.plain(raw)), np.zeros(n, dtype=bool)
        else:
            item, item_bad = col.integers(raw, spec.item)
        if flags:
            category, flag_missing, flag_bad = _flag_categories(batch, flags)
            category_negative = np.zeros(n, dtype=bool)
        else:
            category, category_negative = text.ids(batch.column(spec.category))
            flag_missing = flag_bad = np.zeros(n, dtype=bool)
        checks = (("missing", item_missing | flag_missing), ("non_integer", (item_bad & ~item_missing) | flag_bad),
                  ("negative_id", (item < 0) | category_negative))
        codes = np.zeros(n, dtype=np.int8)
        for kind, bad in reversed(checks):  # the first kind that applies wins
            codes[bad] = MALFORMED_KINDS.index(kind) + 1
        codes[blank] = 0
        acct.rows += int(n - blank.sum())
        acct.add_malformed_codes(codes, position, lambda i: layout.delimiter.join(
            str(batch.column(c)[i].as_py()) for c in wanted))
        keep = (codes == 0) & ~blank
        zeros = np.zeros(int(keep.sum()), dtype=np.int64)  # an item row is an interaction row without user and time
        acct.keep(zeros, item[keep], category[keep], zeros, zeros)
    res = acct.result(path, expected=f"item row of {columns}", max_malformed=max_malformed)
    _, first = np.unique(res.item, return_index=True)
    first = np.sort(first)
    used = set(res.category[first].tolist())
    return ItemsFile(item=res.item[first], category=res.category[first],
                     category_names={k: v for k, v in text.names.items() if k in used}, rows=res.rows,
                     repeated=int(res.item.shape[0] - first.shape[0]),
                     malformed={k: res.malformed[k] for k in MALFORMED_ITEM_KINDS},
                     report=res.summary())
