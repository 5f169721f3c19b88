"""Triton model `scorer` on CPU hosts: scores candidate ids for the given users' state rows."""
import triton_python_backend_utils as pb_utils

from nann.serving.requests import RequestError
from nann.serving.services import ScorerService, model_context, runtime_options


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        self.scorer = ScorerService(version_dir, **runtime_options(params))

    def execute(self, requests):
        responses = []
        for request in requests:
            state = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.scorer.state_names}
            try:
                scores = self.scorer.score(state, pb_utils.get_input_tensor_by_name(request, "cand_ids").as_numpy(),
                                           pb_utils.get_input_tensor_by_name(request, "owner").as_numpy())
            except RequestError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", scores)]))
        return responses
