"""Triton model `retrieve`: beam search for all requests of one execute(), one BLS scorer call per round."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from nann.engine.grid import CandidateGrid
from nann.serving.requests import SEARCH_INPUT_NAMES, RequestError, ServingLimits
from nann.serving.retrieval import HIST_IDS, RetrieveService, state_dims
from nann.serving.services import model_context


CPU_MEMORY = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)


class ScorerFailed(RuntimeError):
    pass


def _input(request, name):
    """The input as a numpy array; None when the request does not send it (an optional input)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        grid = json.loads(params["grid"])
        dims = state_dims(json.loads(args["model_config"]))
        self.service = RetrieveService(version_dir, ServingLimits.from_json(json.loads(params["limits"])),
                                       CandidateGrid(grid["sizes"], grid["max_size"]), dims)
        self.state_names = list(dims)

    def execute(self, requests):
        responses = [None] * len(requests)
        good, params, states, histories = [], [], [], []
        for i, request in enumerate(requests):
            try:
                state = {name: _input(request, name) for name in self.state_names}
                p, history = self.service.parse(state, _input(request, HIST_IDS),
                                                {name: _input(request, name) for name in SEARCH_INPUT_NAMES})
                params.append(p)
                histories.append(history)
                good.append(i)
                states.append(state)
            except RequestError as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        if good:
            state = [pb_utils.Tensor(name, np.concatenate([s[name] for s in states])) for name in self.state_names]

            def score(owner, ids):
                reply = pb_utils.InferenceRequest(
                    model_name="scorer", requested_output_names=["scores"],
                    inputs=state + [pb_utils.Tensor("cand_ids", ids.astype(np.int64)),
                                    pb_utils.Tensor("owner", owner.astype(np.int64))],
                    preferred_memory=CPU_MEMORY).exec()  # a GPU (TensorRT) scorer's output lands in host memory
                if reply.has_error():
                    raise ScorerFailed(reply.error().message())
                return pb_utils.get_output_tensor_by_name(reply, "scores").as_numpy()

            try:
                answers, _ = self.service.retrieve(params, score, histories)
            except ScorerFailed as e:
                error = pb_utils.TritonError(f"scorer failed: {e}", pb_utils.TritonError.UNAVAILABLE)
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(error=error)
            else:
                for i, (ids, scores) in zip(good, answers):
                    responses[i] = pb_utils.InferenceResponse(
                        [pb_utils.Tensor("item_ids", ids[None]), pb_utils.Tensor("scores", scores[None])])
        return responses
