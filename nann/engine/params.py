"""Search parameters and THE search defaults, in a module light enough for the command line to import (no Numba)."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SearchParams:
    """Beam-retrieval parameters, one entry per layer, TOP layer first (paper default shown).

    frontier: at most this many of a request's unexpanded list entries are expanded per round, best first (the
    rest wait for a later round); 0 expands all of them, Algorithm 2 as written. The paper's reference code
    likewise expands only the top new items on layer 0; a narrow frontier with more rounds walks further for the
    same number of items scored (perf/RESULTS.md, Figure 3).

    seeds: the request's most recent distinct behaviours (at most this many; 0 = none) join layer 0 as extra entry
    points beside the descent's result: they are scored in the first layer-0 round and expanded like any other
    list entry. A user's own items sit in the regions of the graph where that user's top items live."""
    ef: tuple[int, ...] = (100, 200, 400)
    rounds: tuple[int, ...] = (1, 1, 3)
    top_m: int = 200
    frontier: int = 0
    seeds: int = 0

    def __post_init__(self):
        object.__setattr__(self, "ef", tuple(int(x) for x in self.ef))
        object.__setattr__(self, "rounds", tuple(int(x) for x in self.rounds))
        if not self.ef or len(self.ef) != len(self.rounds):
            raise ValueError(f"ef {self.ef} and rounds {self.rounds} need the same, non-zero length")
        if min(self.ef) < 1:
            raise ValueError(f"ef must be >= 1, got {self.ef}")
        if min(self.rounds) < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if int(self.top_m) < 1:
            raise ValueError(f"top_m must be >= 1, got {self.top_m}")
        if int(self.frontier) < 0:
            raise ValueError(f"frontier must be >= 0 (0 = unlimited), got {self.frontier}")
        if int(self.seeds) < 0:
            raise ValueError(f"seeds must be >= 0 (0 = none), got {self.seeds}")


# The paper's Beam-retrieval parameters (Section 5.1.3): one flag away (`--paper`) wherever search runs.
PAPER_SEARCH = SearchParams(ef=(100, 200, 400), rounds=(1, 1, 3), top_m=200, frontier=0, seeds=0)
# The search defaults up to SCALING_BASE_ITEMS items: a narrow descent (the start layer holds a handful of nodes;
# small beams on the layers above 0, whose only job is entry points next to the seeds), then a walk on layer 0
# that stops when its list is expanded (the 64 rounds are a cap, not a count). perf/RESULTS.md, "Search quality"
# at 2k, 10k, 100k and 1M items, shows how they were chosen.
DEFAULT_SEARCH = SearchParams(ef=(10, 10, 50, 300), rounds=(1, 2, 3, 64), top_m=200, frontier=16, seeds=50)
SCALING_BASE_ITEMS = 100_000
# Beyond SCALING_BASE_ITEMS: last-layer ef ∝ (items / base)^EF_EXPONENT, frontier ∝ (items / base)^(1/3). The
# exponent is the one that puts the cheapest measured point reaching coverage 0.99 at 803k items (validation
# users, last-layer ef ≈ 1,020 at frontier 32) on the curve; the frontier's cube root keeps the rounds a walk
# needs (≈ ef / frontier) from growing as fast as its list.
EF_EXPONENT = 0.6


def default_search(num_items: int) -> SearchParams:
    """THE defaults of every search over a catalogue of ``num_items``: `nann evaluate`, `nann retrieve`, the
    exported server and the SDK's docs all take them. DEFAULT_SEARCH up to SCALING_BASE_ITEMS items; a larger
    catalogue gets a wider last-layer list and frontier (the walk must cover more ground for the same top-M)."""
    scale = max(1.0, int(num_items) / SCALING_BASE_ITEMS)
    last_ef = int(round(DEFAULT_SEARCH.ef[-1] * scale ** EF_EXPONENT, -1))
    return replace(DEFAULT_SEARCH, ef=DEFAULT_SEARCH.ef[:-1] + (last_ef,),
                   frontier=int(round(DEFAULT_SEARCH.frontier * scale ** (1 / 3))))
