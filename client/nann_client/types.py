"""Result and info value types returned by the clients."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = ["RetrievalResult", "ServerInfo"]


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Top-k items for one history, best first.

    Attributes:
        item_ids: int64 array [k] of raw item ids, in descending score order.
        scores: float32 array [k], the model's scores of `item_ids` (descending).
        dropped: how many of the history's item ids the server did not know and left out (0 from a server
            that does not report it).
    """

    item_ids: np.ndarray
    scores: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def __iter__(self):
        """Iterate over ``(item_id, score)`` pairs as Python ``int`` / ``float``."""
        return iter(zip(self.item_ids.tolist(), self.scores.tolist()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetrievalResult):
            return NotImplemented
        return bool(np.array_equal(self.item_ids, other.item_ids) and np.array_equal(self.scores, other.scores)
                    and self.dropped == other.dropped)

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable

    def to_dict(self) -> Dict[str, Any]:
        """``{"item_ids": [int, ...], "scores": [float, ...], "dropped": int}`` (JSON-serializable)."""
        return {"item_ids": self.item_ids.tolist(), "scores": self.scores.tolist(), "dropped": int(self.dropped)}


@dataclass(frozen=True)
class ServerInfo:
    """What the served `nann` model says about itself (its `nann_info` config parameter + version).

    Attributes:
        model_name: the Triton model name (normally ``"nann"``).
        model_version: the served version (string, as Triton reports it), highest if several.
        num_items: number of items in the catalogue.
        emb_dim: item embedding size.
        scorer_backend: the scorer runtime, e.g. ``"onnxruntime"``, ``"torch"``, ``"tensorrt"``.
        defaults: default request parameters, ``{"k": int, "ef": [int...], "rounds": [int...], "frontier": int,
            "seeds": int, "patience": int}`` (servers exported before `frontier`, `seeds` or `patience` existed lack
            those keys).
        limits: request limits, ``{"max_history", "max_k", "max_ef", "max_rounds", "max_frontier", "max_seeds",
            "max_patience", "max_exclude", "max_categories"}`` (servers exported before the filters lack the last two).
        max_batch_size: the model's max_batch_size from its config.
        raw: the whole decoded `nann_info` object (may hold more keys than the above, e.g. ``"unknown_ids"``:
            ``"skip"`` — unknown history ids are dropped and counted — or ``"refuse"``).
    """

    model_name: str
    model_version: str
    num_items: int
    emb_dim: int
    scorer_backend: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, Any] = field(default_factory=dict)
    max_batch_size: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def default_k(self) -> Optional[int]:
        v = self.defaults.get("k")
        return None if v is None else int(v)

    @property
    def max_k(self) -> Optional[int]:
        v = self.limits.get("max_k")
        return None if v is None else int(v)

    @property
    def max_history(self) -> Optional[int]:
        v = self.limits.get("max_history")
        return None if v is None else int(v)
