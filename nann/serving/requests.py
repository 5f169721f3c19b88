"""Validation of served requests, shared by the Triton models and unit-tested without a server.

Every check raises `RequestError` with a message that names the problem; the Triton models turn it into
an INVALID_ARG error for that one request while the rest of the batch goes on.

The optional per-request inputs of the `nann` ensemble are two tables, `SEARCH_INPUTS` (the search tunables of
`nann.engine.params`, one input each) and `FILTER_INPUTS` (eligibility filters): the model configs, the parsing here
and `nann_info`'s defaults and limits are all generated from them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from nann.engine.params import DEFAULT_SEARCH, RESULT_SIZE, TUNABLES, WALK_TUNABLES, SearchParams, Tunable, json_value

INT_KINDS = "iu"
MAX_LAYERS = 8  # per-layer values a request may send (an HNSW graph of 10M items at M=32 has ~6 levels)
UNKNOWN_ID_POLICIES = ("skip", "refuse")


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client verbatim."""


@dataclass(frozen=True)
class ServingLimits:
    """What the served search allows (from the `retrieve` model's config): the model's history sizes, the search a
    request gets for the inputs it does not send (`defaults`), the most it may ask of each search input (`maxima`, by
    input name; a tunable's served maximum unless given here, seeds at most max_seq), the unknown-id policy and the
    filters' list sizes. The config holds them flat (`to_json`: default_X and max_X of every search input X)."""

    max_seq: int = 50
    max_history: int = 1000
    defaults: SearchParams | None = None     # None: DEFAULT_SEARCH, seeds at most max_seq
    maxima: Mapping[str, int] | None = None  # search input name → the most a request may ask
    # History ids the index does not know: "skip" drops (and counts) them, "refuse" refuses the request.
    unknown_ids: str = "skip"
    # Eligibility filters (FILTER_INPUTS): raw item ids a request may exclude, raw categories it may allow.
    max_exclude: int = 10_000
    max_categories: int = 1_000

    def __post_init__(self):
        if self.defaults is None:
            object.__setattr__(self, "defaults", _within_history(DEFAULT_SEARCH, self.max_seq))
        given = dict(self.maxima or {})
        unknown = sorted(set(given) - set(_BOUNDED))
        if unknown:
            raise ValueError(f"maxima for {unknown}: only {', '.join(_BOUNDED)} have one")
        object.__setattr__(self, "maxima", {name: int(given.get(name, t.served_max)) for name, t in _BOUNDED.items()})
        for spec in SEARCH_INPUTS:
            try:
                spec.read(spec.name, self.default(spec.name), self)
            except RequestError as e:
                raise ValueError(f"default_{spec.name}: {e}") from None
        if self.unknown_ids not in UNKNOWN_ID_POLICIES:
            raise ValueError(f"unknown_ids={self.unknown_ids!r} is not one of {', '.join(UNKNOWN_ID_POLICIES)}")

    def default(self, name: str):
        """The value a request gets for the search input `name` when it does not send it."""
        return getattr(self.defaults, _BY_NAME[name].field)

    def maximum(self, name: str) -> int:
        """The most a request may ask of the search input `name`."""
        return self.maxima[name] if name in self.maxima else self.max_seq

    def to_json(self) -> dict:
        return {"max_seq": self.max_seq, "max_history": self.max_history,
                **{f"default_{s.name}": json_value(self.default(s.name)) for s in SEARCH_INPUTS},
                **{f"max_{name}": value for name, value in self.maxima.items()},
                "unknown_ids": self.unknown_ids, "max_exclude": self.max_exclude, "max_categories": self.max_categories}

    @classmethod
    def from_json(cls, d: dict) -> "ServingLimits":
        """From `to_json`'s form; keys an older export lacks take their defaults."""
        d = dict(d)
        given = {t.field: d.pop(f"default_{t.name}") for t in TUNABLES if f"default_{t.name}" in d}
        maxima = {name: d.pop(f"max_{name}") for name in _BOUNDED if f"max_{name}" in d}
        defaults = replace(_within_history(DEFAULT_SEARCH, d.get("max_seq", cls.max_seq)), **given)
        return cls(defaults=defaults, maxima=maxima, **d)

    @classmethod
    def for_catalogue(cls, defaults: SearchParams, **fields) -> "ServingLimits":
        """Limits whose search defaults are a catalogue's `defaults` (`GraphDir.search_defaults`; seeds at most
        max_seq), with the maxima raised to the defaults where these are larger; `fields` set the rest."""
        p = _within_history(defaults, fields.get("max_seq", cls.max_seq))
        maxima = {name: max(t.served_max, _largest(getattr(p, t.field))) for name, t in _BOUNDED.items()}
        return cls(defaults=p, maxima=maxima, **fields)

    def published(self) -> dict:
        """The defaults, limits and unknown-id policy as `nann_info` publishes them."""
        return {
            "defaults": {s.name: json_value(self.default(s.name)) for s in SEARCH_INPUTS},
            "limits": {"max_history": self.max_history,
                       **{f"max_{s.name}": self.maximum(s.name) for s in SEARCH_INPUTS},
                       **{f"max_{f.name}": getattr(self, f"max_{f.name}") for f in LIST_FILTERS}},
            "unknown_ids": self.unknown_ids,
        }


def _within_history(params: SearchParams, max_seq: int) -> SearchParams:
    """`params` with the tunables bounded by the model's history (seeds: a model with shorter histories has fewer
    behaviours to seed from) at most max_seq."""
    bounded = [t.field for t in TUNABLES if t.served_max is None]
    return replace(params, **{name: min(getattr(params, name), max_seq) for name in bounded})


def _largest(value) -> int:
    """The largest of a tunable's value (one per layer, or one)."""
    return max(value) if isinstance(value, tuple) else value


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


def _sent(value) -> bool:
    """Whether an optional input carries a value (None, or an empty tensor, means not sent)."""
    return value is not None and np.asarray(value).size > 0


def _bounded(low: int, note: str = "") -> Reader:
    """One integer in [low, limits.maximum(NAME)]."""
    def read(name: str, value, limits: ServingLimits) -> int:
        high = limits.maximum(name)
        row = int_row(name, value)
        if row.size != 1:
            raise RequestError(f"{name} must be a single value, got {row.size}")
        if not low <= row[0] <= high:
            raise RequestError(f"{name}={row[0]} is outside [{low}, {high}]" + (f" ({note})" if note else ""))
        return int(row[0])
    return read


def _per_layer(low: int) -> Reader:
    """One integer per layer (top first; 1 … MAX_LAYERS of them), each in [low, limits.maximum(NAME)]."""
    def read(name: str, value, limits: ServingLimits) -> tuple[int, ...]:
        high = limits.maximum(name)
        row = int_row(name, value)
        if not 1 <= row.size <= MAX_LAYERS:
            raise RequestError(f"{name} needs 1 to {MAX_LAYERS} values (one per layer, top first), got {row.size}")
        if row.min() < low or row.max() > high:
            raise RequestError(f"{name}={row.tolist()} is outside [{low}, {high}] per layer")
        return tuple(int(x) for x in row)
    return read


@dataclass(frozen=True)
class SearchInput:
    """An optional per-request input of the `nann` ensemble carrying one search tunable, passed through to `retrieve`.

    read(name, value sent, limits) → the value of SearchParams' `field`, refusing bad input with RequestError
    (`parse_search` gives an input not sent the limits' default); dims are Triton's (1: one value, -1: a list)."""

    name: str
    field: str
    read: Reader
    dims: int = 1
    dtype: str = "INT32"

    @classmethod
    def of(cls, tunable: Tunable) -> "SearchInput":
        """The input of a tunable (`nann.engine.params.TUNABLES`): its name, its bounds, one value or one per layer."""
        if tunable.per_layer:
            return cls(tunable.name, tunable.field, _per_layer(tunable.request_low), dims=-1)
        note = f"0 = {tunable.zero}" if tunable.zero else ""
        return cls(tunable.name, tunable.field, _bounded(tunable.request_low, note))


SEARCH_INPUTS = tuple(SearchInput.of(t) for t in (RESULT_SIZE, *WALK_TUNABLES))
SEARCH_INPUT_NAMES = tuple(s.name for s in SEARCH_INPUTS)
_BY_NAME = {t.name: t for t in TUNABLES}
_BOUNDED = {t.name: t for t in TUNABLES if t.served_max is not None}  # the others are bounded by max_seq


def _ids(what: str) -> Reader:
    """A list of raw ids (int64), at most limits.max_NAME of them; empty when not sent."""
    def read(name: str, value, limits: ServingLimits) -> np.ndarray:
        if not _sent(value):
            return np.zeros(0, dtype=np.int64)
        return bounded_ids(name, value, getattr(limits, f"max_{name}"), what)
    return read


def _flag(name: str, value, limits: ServingLimits) -> bool:
    """One boolean (BOOL, or an integer 0 / 1); False when not sent."""
    if not _sent(value):
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
    search parameter), passed through to `retrieve`. read(name, value or None when not sent, limits) → the filter
    (nothing filtered when not sent), refusing bad input with RequestError; a list input (dims -1) is bounded by
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
    the limits' default), bounded by the limits. (A k above the last layer's ef is fine: the engine's last list holds
    at least k entries, `SearchParams.walk_ef`.)
    """
    unexpected = sorted(set(inputs) - set(SEARCH_INPUT_NAMES))
    if unexpected:
        raise TypeError(f"unexpected search inputs {unexpected} (known: {', '.join(SEARCH_INPUT_NAMES)})")
    fields = {s.field: s.read(s.name, value, limits) if _sent(value) else limits.default(s.name)
              for s in SEARCH_INPUTS for value in (inputs.get(s.name),)}  # the defaults were checked with the limits
    layers = {s.name: len(fields[s.field]) for s in SEARCH_INPUTS if s.dims == -1}
    if len(set(layers.values())) > 1:
        raise RequestError(f"{' and '.join(layers)} need one value per layer each, got "
                           f"{' and '.join(map(str, layers.values()))} (send {'both' if len(layers) == 2 else 'all'}, "
                           f"top layer first; the defaults have {len(limits.default(next(iter(layers))))} layers)")
    return SearchParams(**fields)
