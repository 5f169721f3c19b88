"""torch on a CUDA device, in the walk's own process: the GPU scorer of a host without TensorRT.

The run's split (`nann.model_split.build_split`) moves to the device with the item table resident there, as each
item's candidate-only rows (`Scorer.cand_pre`: the query and score-layer-1 maps of e_v, and e_v), computed once at
load: a call sends ids and owners (and the user state, once per batch of requests), not embeddings. The attention
runs in its fixed-shape form (`gather_attention`), so one call's shapes follow from its size alone, and the engine
pads every call to the candidate grid (`padded_grid`): on a CUDA device each (grid size, state-row cap) is captured
as one CUDA graph at its first call and replayed after (pad up, replay, slice: what TensorRT's optimization profiles
and the paper's XLA auto-padding do). `half` runs the scorer in float16 (the encoder and the precomputation stay
float32); `perf.gpu_check` measures its parity with float32.

The same code runs with `device="cpu"` (no graph capture there): the suite checks it against the torch model on CPU.
"""
from __future__ import annotations

import threading

import numpy as np

from nann.scorers.base import ScorerRuntime

PRE_CHUNK = 65536   # items per `cand_pre` call at load (bounds the temporary memory for millions of items)
MIN_ROW_CAP = 8     # the state rows a captured graph holds: the next power of two >= the call's users, at least this


def row_cap(users: int) -> int:
    return max(MIN_ROW_CAP, 1 << max(0, int(users) - 1).bit_length())


class DeviceSplit:
    """A run's serving split on one torch device: `encode(hist_emb, hist_mask)` and `score(state, ids, owner)`
    (`nann.scorers.base.Part`s) with the item table resident on the device."""

    def __init__(self, run, device: str, half: bool, graphs: bool):
        import torch

        from nann.model import load_model
        from nann.model_split import build_split

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.graphs = graphs and self.device.type == "cuda"
        encoder, scorer = build_split(load_model(str(run.path), map_location="cpu"))
        self.encoder = encoder.to(self.device)
        scorer = scorer.to(self.device)
        items = run.item_embeddings()
        with torch.no_grad():
            pre = [scorer.cand_pre(torch.from_numpy(np.array(items[i:i + PRE_CHUNK], dtype=np.float32)).to(self.device))
                   for i in range(0, len(items), PRE_CHUNK)]
            self.pre = torch.cat(pre).to(self.dtype)
        scorer.fixed_shapes = True
        self.scorer = scorer.to(self.dtype)
        self._lock = threading.Lock()
        self._state_key: tuple = ()   # the host arrays now on the device (held, so their ids stay theirs)
        self._layout: tuple = ()      # their layout there: (row cap, each tensor's inner shape)
        self._rows: dict[tuple, list] = {}      # layout -> the state tensors on the device, rows padded to the cap
        self._captured: dict[tuple, tuple] = {}  # (size, layout) -> (graph, ids+owner [2, size], output)
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def encode(self, hist_emb: np.ndarray, hist_mask: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            state = self.encoder(torch.from_numpy(hist_emb).to(self.device), torch.from_numpy(hist_mask).to(self.device))
        return [s.float().cpu().numpy() for s in state]

    def score(self, state: list[np.ndarray], ids: np.ndarray, owner: np.ndarray) -> np.ndarray:
        cand = self.torch.from_numpy(np.stack([ids, owner]).astype(np.int64, copy=False))  # one copy to the device
        with self._lock:
            rows = self._upload_state(state)
            if self.graphs:
                graph, static_cand, out = self._graph(len(ids), rows)
                static_cand.copy_(cand)
                graph.replay()
            else:
                with self.torch.no_grad():
                    out = self._forward(rows, cand.to(self.device))
            return out.float().cpu().numpy()

    def _forward(self, rows, cand):
        return self.scorer.score_pre(rows, self.pre[cand[0]], cand[1])

    def _upload_state(self, state: list[np.ndarray]) -> list:
        """The state on the device, rows zero-padded to a power-of-two cap, in the tensors of its layout (which the
        captured graphs read). Uploaded once per state: the engine passes the same arrays every round of a batch
        (never changed in place), so other arrays mean other users."""
        key = tuple(state)
        if len(key) != len(self._state_key) or any(a is not b for a, b in zip(key, self._state_key)):
            torch = self.torch
            users = state[0].shape[0]
            layout = (row_cap(users), tuple(s.shape[1:] for s in state))
            if layout not in self._rows:
                self._rows[layout] = [torch.zeros((layout[0], *inner), dtype=self.dtype, device=self.device)
                                      for inner in layout[1]]
            for dst, s in zip(self._rows[layout], state):
                dst[:users].copy_(torch.from_numpy(s))
                dst[users:].zero_()
            self._state_key, self._layout = key, layout
        return self._rows[self._layout]

    def _graph(self, size: int, rows: list) -> tuple:
        """The graph captured for calls of `size` candidates over the state layout now on the device: (graph, its
        static ids+owner input, its output). Captured at the first such call."""
        key = (size, self._layout)
        if key not in self._captured:
            torch = self.torch
            static_cand = torch.zeros((2, size), dtype=torch.int64, device=self.device)
            with torch.no_grad():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS handles, workspaces)
                    for _ in range(2):
                        self._forward(rows, static_cand)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    out = self._forward(rows, static_cand)
            self._captured[key] = (graph, static_cand, out)
        return self._captured[key]


class TorchCudaRuntime(ScorerRuntime):
    """`DeviceSplit` as a scorer runtime. Registered for "cuda" in fp32 and fp16; other devices (e.g. "cpu", for the
    suite and `perf.gpu_check --device cpu`) by building an instance and passing it where a backend name goes."""

    gpu = True
    padded_grid = True
    scores_ids = True
    process_threads = True
    needs = "a CUDA GPU and torch built with CUDA"

    def __init__(self, device: str = "cuda", half: bool = False, graphs: bool = True):
        self.device, self.half, self.graphs = device, half, graphs
        self.name = "torch-cuda-half" if half else "torch-cuda"
        precision = "float16" if half else "float32"
        self.summary = f"torch on a CUDA GPU in the walk's process, {precision}, one CUDA graph per grid size"

    def available(self) -> bool:
        if not self.device.startswith("cuda"):
            return True
        import torch

        return torch.cuda.is_available()

    def load(self, run, io, parts, threads, spinning):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        split = DeviceSplit(run, self.device, self.half, self.graphs)
        return {part: {"encoder": split.encode, "scorer": split.score}[part] for part in parts}


RUNTIMES = (TorchCudaRuntime(), TorchCudaRuntime(half=True))
