"""Validation of served requests, shared by the Triton models and unit-tested without a server.

Every check raises `RequestError` with a message that names the problem; the Triton models turn it into
an INVALID_ARG error for that one request while the rest of the batch goes on.

The optional per-request inputs of the `nann` ensemble are two tables, `SEARCH_INPUTS` (search parameters) and
`FILTER_INPUTS` (eligibility filters): the model configs, the parsing here and `nann_info`'s defaults and limits
are all generated from them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from nann.engine.search import DEFAULT_SEARCH, SearchParams, default_search

INT_KINDS = "iu"
MAX_LAYERS = 8  # per-layer values a request may send (an HNSW graph of 10M items at M=32 has ~6 levels)
UNKNOWN_ID_POLICIES = ("skip", "refuse")


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client verbatim."""


@dataclass(frozen=True)
class ServingLimits:
    """Defaults and configured maxima of the served search (from the `retrieve` model's config).

    Every optional input X of `SEARCH_INPUTS` has its `default_X` and `max_X` here."""

    max_seq: int = 50
    max_history: int = 1000
    default_k: int = DEFAULT_SEARCH.top_m
    max_k: int = 1000
    default_ef: tuple[int, ...] = DEFAULT_SEARCH.ef
    default_rounds: tuple[int, ...] = DEFAULT_SEARCH.rounds
    max_ef: int = 4096   # ef beyond a small catalogue's size makes the walk exhaustive (an oracle's search)
    max_rounds: int = 64   # a narrow frontier needs more layer-0 rounds (e.g. frontier 32, rounds {1,3,40})
    # List entries expanded per round, best first (SearchParams.frontier); 0 = all new entries (Algorithm 2).
    default_frontier: int = DEFAULT_SEARCH.frontier
    # A beam list never holds more than max(ef, k) <= max_ef entries, so any frontier at or above max_ef
    # expands the whole list, the same as 0; the maximum only keeps requests to sane values.
    max_frontier: int = 2000
    # The most recent distinct behaviours that join layer 0 as entry points (SearchParams.seeds); 0 = none.
    # None: the search default, at most max_seq (a model with shorter histories has fewer behaviours to seed from).
    default_seeds: int | None = None
    # History ids the index does not know: "skip" drops (and counts) them, "refuse" refuses the request.
    unknown_ids: str = "skip"
    # Eligibility filters (FILTER_INPUTS): raw item ids a request may exclude, raw categories it may allow.
    max_exclude: int = 10_000
    max_categories: int = 1_000

    @property
    def max_seeds(self) -> int:
        """Seeds come from the behaviours the model sees, the most recent max_seq."""
        return self.max_seq

    def __post_init__(self):
        if self.default_seeds is None:
            object.__setattr__(self, "default_seeds", min(DEFAULT_SEARCH.seeds, self.max_seq))
        for spec in SEARCH_INPUTS:
            try:
                spec.read(spec.name, None, self)
            except RequestError as e:
                raise ValueError(f"default_{spec.name}: {e}") from None
        if self.unknown_ids not in UNKNOWN_ID_POLICIES:
            raise ValueError(f"unknown_ids={self.unknown_ids!r} is not one of {', '.join(UNKNOWN_ID_POLICIES)}")

    def to_json(self) -> dict:
        return {key: _plain(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "ServingLimits":
        d = dict(d)
        for key in ("default_ef", "default_rounds"):
            if key in d:
                d[key] = tuple(int(x) for x in d[key])
        return cls(**d)

    @classmethod
    def for_catalogue(cls, num_items: int, **fields) -> "ServingLimits":
        """Limits whose search defaults are `default_search(num_items)` (max_ef raised to the default's ef when
        it is larger); `fields` set the rest."""
        p = default_search(num_items)
        return cls(**{"default_ef": p.ef, "default_rounds": p.rounds, "default_frontier": p.frontier,
                      "max_ef": max(cls.max_ef, max(p.ef)), **fields})

    def published(self) -> dict:
        """The defaults, limits and unknown-id policy as `nann_info` publishes them."""
        return {
            "defaults": {s.name: _plain(getattr(self, f"default_{s.name}")) for s in SEARCH_INPUTS},
            "limits": {"max_history": self.max_history, **{f"max_{s.name}": getattr(self, f"max_{s.name}")
                                                           for s in SEARCH_INPUTS + LIST_FILTERS}},
            "unknown_ids": self.unknown_ids,
        }


def _plain(value):
    """JSON's form of a limit: tuples (per-layer values) as lists."""
    return list(value) if isinstance(value, tuple) else value


def _one_row(name: str, arr: np.ndarray) -> np.ndarray:
    """Inputs arrive as [1, n] (batched models) or [n] (a scalar counts as [1]); return the flat row or refuse
    other shapes."""
    if arr.ndim == 2 and arr.shape[0] == 1:
        return arr[0]
    if arr.ndim <= 1:
        return arr.reshape(-1)
    raise RequestError(f"{name} must have shape [n] or [1, n], got {list(arr.shape)}")


def int_row(name: str, arr) -> np.ndarray:
    """One request's integer input as a flat int64 row (refusing other shapes and non-integer dtypes)."""
    row = _one_row(name, np.asarray(arr))
    if row.dtype.kind not in INT_KINDS:
        raise RequestError(f"{name} must be an integer tensor, got {row.dtype}")
    return row.astype(np.int64, copy=False)


def listing(ids: np.ndarray, shown: int = 10) -> str:
    """The first `shown` ids for a message ("1, 2, 3 ...")."""
    return ", ".join(str(x) for x in ids[:shown]) + (" ..." if ids.size > shown else "")


def bounded_ids(name: str, value, limit: int, what: str = "item ids") -> np.ndarray:
    """A list input of raw ids as a flat int64 row, refusing more than `limit` of them."""
    row = int_row(name, value)
    if row.size > limit:
        raise RequestError(f"{name} has {row.size} {what}, more than the maximum {limit}")
    return row


def parse_history(raw_history: np.ndarray, raw_to_dense, limits: ServingLimits) -> tuple[np.ndarray, int]:
    """Raw item ids (oldest first) → (dense ids of the most recent `max_seq` known behaviours, ids dropped).

    Refuses a history longer than `max_history` ids. Ids the index does not know are dropped and counted
    (`unknown_ids="skip"`, as if they had not been sent) or refuse the request, naming up to ten of them
    (`"refuse"`). An empty result is a new user: the model's cold-start (all-masked) state serves it.
    """
    history = bounded_ids("history", raw_history, limits.max_history)
    dense = raw_to_dense(history)
    unknown = history[dense < 0]
    if unknown.size and limits.unknown_ids == "refuse":
        raise RequestError(f"unknown item ids ({unknown.size}): {listing(unknown)}")
    return dense[dense >= 0][-limits.max_seq:].astype(np.int64), int(unknown.size)


Reader = Callable[[str, Any, ServingLimits], Any]


def _bounded(low: int, note: str = "") -> Reader:
    """One integer in [low, limits.max_NAME]; limits.default_NAME when not sent."""
    def read(name: str, value, limits: ServingLimits) -> int:
        high = getattr(limits, f"max_{name}")
        if value is None or np.asarray(value).size == 0:
            value = getattr(limits, f"default_{name}")
        row = int_row(name, value)
        if row.size != 1:
            raise RequestError(f"{name} must be a single value, got {row.size}")
        if not low <= row[0] <= high:
            raise RequestError(f"{name}={row[0]} is outside [{low}, {high}]" + (f" ({note})" if note else ""))
        return int(row[0])
    return read


def _per_layer(low: int) -> Reader:
    """One integer per layer (top first; 1 … MAX_LAYERS of them, limits.default_NAME when not sent), each in
    [low, limits.max_NAME]."""
    def read(name: str, value, limits: ServingLimits) -> tuple[int, ...]:
        default, high = getattr(limits, f"default_{name}"), getattr(limits, f"max_{name}")
        row = int_row(name, default if value is None or np.asarray(value).size == 0 else value)
        if not 1 <= row.size <= MAX_LAYERS:
            raise RequestError(f"{name} needs 1 to {MAX_LAYERS} values (one per layer, top first), got {row.size}")
        if row.min() < low or row.max() > high:
            raise RequestError(f"{name}={row.tolist()} is outside [{low}, {high}] per layer")
        return tuple(int(x) for x in row)
    return read


@dataclass(frozen=True)
class SearchInput:
    """An optional per-request input of the `nann` ensemble, passed through to `retrieve`.

    read(name, value or None when not sent, limits) → the value of SearchParams' `field`, refusing bad input
    with RequestError; dims are Triton's (1: one value, -1: a list)."""

    name: str
    field: str
    read: Reader
    dims: int = 1
    dtype: str = "INT32"


SEARCH_INPUTS = (
    SearchInput("k", "top_m", _bounded(1)),
    SearchInput("ef", "ef", _per_layer(1), dims=-1),
    SearchInput("rounds", "rounds", _per_layer(1), dims=-1),
    SearchInput("frontier", "frontier", _bounded(0, "0 = unlimited")),
    SearchInput("seeds", "seeds", _bounded(0, "0 = none")),
)
SEARCH_INPUT_NAMES = tuple(s.name for s in SEARCH_INPUTS)


def _ids(what: str) -> Reader:
    """A list of raw ids (int64), at most limits.max_NAME of them; empty when not sent."""
    def read(name: str, value, limits: ServingLimits) -> np.ndarray:
        if value is None or np.asarray(value).size == 0:
            return np.zeros(0, dtype=np.int64)
        return bounded_ids(name, value, getattr(limits, f"max_{name}"), what)
    return read


def _flag(name: str, value, limits: ServingLimits) -> bool:
    """One boolean (BOOL, or an integer 0 / 1); False when not sent."""
    if value is None or np.asarray(value).size == 0:
        return False
    row = _one_row(name, np.asarray(value))
    if row.size != 1:
        raise RequestError(f"{name} must be a single value, got {row.size}")
    if row.dtype.kind not in "b" + INT_KINDS or row[0] not in (0, 1):
        raise RequestError(f"{name} must be true or false, got {row[0]!r}")
    return bool(row[0])


@dataclass(frozen=True)
class FilterInput:
    """An optional per-request input of the `nann` ensemble saying which items the request may not get (data, not a
    search parameter), passed through to `retrieve`. read as for SearchInput; a list input (dims -1) is bounded by
    limits.max_NAME, published in `nann_info`."""

    name: str
    read: Reader
    dims: int = -1
    dtype: str = "INT64"


FILTER_INPUTS = (
    FilterInput("exclude", _ids("item ids")),
    FilterInput("exclude_history", _flag, dims=1, dtype="BOOL"),
    FilterInput("categories", _ids("category ids")),
)
FILTER_INPUT_NAMES = tuple(f.name for f in FILTER_INPUTS)
LIST_FILTERS = tuple(f for f in FILTER_INPUTS if f.dims == -1)
REQUEST_INPUTS = SEARCH_INPUTS + FILTER_INPUTS
REQUEST_INPUT_NAMES = SEARCH_INPUT_NAMES + FILTER_INPUT_NAMES


class FilterRequest(NamedTuple):
    """One request's eligibility filters, in raw ids as sent (fields: FILTER_INPUTS' names)."""
    exclude: np.ndarray = np.zeros(0, dtype=np.int64)
    exclude_history: bool = False
    categories: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def restricts(self) -> bool:
        """Whether the request filters anything."""
        return bool(self.exclude.size or self.exclude_history or self.categories.size)


NO_FILTERS = FilterRequest()


def parse_filters(limits: ServingLimits, **inputs) -> FilterRequest:
    """A request's filters from the optional inputs (`FILTER_INPUTS` by name; None or missing = none), bounded by
    the limits."""
    unexpected = sorted(set(inputs) - set(FILTER_INPUT_NAMES))
    if unexpected:
        raise TypeError(f"unexpected filter inputs {unexpected} (known: {', '.join(FILTER_INPUT_NAMES)})")
    return FilterRequest(**{f.name: f.read(f.name, inputs.get(f.name), limits) for f in FILTER_INPUTS})


def parse_search(limits: ServingLimits, **inputs) -> SearchParams:
    """Per-request search parameters from the optional inputs (`SEARCH_INPUTS` by name; None, empty or missing =
    the limits' default), bounded by the limits.

    The last layer's ef is raised to k when k is larger, so the result list can hold k items.
    """
    unexpected = sorted(set(inputs) - set(SEARCH_INPUT_NAMES))
    if unexpected:
        raise TypeError(f"unexpected search inputs {unexpected} (known: {', '.join(SEARCH_INPUT_NAMES)})")
    fields = {s.field: s.read(s.name, inputs.get(s.name), limits) for s in SEARCH_INPUTS}
    if len(fields["ef"]) != len(fields["rounds"]):
        raise RequestError(f"ef and rounds need one value per layer each, got {len(fields['ef'])} and "
                           f"{len(fields['rounds'])} (send both, top layer first; the defaults have "
                           f"{len(limits.default_ef)} layers)")
    fields["ef"] = fields["ef"][:-1] + (max(fields["ef"][-1], fields["top_m"]),)
    return SearchParams(**fields)
