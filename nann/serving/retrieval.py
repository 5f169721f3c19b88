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
from nann.serving.requests import (FILTER_INPUT_NAMES, NO_FILTERS, REQUEST_INPUT_NAMES, SEARCH_INPUT_NAMES,
                                   FilterRequest, ServingLimits, bounded_ids, int_row, parse_filters, parse_search)
from nann.serving.services import RUNTIME_THREADS, check_state, stack_states

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
HIST_IDS = "hist_ids"  # `retrieve`'s input of the request's dense history ids (from `encode`)
HISTORY = "history"    # `retrieve`'s input of the request's raw history, as sent (for `exclude_history`)


class RetrieveRequest(NamedTuple):
    """One parsed request of `retrieve`."""

    params: SearchParams
    hist_ids: np.ndarray      # dense ids of the behaviours the model sees (the source of seeds)
    filters: DenseFilter      # what it may not get, in dense ids


class Answer(NamedTuple):
    """One request's answer, as the `nann` ensemble gives it."""

    item_ids: np.ndarray  # int64 [k] raw ids, best first
    scores: np.ndarray    # float32 [k]
    dropped: int          # history ids the index does not know, dropped


def state_dims(model_config: dict) -> dict[str, list[int]]:
    """The user-state inputs of the `retrieve` config and their dims: every input but the histories and the
    optional request inputs."""
    return {o["name"]: o["dims"] for o in model_config["input"]
            if o["name"] not in (HIST_IDS, HISTORY, *REQUEST_INPUT_NAMES)}


class RetrieveService:
    """Beam search for a batch of requests whose user state is already computed."""

    def __init__(self, artifact_dir: Path, limits: ServingLimits, grid: CandidateGrid,
                 state_dims: dict[str, list[int]] | None = None):
        """state_dims: each state input's dims from the model config (-1 = the sequence axis, max_seq long)."""
        artifacts = RunDir(artifact_dir)
        self.graph = HnswGraph.load(artifacts.graph.path)
        vocab = artifacts.vocabulary()
        self.item_raw_ids = vocab.dense_to_raw(np.arange(vocab.num_items)).astype(np.int64)
        self.eligibility = Eligibility(vocab)
        self.limits = limits
        self.grid = grid
        self.state_shapes = {name: (1, *(limits.max_seq if int(d) == -1 else int(d) for d in dims))
                             for name, dims in (state_dims or {}).items()}
        self.warm_up()

    def warm_up(self) -> None:
        """One walk with the default search and a constant scorer, at load: the engine's Numba kernels are compiled
        (or read from their cache) here, not in the first request, which paid it past a client's 10 s timeout on a
        busy machine."""
        self.retrieve([self.request(parse_search(self.limits), np.zeros(0, np.int64), None, NO_FILTERS)],
                      lambda owner, ids: np.zeros(ids.shape[0], np.float32))

    def parse(self, state: dict[str, np.ndarray], hist_ids: np.ndarray, history: np.ndarray | None,
              inputs: Mapping[str, np.ndarray | None]) -> RetrieveRequest:
        """Validate one request of the Triton model: its state rows (one user, finite), its history ids, its raw
        history (None: not sent, as empty) and its optional inputs (`REQUEST_INPUT_NAMES`; None = not sent)."""
        check_state(state, self.state_shapes)
        return self.request(parse_search(self.limits, **{n: inputs.get(n) for n in SEARCH_INPUT_NAMES}),
                            int_row(HIST_IDS, hist_ids), history,
                            parse_filters(self.limits, **{n: inputs.get(n) for n in FILTER_INPUT_NAMES}))

    def request(self, params: SearchParams, hist_ids: np.ndarray, history: np.ndarray | None,
                filters: FilterRequest) -> RetrieveRequest:
        """A parsed request: `filters` mapped to this index's dense ids (RequestError for unknown categories);
        `exclude_history` takes every known id of the raw `history`, not only the max_seq behaviours in hist_ids."""
        raw = bounded_ids(HISTORY, np.zeros(0, np.int64) if history is None else history, self.limits.max_history)
        dense = self.eligibility.vocab.raw_to_dense(raw) if filters.exclude_history else raw[:0]
        return RetrieveRequest(params, hist_ids, self.eligibility.dense(filters, dense))

    def retrieve(self, requests: Sequence[RetrieveRequest], score_fn: ScoreFn,
                 blocked: BlockedSet = NOTHING_BLOCKED) -> list[tuple[np.ndarray, np.ndarray]]:
        """(raw ids int64, scores float32) per request; score_fn's owner i is the i-th request.

        Each request's hist_ids (dense, oldest first; ids outside the catalogue, such as the -1 padding, ignored) are
        the source of its seeds; `blocked` is the one blocked set the whole batch uses. The engine advances requests
        with the same number of layers together (one scorer call per round); a request that sent ef/rounds for
        another number of layers searches in its own group, after the others."""
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
                                 self.grid, histories=[r.hist_ids for r in group], filters=filters)
            for row, (i, p) in enumerate(zip(members, params)):
                ids = result.ids[row, : p.top_m]
                keep = ids >= 0
                answers[i] = (self.item_raw_ids[ids[keep]], result.scores[row, : p.top_m][keep].astype(np.float32))
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
        from nann.serving.services import RequestEncoder, ScorerService

        run_dir = Path(run_dir)
        runtime = scorers.runtime(backend)
        self.scorer = ScorerService(run_dir, backend)
        self.limits = limits or ServingLimits.for_catalogue(RunDir(run_dir).search_defaults(),
                                                            max_seq=self.scorer.runtime.max_seq)
        # the encoder as `encode` serves it (RUNTIME_THREADS: one thread, not spinning): a spinning pool beside the
        # scorer takes a core from it (`python -m perf.scorer_rounds`: the walk's calls in the engine against the same
        # calls back to back). A runtime whose threads are the process's (torch) keeps the scorer's.
        threads, spinning = (None, True) if runtime.process_threads else RUNTIME_THREADS["encode"]
        self.encoder = RequestEncoder(run_dir, self.limits, backend, threads, spinning)
        self.service = RetrieveService(run_dir, self.limits, grid or runtime.grid())
        self.blocked = NOTHING_BLOCKED if blocked is None else self.service.eligibility.blocked(blocked)
        self.workers = 1 if runtime.process_threads else max(1, workers or len(os.sched_getaffinity(0)))
        self._run_dir, self._backend = run_dir, backend

    @cached_property
    def shard_scorer(self):
        """The shards' scorer (`ScorerService`), loaded with the first batch that has several requests: one thread, as
        `retrieve` runs it (RUNTIME_THREADS); None with one worker."""
        from nann.serving.services import ScorerService

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
                  scorer) -> list[Answer]:
        encoded = [self.encoder.encode(h) for h in histories]
        state = stack_states([e.state for e in encoded])
        requests = [self.service.request(p, e.hist_ids[0], h, f)
                    for p, e, h, f in zip(params, encoded, histories, filters)]
        answers = self.service.retrieve(requests, scorer.scores_for(state), self.blocked)
        return [Answer(ids, scores, e.dropped) for (ids, scores), e in zip(answers, encoded)]
