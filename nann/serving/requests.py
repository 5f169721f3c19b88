"""Validation of served requests, shared by the Triton models and unit-tested without a server.

Every check raises `RequestError` with a message that names the problem; the Triton models turn it into
an INVALID_ARG error for that one request while the rest of the batch goes on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nann.engine.search import SearchParams

INT_KINDS = "iu"


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client verbatim."""


@dataclass(frozen=True)
class ServingLimits:
    """Defaults and configured maxima of the served search (from the `retrieve` model's config)."""

    max_seq: int = 50
    max_history: int = 1000
    default_k: int = 200
    max_k: int = 1000
    default_ef: tuple[int, ...] = (100, 200, 400)
    # The paper's {1,1,3} stops the layer-0 walk after 3 hops: on our synthetic data (100k items, attention
    # model) coverage@200 0.65 at 5.8% of items scored, while {1,3,10} (rounds end early once no new item
    # enters the beam) reaches 0.93 at 4.9% (perf/RESULTS.md).
    default_rounds: tuple[int, ...] = (1, 3, 10)
    max_ef: int = 2000
    max_rounds: int = 64   # a narrow frontier needs more layer-0 rounds (e.g. frontier 32, rounds {1,3,40})
    # List entries expanded per round, best first (SearchParams.frontier); 0 = all new entries (Algorithm 2).
    default_frontier: int = 0
    # A beam list never holds more than max(ef, k) <= max_ef entries, so any frontier at or above max_ef
    # expands the whole list, the same as 0; the maximum only keeps requests to sane values.
    max_frontier: int = 2000

    def __post_init__(self):
        if not 0 <= self.default_frontier <= self.max_frontier:
            raise ValueError(f"default_frontier={self.default_frontier} is outside [0, {self.max_frontier}]")

    def to_json(self) -> dict:
        return {
            "max_seq": self.max_seq, "max_history": self.max_history, "default_k": self.default_k,
            "max_k": self.max_k, "default_ef": list(self.default_ef), "default_rounds": list(self.default_rounds),
            "max_ef": self.max_ef, "max_rounds": self.max_rounds,
            "default_frontier": self.default_frontier, "max_frontier": self.max_frontier,
        }

    @classmethod
    def from_json(cls, d: dict) -> "ServingLimits":
        d = dict(d)
        for key in ("default_ef", "default_rounds"):
            if key in d:
                d[key] = tuple(int(x) for x in d[key])
        return cls(**d)


def _one_row(name: str, arr: np.ndarray) -> np.ndarray:
    """Inputs arrive as [1, n] (batched models) or [n]; return the flat row or refuse other shapes."""
    if arr.ndim == 2 and arr.shape[0] == 1:
        return arr[0]
    if arr.ndim == 1:
        return arr
    raise RequestError(f"{name} must have shape [n] or [1, n], got {list(arr.shape)}")


def _int_row(name: str, arr: np.ndarray) -> np.ndarray:
    row = _one_row(name, np.asarray(arr))
    if row.dtype.kind not in INT_KINDS:
        raise RequestError(f"{name} must be an integer tensor, got {row.dtype}")
    return row.astype(np.int64, copy=False)


def parse_history(raw_history: np.ndarray, raw_to_dense, limits: ServingLimits) -> np.ndarray:
    """Raw item ids (oldest first) → dense ids of the most recent `max_seq` behaviours.

    Refuses an empty history, one longer than `max_history` ids, and any id the index does not know
    (naming up to ten of them). Histories longer than `max_seq` keep their most recent behaviours.
    """
    history = _int_row("history", raw_history)
    if history.size == 0:
        raise RequestError("history is empty: send at least one item id")
    if history.size > limits.max_history:
        raise RequestError(f"history has {history.size} item ids, more than the maximum {limits.max_history}")
    dense = raw_to_dense(history)
    unknown = history[dense < 0]
    if unknown.size:
        shown = ", ".join(str(x) for x in unknown[:10]) + (" ..." if unknown.size > 10 else "")
        raise RequestError(f"unknown item ids ({unknown.size}): {shown}")
    return dense[-limits.max_seq:].astype(np.int64)


def parse_search(k: np.ndarray | None, ef: np.ndarray | None, rounds: np.ndarray | None,
                 limits: ServingLimits, frontier: np.ndarray | None = None) -> SearchParams:
    """Per-request search parameters from the optional `k`, `ef`, `rounds`, `frontier` inputs, bounded by the limits.

    ef and rounds are per layer, top layer first, with as many entries as the defaults. The last layer's
    ef is raised to k when k is larger, so the result list can hold k items. frontier is one value: at most
    that many unexpanded list entries are expanded per round, best first (0 = all of them).
    """
    k_value = _single_value("k", k, limits.default_k)
    if not 1 <= k_value <= limits.max_k:
        raise RequestError(f"k={k_value} is outside [1, {limits.max_k}]")
    frontier_value = _single_value("frontier", frontier, limits.default_frontier)
    if not 0 <= frontier_value <= limits.max_frontier:
        raise RequestError(f"frontier={frontier_value} is outside [0, {limits.max_frontier}] (0 = unlimited)")
    ef_values = _layer_values("ef", ef, limits.default_ef, limits.max_ef)
    round_values = _layer_values("rounds", rounds, limits.default_rounds, limits.max_rounds)
    ef_values = ef_values[:-1] + (max(ef_values[-1], k_value),)
    return SearchParams(ef=ef_values, rounds=round_values, top_m=k_value, frontier=frontier_value)


def _single_value(name: str, value: np.ndarray | None, default: int) -> int:
    if value is None or np.asarray(value).size == 0:
        return default
    row = _int_row(name, value)
    if row.size != 1:
        raise RequestError(f"{name} must be a single value, got {row.size}")
    return int(row[0])


def _layer_values(name: str, values: np.ndarray | None, default: tuple[int, ...], maximum: int) -> tuple[int, ...]:
    if values is None or np.asarray(values).size == 0:
        return default
    row = _int_row(name, values)
    if row.size != len(default):
        raise RequestError(f"{name} needs {len(default)} values (one per layer, top first), got {row.size}")
    if row.min() < 1 or row.max() > maximum:
        raise RequestError(f"{name}={row.tolist()} is outside [1, {maximum}] per layer")
    return tuple(int(x) for x in row)
