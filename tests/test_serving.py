"""The served system against a real tritonserver: same answers as offline, dynamic batching, bad input."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from nann.serving.requests import parse_search
from nann.serving.retrieval import OfflineRetriever

pytestmark = pytest.mark.serving


def infer(client, history, k=None, ef=None, rounds=None, frontier=None):
    inputs = []
    for name, value, dtype in (("history", history, "INT64"), ("k", None if k is None else [k], "INT32"),
                               ("ef", ef, "INT32"), ("rounds", rounds, "INT32"),
                               ("frontier", None if frontier is None else [frontier], "INT32")):
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.int64 if dtype == "INT64" else np.int32).reshape(1, -1)
        tensor = grpcclient.InferInput(name, list(arr.shape), dtype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    result = client.infer("nann", inputs)
    return result.as_numpy("item_ids")[0], result.as_numpy("scores")[0]


@pytest.fixture(scope="module")
def users(test_histories):
    return test_histories[:40]


@pytest.fixture(scope="module")
def offline(served):
    return OfflineRetriever(served.run)


def expected(offline, history, k=None):
    params = parse_search(None if k is None else np.array([k]), None, None, offline.limits)
    return offline.retrieve([history], [params])[0]


def test_single_requests_match_offline_retrieve(served, users, offline):
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        for i, history in enumerate(users):
            k = None if i % 2 else 25
            ids, scores = infer(client, history, k=k)
            want_ids, want_scores = expected(offline, history, k)
            assert ids.tolist() == want_ids.tolist()
            np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)


def test_concurrent_requests_match_offline_and_are_batched(served, users, offline):
    url = served.server.grpc_url
    with grpcclient.InferenceServerClient(url) as stats_client:
        before = {m: stats_client.get_inference_statistics(m, as_json=True)["model_stats"][0]
                  for m in ("retrieve", "scorer")}
    results, errors = {}, []

    def worker(offset):
        try:
            with grpcclient.InferenceServerClient(url) as client:
                for i in range(offset, len(users), 8):
                    results[i] = infer(client, users[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, history in enumerate(users):
        want_ids, want_scores = expected(offline, history)
        assert results[i][0].tolist() == want_ids.tolist()
        np.testing.assert_allclose(results[i][1], want_scores, rtol=1e-4, atol=1e-5)
    with grpcclient.InferenceServerClient(url) as stats_client:
        after = {m: stats_client.get_inference_statistics(m, as_json=True)["model_stats"][0]
                 for m in ("retrieve", "scorer")}
    requests = int(after["retrieve"]["inference_count"]) - int(before["retrieve"]["inference_count"])
    executions = int(after["retrieve"]["execution_count"]) - int(before["retrieve"]["execution_count"])
    scorer_calls = int(after["scorer"]["execution_count"]) - int(before["scorer"]["execution_count"])
    assert requests == len(users)
    assert executions < requests, "dynamic batching never put two requests into one execute()"
    # one scorer call for the exhaustive top layer + at most one per round, for each execute(), however many
    # requests it holds
    assert scorer_calls <= executions * (1 + sum(offline.limits.default_rounds))


@pytest.mark.parametrize("history, k, ef, rounds, message", [
    ([], None, None, None, "history is empty"),
    ([123456789012], None, None, None, "unknown item ids"),
    ([-1], None, None, None, "unknown item ids"),
    (None, 0, None, None, "k=0 is outside"),
    (None, 100000, None, None, "k=100000 is outside"),
    (None, None, [1, 2], None, "ef needs 3 values"),
    (None, None, [1, 2, 100000], None, "is outside"),
    (None, None, None, [1, 1, 99], "is outside"),
])
def test_bad_requests_get_invalid_arg_and_server_keeps_serving(served, users, history, k, ef, rounds, message):
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as err:
            infer(client, users[0] if history is None else history, k=k, ef=ef, rounds=rounds)
        assert message in err.value.message()
        assert "INVALID_ARG" in str(err.value.status()) or "INVALID_ARGUMENT" in str(err.value.status())
        ids, _ = infer(client, users[1], k=5)
        assert len(ids) == 5


def test_frontier_requests_match_offline_retrieve(served, users, offline):
    """A per-request frontier reaches the engine: served answers equal offline ones with the same parameters."""
    rounds = [1, 3, 10]
    changed = 0
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        for i, history in enumerate(users[:8]):
            frontier = (1, 4, 16, 0)[i % 4]
            params = parse_search(np.array([30]), None, np.array(rounds), offline.limits, np.array([frontier]))
            assert params.frontier == frontier
            want_ids, want_scores = offline.retrieve([history], [params])[0]
            ids, scores = infer(client, history, k=30, rounds=rounds, frontier=frontier)
            assert ids.tolist() == want_ids.tolist()
            np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
            unlimited = parse_search(np.array([30]), None, np.array(rounds), offline.limits, np.array([0]))
            changed += offline.retrieve([history], [unlimited])[0][0].tolist() != want_ids.tolist()
        # the narrow frontiers change some answers, so the equality above is not the default search twice
        assert changed > 0
        for bad, message in ((-1, "frontier=-1 is outside"), (100000, "frontier=100000 is outside")):
            with pytest.raises(InferenceServerException) as err:
                infer(client, users[0], frontier=bad)
            assert message in err.value.message()
            assert "INVALID_ARG" in str(err.value.status())


def test_long_history_keeps_most_recent(served, users, offline):
    long_history = np.concatenate([users[2]] * 6)
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        ids, _ = infer(client, long_history, k=10)
    assert ids.tolist() == expected(offline, long_history[-offline.limits.max_seq:], 10)[0].tolist()
