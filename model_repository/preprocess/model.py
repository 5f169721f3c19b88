"""Triton model `preprocess`: history (raw ids) → padded behaviour embeddings, mask and dense ids, and the count of
unknown ids dropped (also a metrics counter). Logic: nann.serving.services."""
import json

import triton_python_backend_utils as pb_utils

from nann.serving.requests import RequestError, ServingLimits
from nann.serving.services import Preprocessor, model_context


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        self.preprocessor = Preprocessor(version_dir, ServingLimits.from_json(json.loads(params["limits"])))
        self.dropped_family = pb_utils.MetricFamily(
            name="nann_unknown_ids_dropped_total", kind=pb_utils.MetricFamily.COUNTER,
            description="History item ids the index does not know, dropped from requests")
        self.dropped = self.dropped_family.Metric(labels={"model": args["model_name"],
                                                          "version": args["model_version"]})

    def execute(self, requests):
        responses, dropped = [], 0
        for request in requests:
            try:
                prepared = self.preprocessor.prepare(pb_utils.get_input_tensor_by_name(request, "history").as_numpy())
            except RequestError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            dropped += prepared.dropped
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value[None]) for name, value in prepared._asdict().items()]))
        if dropped:
            self.dropped.increment(dropped)
        return responses
