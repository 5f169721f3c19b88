"""Search parameters: THE one definition of every search tunable and of the search defaults, in a module light enough
for the command line to import (no Numba).

A tunable is one field of `SearchParams`, declared with `tunable(...)`: its paper value (the class default), its
default (`DEFAULT_SEARCH`), the least value the engine takes, the most a served request may ask and what it does.
Everything else comes from `TUNABLES`: the served inputs and their checks (`nann.serving.requests.SEARCH_INPUTS`), the
served defaults and limits that `nann_info` publishes (`ServingLimits`), the command line's flags (`nann_cli`) and the
evaluator's methods (`nann.evaluate.MethodSpec` holds a SearchParams); a test ties the client SDK's own table to the
served inputs. A new tunable is one field here plus its use in the engine.

Resolving a search: `default_search(num_items, calibration)` gives a catalogue's defaults (a graph's, read from its
meta, come from `nann.run_dir.GraphDir.search_defaults`: the one lookup), `resolve` puts the given values over them
(bounds checked by SearchParams), and the engine applies the rules between tunables itself, for every caller: the
last layer's list holds at least top_m entries (`SearchParams.walk_ef`; hnswlib's searchKnn takes max(ef, k)), and
its frontier grows with it (`SearchParams.walk_frontier`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

_TUNABLE = "tunable"  # the key of a SearchParams field's metadata holding its Tunable spec


@dataclass(frozen=True)
class Tunable:
    """One search parameter, a field of SearchParams: its values, bounds and help (see `tunable`)."""

    field: str
    paper: Any               # the paper's value (Section 5.1.3): the class default, PAPER_SEARCH's
    default: Any             # DEFAULT_SEARCH's value (catalogues of SCALING_BASE_ITEMS items)
    low: int                 # the least value the engine takes
    served_max: int | None   # the most a served request may ask (ServingLimits.maxima); None: the model's max_seq
    help: str                # what it does (the command line's help)
    per_layer: bool = False  # one value per layer, top layer first
    served_as: str = ""      # the served input's (and the flag's) name when it is not the field's
    zero: str = ""           # what 0 means, where low is 0
    served_low: int | None = None  # the least value a served request may send, where that is above `low`

    @property
    def name(self) -> str:
        """The served input's name, also the command line's flag."""
        return self.served_as or self.field

    @property
    def request_low(self) -> int:
        return self.low if self.served_low is None else self.served_low


def tunable(paper, **spec) -> Any:
    """A SearchParams field that is a tunable: `paper` is its class default, `spec` the rest of its `Tunable`."""
    return field(default=paper, metadata={_TUNABLE: spec})


@dataclass(frozen=True)
class SearchParams:
    """Beam-retrieval parameters; the class defaults are the paper's (PAPER_SEARCH). Per-layer tunables have one value
    per layer, TOP layer first, and as many values as each other.

    frontier: at most this many of a request's unexpanded list entries are expanded per round, best first (the
    rest wait for a later round); 0 expands all of them, Algorithm 2 as written. The paper's reference code
    likewise expands only the top new items on layer 0; a narrow frontier with more rounds walks further for the
    same number of items scored (perf/RESULTS.md, Figure 3).

    seeds: the request's most recent distinct behaviours (at most this many; 0 = none) join layer 0 as extra entry
    points beside the descent's result: they are scored in the first layer-0 round and expanded like any other
    list entry. A user's own items sit in the regions of the graph where that user's top items live."""
    ef: tuple[int, ...] = tunable(
        (100, 200, 400), default=(10, 10, 50, 300), low=1, per_layer=True,
        served_max=4096,  # ef beyond a small catalogue's size makes the walk exhaustive (an oracle's search)
        help="beam list size per layer, top layer first")
    rounds: tuple[int, ...] = tunable(
        (1, 1, 3), default=(1, 2, 3, 64), low=0, served_low=1, per_layer=True,
        served_max=64,  # a narrow frontier needs more layer-0 rounds (e.g. frontier 32, rounds {1,3,40})
        help="most search rounds per layer, top layer first; a layer also ends when nothing is left to expand")
    top_m: int = tunable(200, default=200, low=1, served_as="k", served_max=1000, help="items to return")
    frontier: int = tunable(
        0, default=16, low=0, zero="unlimited",
        # a beam list never holds more than max(ef, k) <= the most ef entries, so any frontier at or above that expands
        # the whole list, the same as 0; the maximum only keeps requests to sane values
        served_max=2000,
        help="beam: list entries expanded per round, best first; 0 = every new entry")
    seeds: int = tunable(
        0, default=50, low=0, zero="none",
        served_max=None,  # seeds come from the behaviours the model sees, the most recent max_seq
        help="the history's most recent distinct items that join layer 0 as entry points; 0 = none")
    patience: int = tunable(
        0, default=0, low=0, zero="off",
        served_max=4096,  # as many as the longest list holds
        help="layer 0's walk stops once this many list entries were expanded since a new item last entered its top "
             "k; 0 = off (it stops when its list is expanded or its rounds are spent)")

    def __post_init__(self):
        for t in TUNABLES:
            value = getattr(self, t.field)
            value = tuple(int(x) for x in value) if t.per_layer else int(value)
            object.__setattr__(self, t.field, value)
        layered = {t.field: getattr(self, t.field) for t in TUNABLES if t.per_layer}
        if not all(layered.values()) or len({len(v) for v in layered.values()}) > 1:
            raise ValueError(" and ".join(f"{name} {v}" for name, v in layered.items())
                             + " need the same, non-zero length")
        for t in TUNABLES:
            value = getattr(self, t.field)
            if (min(value) if t.per_layer else value) < t.low:
                raise ValueError(f"{t.field} must be >= {t.low}" + (f" (0 = {t.zero})" if t.zero else "")
                                 + f", got {value}")

    @property
    def walk_ef(self) -> tuple[int, ...]:
        """ef as the engine walks it: the last layer's list holds at least top_m entries, so that the search can return
        top_m items (hnswlib's searchKnn takes max(ef, k) the same way)."""
        return self.ef[:-1] + (max(self.ef[-1], self.top_m),)

    @property
    def walk_frontier(self) -> int:
        """frontier as the engine walks it: where top_m lengthens the last layer's list beyond its ef (`walk_ef`), the
        frontier grows by the same factor, so that the longer list is expanded in the rounds the walk's own takes (a
        calibrated frontier of 4 would otherwise spend its round cap before it scored k = 500 items); 0 stays 0."""
        if self.frontier == 0 or self.top_m <= self.ef[-1]:
            return self.frontier
        return math.ceil(self.frontier * self.top_m / self.ef[-1])


TUNABLES = tuple(Tunable(f.name, f.default, **f.metadata[_TUNABLE]) for f in fields(SearchParams))
RESULT_SIZE = next(t for t in TUNABLES if t.field == "top_m")  # how many items; every other tunable shapes the walk
WALK_TUNABLES = tuple(t for t in TUNABLES if t is not RESULT_SIZE)

# The paper's Beam-retrieval parameters (Section 5.1.3): one flag away (`--paper`) wherever search runs.
PAPER_SEARCH = SearchParams()
# The search defaults at SCALING_BASE_ITEMS items: a narrow descent (the start layer holds a handful of nodes;
# small beams on the layers above 0, whose only job is entry points next to the seeds), then a walk on layer 0
# that stops when its list is expanded (the 64 rounds are a cap, not a count). perf/RESULTS.md, "Search quality"
# at 2k, 10k, 100k and 1M items, shows how they were chosen.
DEFAULT_SEARCH = SearchParams(**{t.field: t.default for t in TUNABLES})
SCALING_BASE_ITEMS = 100_000
# Beyond SCALING_BASE_ITEMS: last-layer ef ∝ (items / base)^EF_EXPONENT, frontier ∝ (items / base)^(1/3). The
# exponent is the one that puts the cheapest measured point reaching coverage 0.99 at 803k items (validation
# users, last-layer ef ≈ 1,020 at frontier 32) on the curve; the frontier's cube root keeps the rounds a walk
# needs (≈ ef / frontier) from growing as fast as its list.
EF_EXPONENT = 0.6
# Below SCALING_BASE_ITEMS the walk a catalogue needs is set by its model and graph, not by its size (perf/RESULTS.md,
# "Search defaults against HNSW-retrieval": validation coverage 0.993 needs a last-layer ef of 350–900 across graph
# builds of synthetic 10k items, 200–250 on a weakly trained model's 20k, where a narrower frontier and descent also
# score fewer items): `nann graph` measures it on the run's validation users (`nann.calibration`) and the graph's meta
# keeps it. A graph without one (built with --no-calibrate,
# or before calibration existed) gets it from the catalogue size: these sizes, a power law between them (log ef
# linear in log items; the first one's below it). A catalogue of a few thousand items reaches coverage 0.99 with a
# list of top_m (the top 200 are a tenth of it); around 10k items the top 200 lie scattered and the list must be
# wider; at 100k DEFAULT_SEARCH's 300 holds.
SMALL_CATALOGUE_EF = ((2_000, 200), (8_000, 550), (SCALING_BASE_ITEMS, DEFAULT_SEARCH.ef[-1]))


def _small_catalogue_ef(num_items: int) -> int:
    """The last-layer ef of SMALL_CATALOGUE_EF at ``num_items`` (rounded to tens)."""
    (n0, ef0), *rest = SMALL_CATALOGUE_EF
    if num_items <= n0:
        return ef0
    for n1, ef1 in rest:
        if num_items <= n1:
            t = math.log(num_items / n0) / math.log(n1 / n0)
            return int(round(ef0 * (ef1 / ef0) ** t, -1))
        n0, ef0 = n1, ef1
    return ef0


def default_search(num_items: int, calibration: Mapping | None = None) -> SearchParams:
    """THE defaults of every search over a catalogue of ``num_items``: `nann evaluate`, `nann retrieve`, the
    exported server and the SDK's docs all take them. DEFAULT_SEARCH at SCALING_BASE_ITEMS items; a smaller
    catalogue gets the walk its graph was calibrated to (``calibration``: the graph meta's record, `calibrated`), or
    without one the last-layer ef of SMALL_CATALOGUE_EF; a larger one a wider last-layer list and frontier (the walk
    must cover more ground for the same top-M; a calibration is not used there)."""
    if num_items < SCALING_BASE_ITEMS:
        if calibration is not None:
            return calibrated(DEFAULT_SEARCH, calibration)
        return with_last_ef(DEFAULT_SEARCH, _small_catalogue_ef(int(num_items)))
    scale = int(num_items) / SCALING_BASE_ITEMS
    last_ef = int(round(DEFAULT_SEARCH.ef[-1] * scale ** EF_EXPONENT, -1))
    return replace(DEFAULT_SEARCH, ef=DEFAULT_SEARCH.ef[:-1] + (last_ef,),
                   frontier=int(round(DEFAULT_SEARCH.frontier * scale ** (1 / 3))))


def calibrated(params: SearchParams, calibration: Mapping) -> SearchParams:
    """``params`` walked as a calibration (`nann.calibration`) chose: its last-layer "ef", and where it records them
    its "frontier" and its "descent_ef" (the lists of the layers above 0, top first; a record written before these
    were calibrated has neither and keeps ``params``')."""
    descent = tuple(calibration.get("descent_ef", params.ef[:-1]))
    return replace(params, ef=descent + (int(calibration["ef"]),),
                   frontier=int(calibration.get("frontier", params.frontier)))


def with_last_ef(params: SearchParams, ef: int) -> SearchParams:
    """``params`` with the last layer's ef set to ``ef``."""
    return replace(params, ef=params.ef[:-1] + (int(ef),))


def json_value(value):
    """A tunable's value as JSON holds it: per-layer tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def resolve(defaults: SearchParams, **given) -> SearchParams:
    """A search: a catalogue's ``defaults`` (`GraphDir.search_defaults`, `default_search`) with the `given` fields
    (per-layer values as any sequence); ValueError names a value out of bounds."""
    return replace(defaults, **given)
