"""The client SDK and `nann query` against the real served pipeline: answers equal `nann retrieve` offline."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from nann_client import AsyncNannClient, InvalidRequestError, NannClient

from nann_cli.main import main as cli_main

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def histories(test_histories):
    n = len(test_histories)  # fewer than 100 test users in the tiny run: cycle through them
    return [test_histories[i % n] for i in range(100)]


def offline_json(run, history, k, capsys) -> dict:
    assert cli_main(["retrieve", "--run", str(run), "--history", ",".join(map(str, history)), "--k", str(k),
                     "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_sync_and_async_equal_nann_retrieve(served, histories, capsys):
    url = served.server.grpc_url
    with NannClient(url) as client:
        sync = [client.retrieve(h, k=20) for h in histories[:10]]

    async def run_async():
        async with AsyncNannClient(url) as client:
            return [await client.retrieve(h, k=20) for h in histories[:10]]

    for h, s, a in zip(histories, sync, asyncio.run(run_async())):
        want = offline_json(served.run, h, 20, capsys)
        assert s.item_ids.tolist() == want["item_ids"] == a.item_ids.tolist()
        np.testing.assert_allclose(s.scores, want["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.scores, want["scores"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"rounds": [1, 2, 3, 10], "frontier": 4}, {"rounds": [1, 1, 1, 2], "seeds": 10},
                                     {"ef": [100, 200, 400], "rounds": [1, 1, 3], "frontier": 0, "seeds": 0}])
def test_search_options_equal_offline_retriever(served, histories, options):
    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    offline = OfflineRetriever(served.run)
    params = parse_search(offline.limits, k=20, **options)
    with NannClient(served.server.grpc_url) as client:
        for h in histories[:4]:
            got = client.retrieve(h, k=20, **options)
            want = offline.retrieve([h], [params])[0]
            assert got.item_ids.tolist() == want.item_ids.tolist() and got.dropped == want.dropped == 0
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5)


def test_unknown_ids_and_new_users_through_the_sdk(served, histories, capsys):
    known = list(histories[5])
    with NannClient(served.server.grpc_url) as client:
        got = client.retrieve(known + [987654321987], k=10)
        alone = client.retrieve(known, k=10)
        new = client.retrieve_many([[], [987654321987, -3]], k=10)
    assert got.dropped == 1 and alone.dropped == 0
    assert got.item_ids.tolist() == alone.item_ids.tolist() and np.array_equal(got.scores, alone.scores)
    assert new[0].item_ids.tolist() == new[1].item_ids.tolist() and len(new[0]) == 10
    assert (new[0].dropped, new[1].dropped) == (0, 2)
    history = ",".join(map(str, known + [987654321987]))
    assert cli_main(["query", "--url", served.server.grpc_url, "--history", history, "--k", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == got.to_dict()


def test_retrieve_many_keeps_order_and_equals_single_calls(served, histories):
    with NannClient(served.server.grpc_url) as client:
        many = client.retrieve_many(histories, k=10)
        singles = [client.retrieve(h, k=10) for h in histories]
    assert len(many) == 100
    for m, s in zip(many, singles):
        assert m.item_ids.tolist() == s.item_ids.tolist()
        np.testing.assert_allclose(m.scores, s.scores, rtol=1e-6)


@pytest.mark.parametrize("history, k, message", [
    (list(range(1001)), None, "history has 1001 item ids, more than the maximum 1000"),
    (None, 5000, "k=5000 is outside [1, 1000]"),
])
def test_server_messages_reach_the_caller(served, histories, history, k, message):
    with NannClient(served.server.grpc_url) as client:
        with pytest.raises(InvalidRequestError) as err:
            client.retrieve(histories[0] if history is None else history, k=k)
    assert message in str(err.value)


def test_info_comes_from_the_server(served):
    with NannClient(served.server.grpc_url) as client:
        info = client.info()
        assert client.ready()
    assert info.num_items == served.info["num_items"]
    assert info.scorer_backend == "onnxruntime" and info.raw["scorer_in_process"] is False  # behind BLS
    assert info.max_k == 1000
    assert info.defaults["seeds"] == served.info["defaults"]["seeds"] and info.limits["max_seeds"] == 50
    assert info.raw["unknown_ids"] == "skip"


def test_nann_query_prints_what_nann_retrieve_prints(served, histories, capsys):
    history = ",".join(map(str, histories[3]))
    assert cli_main(["query", "--url", served.server.grpc_url, "--history", history, "--k", "7", "--json"]) == 0
    served_json = json.loads(capsys.readouterr().out)
    offline = offline_json(served.run, histories[3], 7, capsys)
    assert served_json["item_ids"] == offline["item_ids"] and served_json["dropped"] == offline["dropped"] == 0
    np.testing.assert_allclose(served_json["scores"], offline["scores"], rtol=1e-4, atol=1e-5)
