"""Triton model `user_encoder`: one user_encoder.onnx run for all requests of an execute()."""
import triton_python_backend_utils as pb_utils

from nann.serving.services import EncoderService, model_context


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        self.encoder = EncoderService(version_dir, params["backend"])

    def execute(self, requests):
        states = self.encoder.encode_requests(
            [pb_utils.get_input_tensor_by_name(r, "hist_emb").as_numpy() for r in requests],
            [pb_utils.get_input_tensor_by_name(r, "hist_mask").as_numpy() for r in requests])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, state[name]) for name in self.encoder.state_names])
                for state in states]
