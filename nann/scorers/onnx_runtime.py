"""ONNX Runtime on CPU: the run's user encoder and scorer ONNX files (no torch); the runtime the CPU server runs by
default."""
from __future__ import annotations

from nann.scorers.base import ScorerRuntime


class OnnxRuntime(ScorerRuntime):
    name = "onnxruntime"
    summary = "ONNX Runtime on CPU"

    def load(self, run, io, parts, threads, spinning):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        files = {"encoder": io["user_encoder"]["file"], "scorer": io["scorer"]["file"]}
        sessions = {part: ort.InferenceSession(str(run.path / files[part]), options,
                                               providers=["CPUExecutionProvider"]) for part in parts}
        state_names = [s["name"] for s in io["state"]]

        def encoder(hist_emb, hist_mask):
            return sessions["encoder"].run(state_names, {"hist_emb": hist_emb, "hist_mask": hist_mask})

        def scorer(state, cand_emb, owner):
            return sessions["scorer"].run(["scores"], {**dict(zip(state_names, state)), "cand_emb": cand_emb,
                                                       "owner": owner})[0]

        return {part: {"encoder": encoder, "scorer": scorer}[part] for part in parts}


RUNTIME = OnnxRuntime()
