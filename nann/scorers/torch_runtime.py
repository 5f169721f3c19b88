"""torch on CPU: the same split rebuilt from the run's config and weights (`nann.model_split.build_split`; no ONNX)."""
from __future__ import annotations

import os

from nann.scorers.base import PARTS, ScorerRuntime


class TorchRuntime(ScorerRuntime):
    name = "torch"
    summary = "torch on CPU, the split rebuilt from the weights"
    process_threads = True

    def load(self, run, io, parts, threads, spinning):
        if not spinning:  # read by libgomp once, when torch is first imported (here, in a Triton stub)
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        from nann.model import load_model
        from nann.model_split import build_split

        if threads:
            torch.set_num_threads(int(threads))
        split = dict(zip(PARTS, build_split(load_model(str(run.path), map_location="cpu"))))

        def encoder(hist_emb, hist_mask):
            with torch.no_grad():
                return [o.numpy() for o in split["encoder"](torch.from_numpy(hist_emb), torch.from_numpy(hist_mask))]

        def scorer(state, cand_emb, owner):
            with torch.no_grad():
                return split["scorer"](*[torch.from_numpy(s) for s in state], torch.from_numpy(cand_emb),
                                       torch.from_numpy(owner)).numpy()

        return {part: {"encoder": encoder, "scorer": scorer}[part] for part in parts}


RUNTIME = TorchRuntime()
