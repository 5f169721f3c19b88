"""What each Triton Python model does, in plain numpy: the `model.py` files only move tensors in and out.

Each service is built from the model's version directory (artifacts, verified against the manifest) and
the string parameters of its config.pbtxt.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

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


def check_state(state: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a user-state input of the wrong shape or holding NaN/inf.

    Only a client calling an internal model directly can send such state (Triton serves every model on the
    same port); through the `nann` ensemble the state comes from `user_encoder`.
    """
    for name, shape in shapes.items():
        value = state[name]
        if value.shape != tuple(shape):
            raise RequestError(f"state input {name} must have shape {list(shape)}, got {list(value.shape)}")
        if not np.isfinite(value).all():
            raise RequestError(f"state input {name} holds NaN or inf")


class Prepared(NamedTuple):
    """One preprocessed request: the `preprocess` model's outputs without their batch axis."""

    hist_emb: np.ndarray     # float32 [max_seq, D]: the kept behaviours' e_v, oldest first, zero padding
    hist_mask: np.ndarray    # float32 [max_seq]: 1 = real behaviour (all 0 for a new user: cold start)
    hist_ids: np.ndarray     # int64 [max_seq]: their dense ids, -1 padding (the source of search seeds)
    dropped_ids: np.ndarray  # int32 [1]: history ids the index does not know, dropped

    @property
    def dropped(self) -> int:
        return int(self.dropped_ids[0])


class Preprocessor:
    """history (raw ids) → the kept behaviours' e_v, mask and dense ids padded to max_seq, and the count dropped."""

    def __init__(self, version_dir: Path, limits: ServingLimits):
        from nann.data.prepared import Vocabulary

        self.vocab = Vocabulary.load(version_dir)
        self.table = np.load(version_dir / "item_embeddings.npy", mmap_mode="r", allow_pickle=False)
        self.limits = limits

    def prepare(self, raw_history: np.ndarray) -> Prepared:
        dense, dropped = parse_history(raw_history, self.vocab.raw_to_dense, self.limits)
        emb = np.zeros((self.limits.max_seq, self.table.shape[1]), dtype=np.float32)
        mask = np.zeros(self.limits.max_seq, dtype=np.float32)
        ids = np.full(self.limits.max_seq, -1, dtype=np.int64)
        emb[: dense.size] = self.table[dense]
        mask[: dense.size] = 1.0
        ids[: dense.size] = dense
        return Prepared(emb, mask, ids, np.array([dropped], dtype=np.int32))


class EncoderService:
    """Runs user_encoder.onnx for a batch of padded histories."""

    def __init__(self, version_dir: Path, backend: str, runtime=None):
        from nann.runtime import ModelRuntime

        self.runtime = runtime or ModelRuntime.load(version_dir, backend=backend)
        self.state_names = list(self.runtime.state_names)

    def encode(self, hist_emb: np.ndarray, hist_mask: np.ndarray) -> dict[str, np.ndarray]:
        """State rows for a batch, computed one user at a time.

        ONNX Runtime's GEMM rounds differently for one row than for several (measured: 5e-7 in user_bias),
        which is enough to swap near-tied items; encoding each user alone makes a user's state, and so the
        served ranking, independent of which requests share the batch (and equal to offline). It costs about
        0.05 ms per request; the scorer calls, where the work is, stay batched.
        """
        rows = [self.runtime.encode_padded(hist_emb[i:i + 1].astype(np.float32, copy=False),
                                           hist_mask[i:i + 1].astype(np.float32, copy=False))
                for i in range(hist_emb.shape[0])]
        return {name: np.concatenate([row[name] for row in rows]) for name in self.state_names}

    def encode_requests(self, embs: list[np.ndarray], masks: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One encoder pass for several requests; each request gets back its own rows (it may hold several)."""
        state = self.encode(np.concatenate(embs), np.concatenate(masks))
        ends = np.cumsum([e.shape[0] for e in embs])
        return [{name: np.ascontiguousarray(state[name][end - e.shape[0]:end]) for name in self.state_names}
                for e, end in zip(embs, ends)]


CANDIDATES_OUTSIDE = "cand_ids outside"  # the refusal of ids beyond the catalogue (`retrieve` waits on it in a switch)


class ScorerService:
    """Scores candidate ids for the users whose state rows it is given (the CPU `scorer` model)."""

    def __init__(self, version_dir: Path, backend: str, runtime=None):
        from nann.runtime import ModelRuntime

        self.runtime = runtime or ModelRuntime.load(version_dir, backend=backend)
        self.state_names = list(self.runtime.state_names)

    def score(self, state: dict[str, np.ndarray], cand_ids: np.ndarray, owner: np.ndarray) -> np.ndarray:
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
