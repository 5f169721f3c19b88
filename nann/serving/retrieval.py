"""Raw ids in, raw ids out: the retrieval pipeline shared by `nann retrieve`, evaluation and the Triton models.

`beam search → top-k raw ids` is written once (`RetrieveService`); its scorer is the runtime in this process
(`ScorerService.scores_for`: offline, and inside `retrieve` for a Python runtime), or a BLS call to the `scorer` model
(a runtime of another Triton backend). `OfflineRetriever` chains the very services the Triton models run, eligibility
filters and the blocked set included (`nann.serving.filters`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from nann import scorers
from nann.engine.graph import HnswGraph
from nann.engine.grid import CandidateGrid
from nann.engine.search import SearchParams, beam_search
from nann.run_dir import RunDir
from nann.serving.filters import NOTHING_BLOCKED, BlockedSet, DenseFilter, Eligibility
from nann.serving.requests import (FILTER_INPUT_NAMES, NO_FILTERS, SEARCH_INPUT_NAMES, FilterRequest, RequestError,
                                   ServingLimits, int_row, parse_filters, parse_search)
from nann.serving.services import RUNTIME_THREADS, Encoded, RequestEncoder, ScorerService, stack_states

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ScoresFor = Callable[[dict[str, np.ndarray]], ScoreFn]  # the users' stacked state rows → their score_fn
HISTORY = "history"  # `retrieve`'s input of the request's raw history (item ids, oldest first)


class RetrieveRequest(NamedTuple):
    """One parsed request of `retrieve`: its search, its history encoded and what it may not get."""

    params: SearchParams
    encoded: Encoded          # the user state, the dense ids the model sees (the seeds' source), ids dropped
    filters: DenseFilter      # what it may not get, in dense ids


class Answer(NamedTuple):
    """One request's answer, as the `nann` ensemble gives it."""

    item_ids: np.ndarray  # int64 [k] raw ids, best first
    scores: np.ndarray    # float32 [k]
    dropped: int          # history ids the index does not know, dropped


class RetrieveService:
    """What `retrieve` does for a batch of requests: each history encoded alone (`RequestEncoder`), then one beam search
    for all of them, whose scorer (`scores_for`) the caller gives: in this process or through BLS."""

    def __init__(self, artifact_dir: Path, limits: ServingLimits, grid: CandidateGrid, encoder: RequestEncoder):
        artifacts = RunDir(artifact_dir)
        self.graph = HnswGraph.load(artifacts.graph.path)
        vocab = artifacts.vocabulary()
        self.item_raw_ids = vocab.dense_to_raw(np.arange(vocab.num_items)).astype(np.int64)
        self.eligibility = Eligibility(vocab)
        self.limits = limits
        self.grid = grid
        self.encoder = encoder
        self.warm_up()

    def warm_up(self) -> None:
        """One walk of a new user with the default search and a constant scorer, at load: the encoder runs once and
        the engine's Numba kernels are compiled (or read from their cache) here, not in the first request, which paid
        it past a client's 10 s timeout on a busy machine."""
        self.retrieve([self.request(parse_search(self.limits), np.zeros(0, np.int64), NO_FILTERS)],
                      lambda state: lambda owner, ids: np.zeros(ids.shape[0], np.float32))

    def parse(self, history: np.ndarray | None, inputs: Mapping[str, np.ndarray | None]) -> RetrieveRequest:
        """Validate and encode one request of the Triton model: its raw history and its optional inputs
        (`REQUEST_INPUT_NAMES`; None = not sent)."""
        if history is None:  # Triton lets a request of a model with optional inputs leave out a required one
            raise RequestError(f"input {HISTORY} is missing")
        return self.request(parse_search(self.limits, **{n: inputs.get(n) for n in SEARCH_INPUT_NAMES}), history,
                            parse_filters(self.limits, **{n: inputs.get(n) for n in FILTER_INPUT_NAMES}))

    def request(self, params: SearchParams, history: np.ndarray, filters: FilterRequest) -> RetrieveRequest:
        """A parsed request: its raw history encoded and `filters` mapped to this index's dense ids (RequestError for a
        history or categories it refuses); `exclude_history` takes every known id of the raw history, not only the
        max_seq behaviours the model sees."""
        encoded = self.encoder.encode(history)
        excluded = (self.eligibility.vocab.raw_to_dense(int_row(HISTORY, history)) if filters.exclude_history
                    else np.zeros(0, np.int64))
        return RetrieveRequest(params, encoded, self.eligibility.dense(filters, excluded))

    def retrieve(self, requests: Sequence[RetrieveRequest], scores_for: ScoresFor,
                 blocked: BlockedSet = NOTHING_BLOCKED) -> list[Answer]:
        """The answer of each request; `scores_for(state)` gives the score_fn of the requests' stacked state rows
        (owner i: the i-th request).

        Each request's kept history ids are the source of its seeds; `blocked` is the one blocked set the whole batch
        uses. The engine advances requests with the same number of layers together (one scorer call per round); a
        request that sent ef/rounds for another number of layers searches in its own group, after the others."""
        score_fn = scores_for(stack_states([r.encoded.state for r in requests]))
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(len(r.params.ef), []).append(i)
        answers: list = [None] * len(requests)
        for members in groups.values():
            index = np.asarray(members, dtype=np.int64)
            group = [requests[i] for i in members]
            params = [r.params for r in group]
            filters = self.eligibility.engine_filters([r.filters for r in group], blocked)
            result = beam_search(self.graph, len(group), lambda owner, ids: score_fn(index[owner], ids), params,
                                 self.grid, histories=[r.encoded.hist_ids for r in group], filters=filters)
            for row, (i, p) in enumerate(zip(members, params)):
                ids = result.ids[row, : p.top_m]
                keep = ids >= 0
                scores = result.scores[row, : p.top_m][keep].astype(np.float32)
                answers[i] = Answer(self.item_raw_ids[ids[keep]], scores, requests[i].encoded.dropped)
        return answers


class OfflineRetriever:
    """The served pipeline without a server: the same encode, search and scorer code.

    A batch of several requests runs as up to `workers` shards in parallel threads, each shard encoding, walking and
    scoring its requests on one thread (a one-thread scorer session; the engine's kernels and the runtime release the
    GIL), as `retrieve`'s instances do in the server; a single request scores with the runtime's full thread pool.
    A walk's small round-sized calls keep a pool's second thread half idle; `nann perf` measures a batch of 16 both
    ways (perf/RESULTS.md "nann perf", the offline engine's table)."""

    def __init__(self, run_dir: str | Path, backend: str = "onnxruntime", limits: ServingLimits | None = None,
                 grid: CandidateGrid | None = None, blocked: np.ndarray | None = None, workers: int | None = None):
        """blocked: raw item ids nobody gets (the server's blocked set; `nann.serving.filters.read_ids`); workers:
        parallel shards of a batch (None: one per CPU this process may use; 1 for a runtime whose threads are the
        process's, torch)."""
        run_dir = Path(run_dir)
        runtime = scorers.runtime(backend)
        self.scorer = ScorerService(run_dir, backend)
        self.limits = limits or ServingLimits.for_catalogue(RunDir(run_dir).search_defaults(),
                                                            max_seq=self.scorer.runtime.max_seq)
        # the encoder as `retrieve` runs it (RUNTIME_THREADS: one thread, not spinning): a spinning pool beside the
        # scorer takes a core from it (`python -m perf.scorer_rounds`: the walk's calls in the engine against the same
        # calls back to back). A runtime whose threads are the process's (torch) keeps the scorer's.
        threads, spinning = (None, True) if runtime.process_threads else RUNTIME_THREADS["encoder"]
        self.encoder = RequestEncoder(run_dir, self.limits, backend, threads, spinning)
        self.service = RetrieveService(run_dir, self.limits, grid or runtime.grid(), self.encoder)
        self.blocked = NOTHING_BLOCKED if blocked is None else self.service.eligibility.blocked(blocked)
        self.workers = 1 if runtime.process_threads else max(1, workers or len(os.sched_getaffinity(0)))
        self._run_dir, self._backend = run_dir, backend

    @cached_property
    def shard_scorer(self):
        """The shards' scorer (`ScorerService`), loaded with the first batch that has several requests: one thread, as
        `retrieve` runs it (RUNTIME_THREADS); None with one worker."""
        return ScorerService(self._run_dir, self._backend, *RUNTIME_THREADS["retrieve"]) if self.workers > 1 else None

    @cached_property
    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.workers, thread_name_prefix="nann-shard")

    def retrieve(self, raw_histories: Sequence[np.ndarray], params: Sequence[SearchParams],
                 filters: Sequence[FilterRequest] | None = None) -> list[Answer]:
        """The served answer per history (`filters`: each request's, as `parse_filters` gives them; None = none);
        raises RequestError for a request the server would refuse."""
        histories = [np.asarray(h, dtype=np.int64) for h in raw_histories]
        filters = list(filters) if filters is not None else [NO_FILTERS] * len(histories)
        shards = min(self.workers, len(histories))
        if shards <= 1:
            return self._retrieve(histories, list(params), filters, self.scorer)
        bounds = np.linspace(0, len(histories), shards + 1).round().astype(int)
        parts = [self._pool.submit(self._retrieve, histories[s:e], list(params[s:e]), filters[s:e], self.shard_scorer)
                 for s, e in zip(bounds[:-1], bounds[1:])]
        return [answer for part in parts for answer in part.result()]

    def _retrieve(self, histories: list[np.ndarray], params: list[SearchParams], filters: list[FilterRequest],
                  scorer: ScorerService) -> list[Answer]:
        requests = [self.service.request(p, h, f) for p, h, f in zip(params, histories, filters)]
        return self.service.retrieve(requests, scorer.scores_for, self.blocked)
