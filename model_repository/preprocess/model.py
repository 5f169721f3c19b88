"""Triton model `preprocess`: history (raw ids) → padded behaviour embeddings and mask. Logic: nann.serving.services."""
import json

import triton_python_backend_utils as pb_utils

from nann.serving.requests import RequestError, ServingLimits
from nann.serving.services import Preprocessor, model_context


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        self.preprocessor = Preprocessor(version_dir, ServingLimits.from_json(json.loads(params["limits"])))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                emb, mask = self.preprocessor.prepare(pb_utils.get_input_tensor_by_name(request, "history").as_numpy())
            except RequestError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("hist_emb", emb[None]), pb_utils.Tensor("hist_mask", mask[None])]))
        return responses
