"""Is the model worth serving? Its recall beside the baselines a user already has, with intervals over users.

A model's recall-all@M means something only next to what a user gets without it: the M most popular items (the
same list for everyone; "unseen" drops the user's own history items from it first) and a two-tower model trained
on the same data (an inner product, what an ANN index over user and item vectors serves). Each number comes with a
95% bootstrap interval over the evaluated users, and each comparison with the interval of the paired difference
(the same users, resampled together), which is what says whether a gap is larger than the noise of a small log.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 2000
CONFIDENCE = 0.95
BEATS_POPULARITY_BY = 1.3  # the margin over popularity a model must show to be called useful (issue #24's bar)


def popularity_hits(item_counts: np.ndarray, histories, targets: np.ndarray, top_m: int,
                    unseen: bool = False) -> np.ndarray:
    """Per user: is its target among the top_m most frequent training items (bool [U])? With ``unseen`` each user's
    list skips the items of its own history (what a shop that never re-recommends gets)."""
    order = np.argsort(-np.asarray(item_counts), kind="stable")
    targets = np.asarray(targets)
    if not unseen:
        return np.isin(targets, order[:top_m])
    hits = np.zeros(len(targets), dtype=bool)
    for i, (history, target) in enumerate(zip(histories, targets)):
        seen = np.unique(np.asarray(history))
        head = order[:top_m + len(seen)]
        hits[i] = target in head[~np.isin(head, seen)][:top_m]
    return hits


def interval(values: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-user values and its percentile bootstrap interval (CONFIDENCE)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


@dataclass
class Comparison:
    """One baseline against the model, on the same users."""
    name: str
    hits: np.ndarray  # bool [U], the baseline's

    def difference(self, model_hits: np.ndarray) -> tuple[float, float, float]:
        """The model's recall minus this baseline's, with its paired bootstrap interval."""
        return interval(np.asarray(model_hits, np.float64) - np.asarray(self.hits, np.float64))


def verdict(model_name: str, model_hits: np.ndarray, baselines: list[Comparison]) -> list[str]:
    """Plain sentences: does the model beat each baseline beyond the noise? Popularity must also be beaten by
    BEATS_POPULARITY_BY times."""
    lines = []
    model_recall = float(np.mean(model_hits)) if len(model_hits) else float("nan")
    for b in baselines:
        diff, low, high = b.difference(model_hits)
        base = float(np.mean(b.hits)) if len(b.hits) else float("nan")
        ratio = model_recall / base if base > 0 else float("inf")
        gap = f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
        if low > 0 and (not b.name.startswith("popularity") or ratio >= BEATS_POPULARITY_BY):
            lines.append(f"{model_name} beats {b.name}: {gap} ({ratio:.2f}x)")
        elif high < 0:
            lines.append(f"{model_name} does NOT beat {b.name}: it is worse by {gap}")
        elif low > 0:
            lines.append(f"{model_name} beats {b.name} by {gap} but only {ratio:.2f}x, short of "
                         f"{BEATS_POPULARITY_BY}x")
        else:
            lines.append(f"{model_name} does NOT beat {b.name} beyond the noise of {len(model_hits)} users: {gap}")
    return lines


def report(model_name: str, model_hits: np.ndarray, baselines: list[Comparison], top_m: int) -> str:
    """The table (recall with its interval, for the model and each baseline) and the verdict lines."""
    width = max(len(model_name), *(len(b.name) for b in baselines)) if baselines else len(model_name)
    lines = [f"recall-all@{top_m} on {len(model_hits)} users ({CONFIDENCE:.0%} bootstrap intervals):"]
    for name, hits in [(model_name, model_hits)] + [(b.name, b.hits) for b in baselines]:
        mean, low, high = interval(hits)
        lines.append(f"  {name:<{width}}  {mean:.4f} [{low:.4f}, {high:.4f}]")
    return "\n".join(lines + verdict(model_name, model_hits, baselines))
