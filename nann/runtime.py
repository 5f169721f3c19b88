"""Runs a trained run's serving split: ``encode(histories)`` -> user state, ``score(state, owner, ids)`` -> scores.

Backends: ``onnxruntime`` (user_encoder.onnx + scorer.onnx; does not import torch) and ``torch``
(rebuilds the same split from ``config.json`` + ``model.safetensors``; no ONNX). Both compute the model's raw logit
``s_u(e_v)``, the number the trainer trains and brute force ranks by.

Empty history: ``encode`` accepts it and returns the state of an all-masked row (attention output 0, sum-pool 0;
finite scores). Serving rejects empty histories before they get here.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from nann.errors import UserError

BACKENDS = ("onnxruntime", "torch")


def pad_histories(histories: Sequence[np.ndarray], max_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids oldest first -> (ids int64 [B,L], mask float32 [B,L]); keeps the last max_seq; L >= 1."""
    hs = [np.asarray(h, dtype=np.int64).reshape(-1)[-max_seq:] for h in histories]
    L = max([len(h) for h in hs] + [1])
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

    def __init__(self, run_dir: str, backend: str, threads: int | None):
        self.run_dir = run_dir
        self.backend = backend
        io_path = os.path.join(run_dir, "onnx_io.json")
        emb_path = os.path.join(run_dir, "item_embeddings.npy")
        for p in (io_path, emb_path):
            if not os.path.exists(p):
                raise UserError(f"{p} not found: is {run_dir} a finished training run (nann train --run)?")
        with open(io_path) as f:
            self.io = json.load(f)
        self.item_embeddings = np.load(emb_path, mmap_mode="r")
        self.num_items, self.emb_dim = (int(x) for x in self.item_embeddings.shape)
        self.max_seq = int(self.io["max_seq"])
        self.arch = self.io.get("arch")
        self.state_names = [s["name"] for s in self.io["state"]]
        if backend == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = int(threads)
                so.inter_op_num_threads = 1
            prov = ["CPUExecutionProvider"]
            self._enc = ort.InferenceSession(os.path.join(run_dir, self.io["user_encoder"]["file"]), so, providers=prov)
            self._sc = ort.InferenceSession(os.path.join(run_dir, self.io["scorer"]["file"]), so, providers=prov)
        elif backend == "torch":
            import torch

            from nann.model import build_split, load_model

            if threads:
                torch.set_num_threads(int(threads))
            self._torch = torch
            self._tenc, self._tsc = build_split(load_model(run_dir, map_location="cpu"))
        else:
            raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")

    @classmethod
    def load(cls, run_dir, backend: str = "onnxruntime", threads: int | None = None) -> "ModelRuntime":
        return cls(str(run_dir), backend, threads)

    # ---- user side ----------------------------------------------------------------------------------------
    def pad_histories(self, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``pad_histories`` at this run's max_seq; refuses item ids outside the run's items."""
        ids, mask = pad_histories(histories, self.max_seq)
        bad = np.flatnonzero((((ids < 0) | (ids >= self.num_items)) & (mask > 0)).any(axis=1))
        if len(bad):
            raise UserError(f"history {bad[0]} has item ids outside 0..{self.num_items - 1}")
        return ids, mask

    def encode(self, histories: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = self.pad_histories(histories)
        hist_emb = np.asarray(self.item_embeddings[ids.reshape(-1)], dtype=np.float32).reshape(*ids.shape, -1)
        hist_emb *= mask[..., None]
        return self.encode_padded(hist_emb, mask)

    def encode_padded(self, hist_emb, hist_mask) -> dict[str, np.ndarray]:
        hist_emb = np.ascontiguousarray(hist_emb, dtype=np.float32)
        hist_mask = np.ascontiguousarray(hist_mask, dtype=np.float32)
        if self.backend == "onnxruntime":
            outs = self._enc.run(self.state_names, {"hist_emb": hist_emb, "hist_mask": hist_mask})
        else:
            t = self._torch
            with t.no_grad():
                outs = [o.numpy() for o in self._tenc(t.from_numpy(hist_emb), t.from_numpy(hist_mask))]
        return dict(zip(self.state_names, outs))

    # ---- candidate side -----------------------------------------------------------------------------------
    def score(self, state: dict[str, np.ndarray], owner: np.ndarray, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        cand = np.asarray(self.item_embeddings[ids], dtype=np.float32)
        return self.score_emb(state, owner, cand)

    def score_emb(self, state, owner, cand_emb) -> np.ndarray:
        owner = np.ascontiguousarray(owner, dtype=np.int64).reshape(-1)
        cand_emb = np.ascontiguousarray(cand_emb, dtype=np.float32)
        if len(owner) == 0:
            return np.zeros(0, dtype=np.float32)
        if (np.diff(owner) < 0).any():  # the scorer takes each owner's candidates as one run: sort, score, restore
            order = np.argsort(owner, kind="stable")
            scores = np.empty(owner.shape[0], dtype=np.float32)
            scores[order] = self.score_emb(state, owner[order], cand_emb[order])
            return scores
        st = [np.ascontiguousarray(state[n], dtype=np.float32) for n in self.state_names]
        if self.backend == "onnxruntime":
            feed = dict(zip(self.state_names, st))
            feed["cand_emb"] = cand_emb
            feed["owner"] = owner
            return self._sc.run(["scores"], feed)[0]
        t = self._torch
        with t.no_grad():
            return self._tsc(*[t.from_numpy(s) for s in st], t.from_numpy(cand_emb), t.from_numpy(owner)).numpy()
