"""Triton model `retrieve`: each request's history encoded alone (unknown ids dropped, counted in a metrics counter),
then beam search for all requests of one execute(), one scorer call per round: in this process (a Python scorer
runtime, nann.serving.services.ScorerService) or a BLS call to `scorer` (parameter `scorer`); the repository's blocked
set is watched (nann.serving.filters.BlockedWatcher), its size and version published as gauges.
Logic: nann.serving.retrieval.RetrieveService."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from nann.engine.grid import CandidateGrid
from nann.serving.filters import BLOCKED_GAUGES, BlockedWatcher
from nann.serving.requests import RequestError, ServingLimits
from nann.serving.retrieval import HISTORY, RetrieveService
from nann.serving.services import (CANDIDATES_OUTSIDE, RequestEncoder, in_process_scorer, model_context,
                                   runtime_options)

SWITCH_WAIT_S = 20.0  # how long a scorer call waits for the new `scorer` of a version switch (score below)
DROPPED = "nann_unknown_ids_dropped_total"  # the counter of unknown history ids dropped


class ScorerFailed(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        version_dir, params = model_context(args)
        limits = ServingLimits.from_json(json.loads(params["limits"]))
        self.scorer = in_process_scorer(version_dir, params)  # None: the `scorer` model, through BLS
        self.service = RetrieveService(version_dir, limits, CandidateGrid.from_json(json.loads(params["grid"])),
                                       RequestEncoder(version_dir, limits, **runtime_options(params, "encoder_")))
        # pb_utils gets PreferredMemory only once the model module is loaded: not at import time
        self.cpu_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.families = {name: pb_utils.MetricFamily(name=name, kind=pb_utils.MetricFamily.GAUGE, description=text)
                         for name, (text, _) in BLOCKED_GAUGES.items()}  # kept alive as long as their metrics
        self.families[DROPPED] = pb_utils.MetricFamily(
            name=DROPPED, kind=pb_utils.MetricFamily.COUNTER,
            description="History item ids the index does not know, dropped from requests")
        self.dropped = self.families[DROPPED].Metric(labels=labels)
        gauges = [(self.families[name].Metric(labels=labels), field) for name, (_, field) in BLOCKED_GAUGES.items()]
        # the watcher thread's gauge updates and execute() never talk to the server at the same time: execute() holds
        # this lock for its whole run and the gauges are set only under it, so by construction no gauge set falls
        # inside an execute's BLS calls, the interleaving that preceded a tritonserver SIGSEGV once in CI. Not
        # reproduced without the lock: 406,296 such sets beside 2 busy processes, no crash (perf/RESULTS.md "Gauge
        # updates during BLS calls", python -m perf.gauge_race --hog 2)
        self.talking = threading.RLock()  # re-entrant: execute() refreshes the set, and so may publish, while holding it

        def publish(blocked):
            with self.talking:
                for gauge, field in gauges:
                    gauge.set(getattr(blocked, field))

        self.blocked = BlockedWatcher(Path(args["model_repository"]).parent, self.service.eligibility, publish).start()

    def finalize(self):
        self.blocked.stop()

    def execute(self, requests):
        with self.talking:
            self.blocked.refresh()  # a set written since the last poll serves this batch, in every instance alike
            return self._execute(requests)

    def _execute(self, requests):
        responses = [None] * len(requests)
        good, parsed = [], []
        for i, request in enumerate(requests):
            try:
                # every input the request sent, in one pass (a lookup by name walks the inputs each time); an optional
                # input not sent is None
                sent = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
                parsed.append(self.service.parse(sent.pop(HISTORY, None), sent))
                good.append(i)
            except RequestError as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        if good:
            dropped = sum(r.encoded.dropped for r in parsed)
            if dropped:
                self.dropped.increment(dropped)
            try:
                answers = self.service.retrieve(parsed, self.scorer.scores_for if self.scorer else self._bls_scores_for,
                                                self.blocked.current)
            except ScorerFailed as e:
                error = pb_utils.TritonError(f"scorer failed: {e}", pb_utils.TritonError.UNAVAILABLE)
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(error=error)
            else:
                for i, answer in zip(good, answers):
                    responses[i] = pb_utils.InferenceResponse([
                        pb_utils.Tensor("item_ids", answer.item_ids[None]),
                        pb_utils.Tensor("scores", answer.scores[None]),
                        pb_utils.Tensor("dropped_ids", np.array([[answer.dropped]], dtype=np.int32))])
        return responses

    def _bls_scores_for(self, state):
        """score_fn(owner, ids) calling the `scorer` model through BLS for the users of `state`."""
        state = [pb_utils.Tensor(name, value) for name, value in state.items()]

        def score(owner, ids):
            inputs = state + [pb_utils.Tensor("cand_ids", ids.astype(np.int64)),
                              pb_utils.Tensor("owner", owner.astype(np.int64))]
            give_up = time.monotonic() + SWITCH_WAIT_S
            while True:
                reply = pb_utils.InferenceRequest(
                    model_name="scorer", requested_output_names=["scores"], inputs=inputs,
                    preferred_memory=self.cpu_memory).exec()  # a GPU (TensorRT) scorer's output lands in host memory
                if not reply.has_error():
                    return pb_utils.get_output_tensor_by_name(reply, "scores").as_numpy()
                # items the scorer does not know: after `nann items add` this version of `retrieve` can be ready
                # before the new `scorer` (Triton switches model by model); wait for it instead of failing
                if CANDIDATES_OUTSIDE not in reply.error().message() or time.monotonic() > give_up:
                    raise ScorerFailed(reply.error().message())
                time.sleep(0.05)

        return score
