"""Triton model `encode`: history (raw ids) → user state, dense history ids and the count of unknown ids dropped
(also a metrics counter), one user at a time. Logic: nann.serving.services.RequestEncoder."""
import json

import triton_python_backend_utils as pb_utils

from nann.serving.requests import RequestError, ServingLimits
from nann.serving.services import RequestEncoder, model_context, runtime_options


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        self.encoder = RequestEncoder(version_dir, ServingLimits.from_json(json.loads(params["limits"])),
                                      **runtime_options(params))
        self.dropped_family = pb_utils.MetricFamily(
            name="nann_unknown_ids_dropped_total", kind=pb_utils.MetricFamily.COUNTER,
            description="History item ids the index does not know, dropped from requests")
        self.dropped = self.dropped_family.Metric(labels={"model": args["model_name"],
                                                          "version": args["model_version"]})

    def execute(self, requests):
        responses, dropped = [], 0
        for request in requests:
            try:
                encoded = self.encoder.encode(pb_utils.get_input_tensor_by_name(request, "history").as_numpy())
            except RequestError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            dropped += encoded.dropped
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in encoded.outputs().items()]))
        if dropped:
            self.dropped.increment(dropped)
        return responses
