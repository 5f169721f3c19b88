"""Deterministic stand-in for NANN retrieval, for the client SDK tests.

Catalogue: raw item ids 1..1000; history ids outside it are dropped (and counted in `dropped_ids`), so an
empty or all-unknown history is answered like any other. For a valid request:
  item_ids = distinct known history ids in descending order, then the highest catalogue ids not in the history
             (1000, 999, ...), truncated to k;
  scores[i] = (k - i) + 0.01 * sum(ef) + 0.001 * sum(rounds) + 0.0001 * frontier + 0.00001 * seeds
  (ef/rounds/frontier/seeds default to [10, 20] / [1, 2] / 0 / 0).
Special: a history starting with 9999 makes the model sleep history[1] milliseconds, then answer as for
history[2:] (used to test client deadlines).
Bad input → per-request pb_utils.TritonError(..., INVALID_ARG); the other requests of the batch succeed.
"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils

NUM_ITEMS = 1000
DEFAULT_K, DEFAULT_EF, DEFAULT_ROUNDS, DEFAULT_FRONTIER, DEFAULT_SEEDS = 10, [10, 20], [1, 2], 0, 0
MAX_K, MAX_HISTORY, MAX_EF, MAX_ROUNDS, MAX_FRONTIER, MAX_SEEDS = 100, 200, 500, 5, 64, 50
SLEEP_ID = 9999


def expected(history, k=None, ef=None, rounds=None, frontier=None, seeds=None):
    """The function this model computes (also copied in tests/test_client.py): (item ids, scores, dropped)."""
    k = DEFAULT_K if k is None else int(k)
    frontier = DEFAULT_FRONTIER if frontier is None else int(frontier)
    seeds = DEFAULT_SEEDS if seeds is None else int(seeds)
    ef = DEFAULT_EF if ef is None else list(ef)
    rounds = DEFAULT_ROUNDS if rounds is None else list(rounds)
    known = [int(x) for x in history if 1 <= x <= NUM_ITEMS]
    seen = sorted(set(known), reverse=True)
    ids = seen[:k]
    cand = NUM_ITEMS
    present = set(seen)
    while len(ids) < k:
        if cand not in present:
            ids.append(cand)
        cand -= 1
    bonus = 0.01 * sum(ef) + 0.001 * sum(rounds) + 0.0001 * frontier + 0.00001 * seeds
    scores = [float(k - i) + bonus for i in range(k)]
    return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32), len(history) - len(known)


def _optional(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)


def _one(request):
    history = pb_utils.get_input_tensor_by_name(request, "history").as_numpy().reshape(-1)
    k = _optional(request, "k")
    ef = _optional(request, "ef")
    rounds = _optional(request, "rounds")
    frontier = _optional(request, "frontier")
    seeds = _optional(request, "seeds")
    if history.size >= 2 and history[0] == SLEEP_ID:
        time.sleep(float(history[1]) / 1000.0)
        history = history[2:]
    if history.size > MAX_HISTORY:
        raise ValueError(f"history has {history.size} items, more than max_history={MAX_HISTORY}")
    k = DEFAULT_K if k is None else int(k[0])
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k={k} is outside [1, {MAX_K}]")
    if ef is not None and (ef.size == 0 or ef.min() < 1 or ef.max() > MAX_EF):
        raise ValueError(f"ef={ef.tolist()} is outside [1, {MAX_EF}]")
    if rounds is not None and (rounds.size == 0 or rounds.min() < 1 or rounds.max() > MAX_ROUNDS):
        raise ValueError(f"rounds={rounds.tolist()} is outside [1, {MAX_ROUNDS}]")
    frontier = DEFAULT_FRONTIER if frontier is None else int(frontier[0])
    if not 0 <= frontier <= MAX_FRONTIER:
        raise ValueError(f"frontier={frontier} is outside [0, {MAX_FRONTIER}] (0 = unlimited)")
    seeds = DEFAULT_SEEDS if seeds is None else int(seeds[0])
    if not 0 <= seeds <= MAX_SEEDS:
        raise ValueError(f"seeds={seeds} is outside [0, {MAX_SEEDS}] (0 = none)")
    ids, scores, dropped = expected(history, k, None if ef is None else ef.tolist(),
                                    None if rounds is None else rounds.tolist(), frontier, seeds)
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("item_ids", ids.reshape(1, -1)),
        pb_utils.Tensor("scores", scores.reshape(1, -1)),
        pb_utils.Tensor("dropped_ids", np.array([[dropped]], dtype=np.int32)),
    ])


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(_one(request))
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
        return responses
