"""Raw ids in, raw ids out: the retrieval pipeline shared by `nann retrieve`, evaluation and the Triton models.

`beam search → top-k raw ids` is written once (`RetrieveService`); offline its scorer is the local runtime,
inside Triton a BLS call. `OfflineRetriever` chains the very services the Triton models run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from nann.engine.graph import HnswGraph
from nann.engine.grid import CandidateGrid
from nann.engine.search import SearchParams, beam_search
from nann.serving.requests import SEARCH_INPUT_NAMES, ServingLimits, int_row, parse_search
from nann.serving.services import check_state

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
HIST_IDS = "hist_ids"  # `retrieve`'s input of the request's dense history ids (from `preprocess`)


class Answer(NamedTuple):
    """One request's answer, as the `nann` ensemble gives it."""

    item_ids: np.ndarray  # int64 [k] raw ids, best first
    scores: np.ndarray    # float32 [k]
    dropped: int          # history ids the index does not know, dropped


def state_dims(model_config: dict) -> dict[str, list[int]]:
    """The user-state inputs of the `retrieve` config and their dims: every input but the history ids and the
    optional search inputs."""
    return {o["name"]: o["dims"] for o in model_config["input"]
            if o["name"] not in (HIST_IDS, *SEARCH_INPUT_NAMES)}


class RetrieveService:
    """Beam search for a batch of requests whose user state is already computed."""

    def __init__(self, artifact_dir: Path, limits: ServingLimits, grid: CandidateGrid,
                 state_dims: dict[str, list[int]] | None = None):
        """state_dims: each state input's dims from the model config (-1 = the sequence axis, max_seq long)."""
        from nann.data.prepared import Vocabulary

        self.graph = HnswGraph.load(Path(artifact_dir) / "graph")
        vocab = Vocabulary.load(artifact_dir)
        self.item_raw_ids = vocab.dense_to_raw(np.arange(vocab.num_items)).astype(np.int64)
        self.limits = limits
        self.grid = grid
        self.state_shapes = {name: (1, *(limits.max_seq if int(d) == -1 else int(d) for d in dims))
                             for name, dims in (state_dims or {}).items()}

    def parse(self, state: dict[str, np.ndarray], hist_ids: np.ndarray,
              inputs: Mapping[str, np.ndarray | None]) -> tuple[SearchParams, np.ndarray]:
        """Validate one request: its state rows (one user, finite), its history ids and its search inputs.
        Returns (search parameters, the history's dense ids)."""
        check_state(state, self.state_shapes)
        return parse_search(self.limits, **inputs), int_row(HIST_IDS, hist_ids)

    def retrieve(self, params: Sequence[SearchParams], score_fn: ScoreFn, histories: Sequence[np.ndarray]):
        """([(raw ids int64, scores float32)] per request, the engine's SearchResult with its counters).

        histories: each request's dense history ids, oldest first (ids outside the catalogue, such as the -1
        padding, are ignored): the source of its seeds."""
        result = beam_search(self.graph, len(params), score_fn, list(params), self.grid, histories=histories)
        answers = []
        for i, p in enumerate(params):
            ids = result.ids[i, : p.top_m]
            keep = ids >= 0
            answers.append((self.item_raw_ids[ids[keep]], result.scores[i, : p.top_m][keep].astype(np.float32)))
        return answers, result


class OfflineRetriever:
    """The served pipeline without a server: the same preprocess, encoder, search and scorer code."""

    def __init__(self, run_dir: str | Path, backend: str = "onnxruntime", limits: ServingLimits | None = None,
                 grid: CandidateGrid | None = None):
        from nann.runtime import ModelRuntime
        from nann.serving.services import EncoderService, Preprocessor, ScorerService

        run_dir = Path(run_dir)
        runtime = ModelRuntime.load(run_dir, backend=backend)
        self.encoder = EncoderService(run_dir, backend, runtime)
        self.scorer = ScorerService(run_dir, backend, runtime)
        self.limits = limits or ServingLimits(max_seq=self.encoder.runtime.max_seq)
        self.preprocessor = Preprocessor(run_dir, self.limits)
        self.service = RetrieveService(run_dir, self.limits, grid or CandidateGrid())

    def retrieve(self, raw_histories: Sequence[np.ndarray], params: Sequence[SearchParams]) -> list[Answer]:
        """The served answer per history; raises RequestError for a request the server would refuse."""
        prepared = [self.preprocessor.prepare(np.asarray(h, dtype=np.int64)) for h in raw_histories]
        state = self.encoder.encode(np.stack([p.hist_emb for p in prepared]), np.stack([p.hist_mask for p in prepared]))
        answers, _ = self.service.retrieve(params, lambda owner, ids: self.scorer.score(state, ids, owner),
                                           [p.hist_ids for p in prepared])
        return [Answer(ids, scores, p.dropped) for (ids, scores), p in zip(answers, prepared)]
