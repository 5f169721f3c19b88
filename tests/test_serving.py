"""The served system against a real tritonserver: same answers as offline, dynamic batching, seeds, unknown ids
and new users, bad input."""
from __future__ import annotations

import re
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from nann.serving.requests import parse_search
from nann.serving.retrieval import OfflineRetriever
from pipeline_fixtures import send_together

pytestmark = pytest.mark.serving


def tensor(name, value, dtype):
    arr = np.asarray(value, dtype=np.int64 if dtype == "INT64" else np.int32).reshape(1, -1)
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def infer_all(client, history, **options):
    """(item ids, scores, dropped) of one request; `options` are the optional inputs (None = not sent)."""
    inputs = [tensor("history", history, "INT64")]
    inputs += [tensor(name, value, "INT32") for name, value in options.items() if value is not None]
    result = client.infer("nann", inputs)
    return result.as_numpy("item_ids")[0], result.as_numpy("scores")[0], int(result.as_numpy("dropped_ids")[0, 0])


def infer(client, history, **options):
    return infer_all(client, history, **options)[:2]


@pytest.fixture(scope="module")
def users(test_histories):
    return test_histories[:40]


@pytest.fixture(scope="module")
def offline(served):
    return OfflineRetriever(served.run)


def expected(offline, history, k=None):
    return offline.retrieve([history], [parse_search(offline.limits, k=k)])[0]


def test_single_requests_match_offline_retrieve(served, users, offline):
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        for i, history in enumerate(users):
            k = None if i % 2 else 25
            ids, scores = infer(client, history, k=k)
            want_ids, want_scores, _ = expected(offline, history, k)
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
        want_ids, want_scores, _ = expected(offline, history)
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
    assert scorer_calls <= executions * (1 + sum(offline.limits.defaults.rounds))


@pytest.mark.parametrize("history, k, ef, rounds, message", [
    (list(range(1001)), None, None, None, "more than the maximum 1000"),
    (None, 0, None, None, "k=0 is outside"),
    (None, 100000, None, None, "k=100000 is outside"),
    (None, None, [1, 2], None, "ef and rounds need one value per layer each, got 2 and 4"),
    (None, None, [1, 2, 3, 100000], None, "is outside"),
    (None, None, None, [1, 1, 1, 99], "is outside"),
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
    rounds = [1, 2, 3, 10]
    changed = 0
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        for i, history in enumerate(users[:8]):
            frontier = (1, 4, 16, 0)[i % 4]
            params = parse_search(offline.limits, k=30, rounds=rounds, frontier=frontier)
            assert params.frontier == frontier
            want_ids, want_scores, _ = offline.retrieve([history], [params])[0]
            ids, scores = infer(client, history, k=30, rounds=rounds, frontier=[frontier])
            assert ids.tolist() == want_ids.tolist()
            np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
            unlimited = parse_search(offline.limits, k=30, rounds=rounds, frontier=0)
            changed += offline.retrieve([history], [unlimited])[0][0].tolist() != want_ids.tolist()
        # the narrow frontiers change some answers, so the equality above is not the default search twice
        assert changed > 0
        for bad, message in ((-1, "frontier=-1 is outside"), (100000, "frontier=100000 is outside")):
            with pytest.raises(InferenceServerException) as err:
                infer(client, users[0], frontier=[bad])
            assert message in err.value.message()
            assert "INVALID_ARG" in str(err.value.status())


def test_long_history_keeps_most_recent(served, users, offline):
    long_history = np.concatenate([users[2]] * 6)
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        ids, _ = infer(client, long_history, k=10)
    assert ids.tolist() == expected(offline, long_history[-offline.limits.max_seq:], 10)[0].tolist()


# ---------------------------------------------------------------- seeds

SEEDED_ROUNDS = [1, 1, 1, 2]  # a short walk, where the seeds' entry points change answers


def test_seeds_match_offline_retrieve(served, users, offline):
    """Per-request seeds reach the engine with the request's history: served == offline for seeds 0/10/50."""
    changed = 0
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        for history in users[:8]:
            answers = {}
            for seeds in (0, 10, 50):
                params = parse_search(offline.limits, k=30, rounds=SEEDED_ROUNDS, seeds=seeds)
                want_ids, want_scores, _ = offline.retrieve([history], [params])[0]
                ids, scores = infer(client, history, k=30, rounds=SEEDED_ROUNDS, seeds=seeds)
                assert ids.tolist() == want_ids.tolist()
                np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
                answers[seeds] = ids.tolist()
            changed += answers[10] != answers[0]
        assert changed > 0, "seeds never changed an answer: the comparison above proves nothing"
        for bad, message in ((-1, r"seeds=-1 is outside \[0, 50\] \(0 = none\)"), (51, r"seeds=51 is outside")):
            with pytest.raises(InferenceServerException) as err:
                infer(client, users[0], seeds=bad)
            assert re.search(message, err.value.message()) and "INVALID_ARG" in str(err.value.status())


def test_mixed_seeds_in_one_concurrent_batch_equal_one_at_a_time(served, users):
    jobs = [(users[i % len(users)], (0, 5, 10, 50)[i % 4]) for i in range(24)]
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        alone = [infer(client, h, k=20, rounds=SEEDED_ROUNDS, seeds=s) for h, s in jobs]
    results, executions = send_together(served.server.grpc_url, [
        lambda c, h=h, s=s: infer(c, h, k=20, rounds=SEEDED_ROUNDS, seeds=s) for h, s in jobs], "retrieve")
    for (ids, scores), (want_ids, want_scores) in zip(results, alone):
        assert ids.tolist() == want_ids.tolist() and np.array_equal(scores, want_scores)
    assert executions < len(jobs), "never batched together"


# ---------------------------------------------------------------- unknown ids and new users

def dropped_counter(served) -> float:
    """The `nann_unknown_ids_dropped_total` counter on the server's metrics endpoint (all label sets)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{served.server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nann_unknown_ids_dropped_total"))


def test_an_unknown_id_is_dropped_counted_and_changes_nothing_else(served, users, offline):
    known = np.concatenate(users)[:19]
    with_unknown = np.concatenate([known[:8], [123456789012], known[8:]])
    before = dropped_counter(served)
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        ids, scores, dropped = infer_all(client, with_unknown, k=25)
        want_ids, want_scores, none_dropped = infer_all(client, known, k=25)
        assert dropped == 1 and none_dropped == 0
        assert ids.tolist() == want_ids.tolist() and np.array_equal(scores, want_scores)
        many = np.concatenate([with_unknown, [-1, 2**63 - 1, -2**63, 987654321]])
        assert infer_all(client, many, k=25)[2] == 5
    assert dropped_counter(served) == before + 6
    params = parse_search(offline.limits, k=25)
    got, alone = offline.retrieve([with_unknown, known], [params, params])
    assert got.dropped == 1 and alone.dropped == 0
    assert got.item_ids.tolist() == alone.item_ids.tolist() == ids.tolist() and np.array_equal(got.scores, alone.scores)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-4, atol=1e-5)


def test_new_users_get_the_cold_start_answer(served, offline):
    """An empty history and one whose ids are all unknown: the model's all-masked state, k items, one answer."""
    params = parse_search(offline.limits, k=15)
    cold = offline.retrieve([[]], [params])[0]
    assert len(cold.item_ids) == 15 and np.isfinite(cold.scores).all() and cold.dropped == 0
    with grpcclient.InferenceServerClient(served.server.grpc_url) as client:
        empty = infer_all(client, np.zeros(0, np.int64), k=15)
        unknown = infer_all(client, [123456789012, -7], k=15, seeds=10)
    assert empty[2] == 0 and unknown[2] == 2
    assert empty[0].tolist() == unknown[0].tolist() == cold.item_ids.tolist()
    np.testing.assert_allclose(empty[1], cold.scores, rtol=1e-4, atol=1e-5)
    assert np.array_equal(empty[1], unknown[1])
    all_unknown = offline.retrieve([[123456789012, -7]], [params])[0]
    assert all_unknown.dropped == 2 and all_unknown.item_ids.tolist() == cold.item_ids.tolist()
    assert np.array_equal(all_unknown.scores, cold.scores)
