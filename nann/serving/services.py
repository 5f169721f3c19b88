"""What each Triton Python model does, in plain numpy: the `model.py` files only move tensors in and out.

Each service is built from the model's version directory (artifacts, verified against the manifest) and
the string parameters of its config.pbtxt.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from nann.serving.repository import verify_manifest
from nann.serving.requests import RequestError, ServingLimits, parse_history


def model_context(args: dict) -> tuple[Path, dict[str, str]]:
    """(version directory, string parameters) of a Python model from Triton's initialize() args.

    Verifies the version directory against its manifest first, so a missing, truncated or altered artifact
    fails the model load with a message naming the file.
    """
    config = json.loads(args["model_config"])
    version_dir = Path(args["model_repository"]) / str(args["model_version"])
    verify_manifest(version_dir)
    params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    return version_dir, params


# The runtimes the models load: (intra_op_threads, spinning) of each (0 threads: one per physical core, the runtime's
# default; docs/OPERATIONS.md "Runtime threads"). `retrieve`'s encoder encodes one user at a time: one thread, not
# spinning, leaves the cores to the scorer. The `scorer` model's threads (behind BLS) spin for the next round, which
# comes within a millisecond (1.2x the req/s of sleeping threads: perf/RESULTS.md "Serving parameters: spinning
# (scorer)"). Inside `retrieve` the scorer shares the process with the walk: one thread (no pool, so `spinning` acts on
# nothing) measured 1.36x the req/s of one per core at concurrency 16 (perf/RESULTS.md "Serving parameters:
# intra_op_threads (retrieve)").
RUNTIME_THREADS = {"encoder": (1, False), "scorer": (0, True), "retrieve": (1, True)}


def runtime_options(params: dict[str, str], prefix: str = "") -> dict:
    """ModelRuntime's options from a model config's parameters: `backend`, `intra_op_threads` (0: one per physical
    core, the runtime's default) and `spinning` ("true" / "false": whether idle runtime threads spin for more work),
    each name after `prefix` (`retrieve`'s encoder: "encoder_")."""
    return {"backend": params[prefix + "backend"], "threads": int(params[prefix + "intra_op_threads"]) or None,
            "spinning": params[prefix + "spinning"] == "true"}


def stack_states(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several requests' state rows as one state, the scorer's input (owner i = the i-th request's user)."""
    return {name: np.concatenate([state[name] for state in states]) for name in states[0]}


class Encoded(NamedTuple):
    """One request's history encoded."""

    state: dict[str, np.ndarray]  # the user-state tensors (user_encoder.onnx's outputs), each with a leading axis of 1
    hist_ids: np.ndarray          # int64 [≤ max_seq]: the kept behaviours' dense ids, oldest first (the seeds)
    dropped: int                  # history ids the index does not know, dropped


class RequestEncoder:
    """history (raw ids) → user state, the kept behaviours' dense ids and the count of unknown ids dropped."""

    def __init__(self, version_dir: Path, limits: ServingLimits, backend: str = "onnxruntime",
                 threads: int | None = None, spinning: bool = True):
        from nann.data.prepared import Vocabulary
        from nann.runtime import ModelRuntime

        self.vocab = Vocabulary.load(version_dir)
        self.runtime = ModelRuntime.load(version_dir, backend, threads, parts=("encoder",), spinning=spinning)
        self.limits = limits

    def encode(self, raw_history: np.ndarray) -> Encoded:
        """One user at a time (`parse_history`: the most recent max_seq known behaviours, padded to max_seq).

        ONNX Runtime's GEMM rounds differently for one row than for several (measured: 5e-7 in user_bias), which
        is enough to swap near-tied items; encoding each user alone makes a user's state, and so the served
        ranking, independent of which requests share the batch (and equal to offline). The scorer calls, where
        the work is, stay batched.
        """
        dense, dropped = parse_history(raw_history, self.vocab.raw_to_dense, self.limits)
        return Encoded(self.runtime.encode([dense], length=self.limits.max_seq), dense, dropped)


IN_PROCESS, BLS = "in-process", "bls"  # `retrieve`'s `scorer` parameter: where its scorer runs
CANDIDATES_OUTSIDE = "cand_ids outside"  # the refusal of ids beyond the catalogue (`retrieve` waits on it in a switch)


class ScorerService:
    """Scores candidate ids for the users whose state rows it is given: inside `retrieve` and the offline engine
    (`scores_for`, each round), or as the `scorer` model behind BLS (`score`, checking what a caller sent)."""

    def __init__(self, version_dir: Path, backend: str = "onnxruntime", threads: int | None = None,
                 spinning: bool = True):
        from nann.runtime import ModelRuntime

        self.runtime = ModelRuntime.load(version_dir, backend, threads, parts=("scorer",), spinning=spinning)
        self.state_names = list(self.runtime.state_names)

    def scores_for(self, state: dict[str, np.ndarray]):
        """The engine's score_fn(owner, ids) for the users of `state` (rows stacked by `stack_states`, from the encoder),
        scored in this process."""
        return lambda owner, ids: self.runtime.score(state, owner, ids)

    def score(self, state: dict[str, np.ndarray], cand_ids: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """The `scorer` model's call: refuses what the engine never sends (NaN state, ids or owners out of range)."""
        if cand_ids.shape != owner.shape:
            raise RequestError(f"cand_ids {list(cand_ids.shape)} and owner {list(owner.shape)} differ in shape")
        bad = [name for name, value in state.items() if not np.isfinite(value).all()]
        if bad:
            raise RequestError(f"state input {bad[0]} holds NaN or inf")
        rows = next(iter(state.values())).shape[0]
        if cand_ids.size and (cand_ids.min() < 0 or cand_ids.max() >= self.runtime.num_items):
            raise RequestError(f"{CANDIDATES_OUTSIDE} [0, {self.runtime.num_items})")
        if owner.size and (owner.min() < 0 or owner.max() >= rows):
            raise RequestError(f"owner outside [0, {rows})")
        return self.runtime.score(state, owner, cand_ids)


def in_process_scorer(version_dir: Path, params: dict[str, str]) -> ScorerService | None:
    """`retrieve`'s scorer when its config's `scorer` parameter says it runs in its process (with the runtime options
    beside it), else None: its scorer is the `scorer` model, called through BLS."""
    if params["scorer"] not in (IN_PROCESS, BLS):
        raise ValueError(f"parameter scorer is {params['scorer']!r}, not {IN_PROCESS!r} or {BLS!r}")
    return ScorerService(version_dir, **runtime_options(params)) if params["scorer"] == IN_PROCESS else None
