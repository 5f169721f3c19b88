"""Runs a trained run's serving split: ``encode(histories)`` -> user state, ``score(state, owner, ids)`` -> scores.

Backends: the scorer runtimes that run in a Python process (``nann.scorers``): ``onnxruntime`` (the run's user encoder
and scorer ONNX files; does not import torch) and ``torch`` (rebuilds the same split from the run's config and
weights; no ONNX). Both compute the model's raw logit ``s_u(e_v)``, the number the trainer trains and brute force
ranks by.

Empty history: ``encode`` accepts it and returns the state of an all-masked row (attention output 0, sum-pool 0;
finite scores): serving's cold-start state for a new user.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nann import scorers
from nann.errors import UserError
from nann.run_dir import RunDir
from nann.scorers.base import PARTS


def pad_histories(histories: Sequence[np.ndarray], max_seq: int,
                  length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids oldest first -> (ids int64 [B,L], mask float32 [B,L]); keeps the last max_seq; L = `length`, else
    the longest kept history (at least 1)."""
    hs = [np.asarray(h, dtype=np.int64).reshape(-1)[-max_seq:] for h in histories]
    L = length or max([len(h) for h in hs] + [1])
    ids = np.zeros((len(hs), L), dtype=np.int64)
    mask = np.zeros((len(hs), L), dtype=np.float32)
    for i, h in enumerate(hs):
        ids[i, :len(h)] = h
        mask[i, :len(h)] = 1.0
    return ids, mask


class ModelRuntime:
    num_items: int
    emb_dim: int
    max_seq: int
    state_names: list[str]
    item_embeddings: np.ndarray

    def __init__(self, run_dir: str, backend: str | scorers.ScorerRuntime, threads: int | None,
                 parts: Sequence[str] = PARTS, spinning: bool = True):
        """threads: intra-op threads (None: the backend's default, one per physical core; torch's setting is the
        process's); parts: the halves to load (a Triton stub needs one); spinning: False makes idle runtime threads
        sleep at once instead of spinning for more work, so the cores go back to other processes (torch: only when
        torch is first imported here, as libgomp reads OMP_WAIT_POLICY once)."""
        self.run_dir = run_dir
        runtime = scorers.runtime(backend)
        self.backend = runtime.name
        run = RunDir(run_dir)
        run.check_trained()
        self.io = run.read_onnx_io()
        self.item_embeddings = run.item_embeddings()
        self.num_items, self.emb_dim = (int(x) for x in self.item_embeddings.shape)
        self.max_seq = int(self.io["max_seq"])
        self.arch = self.io.get("arch")
        self.state_names = [s["name"] for s in self.io["state"]]
        if not runtime.in_python:
            raise UserError(f"the {runtime.name} scorer runs in its own Triton backend, not in this process: use "
                            f"{' or '.join(scorers.usable_here())} here")
        if not runtime.available():
            raise UserError(f"the {runtime.name} scorer needs {runtime.needs}: use "
                            f"{' or '.join(scorers.usable_here())} on this host")
        self._parts = runtime.load(run, self.io, parts, threads, spinning)
        self.scores_ids = runtime.scores_ids

    @classmethod
    def load(cls, run_dir, backend: str | scorers.ScorerRuntime = "onnxruntime", threads: int | None = None,
             parts: Sequence[str] = PARTS, spinning: bool = True) -> "ModelRuntime":
        return cls(str(run_dir), backend, threads, parts, spinning)

    def _part(self, name: str):
        """The encoder or the scorer, as the runtime loaded it (`nann.scorers.base.Part`)."""
        if name not in self._parts:
            raise RuntimeError(f"this runtime of {self.run_dir} was loaded without its {name} "
                               f"(parts {list(self._parts)})")
        return self._parts[name]

    # ---- user side ----------------------------------------------------------------------------------------
    def pad_histories(self, histories: Sequence[np.ndarray],
                      length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``pad_histories`` at this run's max_seq; refuses item ids outside the run's items."""
        ids, mask = pad_histories(histories, self.max_seq, length)
        bad = np.flatnonzero((((ids < 0) | (ids >= self.num_items)) & (mask > 0)).any(axis=1))
        if len(bad):
            raise UserError(f"history {bad[0]} has item ids outside 0..{self.num_items - 1}")
        return ids, mask

    def encode(self, histories: Sequence[np.ndarray], length: int | None = None) -> dict[str, np.ndarray]:
        """User state of dense-id histories padded to `length` (None: the longest kept one)."""
        ids, mask = self.pad_histories(histories, length)
        hist_emb = np.asarray(self.item_embeddings[ids.reshape(-1)], dtype=np.float32).reshape(*ids.shape, -1)
        hist_emb *= mask[..., None]
        return self.encode_padded(hist_emb, mask)

    def encode_padded(self, hist_emb, hist_mask) -> dict[str, np.ndarray]:
        hist_emb = np.ascontiguousarray(hist_emb, dtype=np.float32)
        hist_mask = np.ascontiguousarray(hist_mask, dtype=np.float32)
        return dict(zip(self.state_names, self._part("encoder")(hist_emb, hist_mask)))

    # ---- candidate side -----------------------------------------------------------------------------------
    def score(self, state: dict[str, np.ndarray], owner: np.ndarray, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.scores_ids:  # the runtime holds the item table on its device
            return self._score_runs(state, owner, ids)
        return self.score_emb(state, owner, self.item_embeddings[ids])

    def score_emb(self, state, owner, cand_emb) -> np.ndarray:
        """Scores of candidates given by their embeddings (a runtime that scores ids takes only `score`)."""
        if self.scores_ids:
            raise UserError(f"the {self.backend} scorer takes candidate ids (it holds the item table): call score")
        return self._score_runs(state, owner, np.ascontiguousarray(cand_emb, dtype=np.float32))

    def _score_runs(self, state, owner, cand) -> np.ndarray:
        """The scorer's call for candidates `cand` (embeddings or ids) in any owner order."""
        owner = np.ascontiguousarray(owner, dtype=np.int64).reshape(-1)
        if len(owner) == 0:
            return np.zeros(0, dtype=np.float32)
        if (np.diff(owner) < 0).any():  # the scorer takes each owner's candidates as one run: sort, score, restore
            order = np.argsort(owner, kind="stable")
            scores = np.empty(owner.shape[0], dtype=np.float32)
            scores[order] = self._score_runs(state, owner[order], cand[order])
            return scores
        st = [np.ascontiguousarray(state[n], dtype=np.float32) for n in self.state_names]
        return self._part("scorer")(st, cand, owner)
