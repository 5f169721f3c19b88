"""Eligibility filters served (the session `served` fixture, through the client SDK): each filter and the blocked set
give exactly the offline answers, k eligible items come back when the unfiltered top-k is all blocked or excluded,
`nann items block` is picked up without a restart and shown by `nann query --info`. (The blocked set swapped under
load: tests/test_faults.py; bad filter inputs: tests/test_reliability.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
from nann_client import AsyncNannClient, NannClient

from nann_cli.main import main as cli_main
from nann.serving.filters import write_blocked
from nann.serving.requests import NO_FILTERS, parse_filters, parse_search
from nann.serving.retrieval import OfflineRetriever
from perf.filters import wait_for_version

pytestmark = pytest.mark.serving

K = 30


@pytest.fixture(scope="module")
def users(test_histories):
    return test_histories[:8]


@pytest.fixture(scope="module")
def offline(served):
    return OfflineRetriever(served.run)


@pytest.fixture(scope="module")
def client(served):
    with NannClient(served.server.grpc_url) as c:
        yield c


def metrics_url(served) -> str:
    return f"http://127.0.0.1:{served.server.metrics_port}/metrics"


@pytest.fixture()
def blocking(served):
    """block(raw ids) makes them the served repository's blocked set and waits until the server uses it; the set is
    cleared afterwards, so the other tests see an unfiltered server."""
    def block(ids) -> int:
        version = write_blocked(served.repo, np.asarray(ids, dtype=np.int64))["version"]
        wait_for_version(metrics_url(served), version)
        return version

    yield block
    block([])


def assert_same(got, want):
    assert got.item_ids.tolist() == want.item_ids.tolist()
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5)


def test_each_filter_served_equals_offline(served, users, offline, client):
    vocab = offline.service.eligibility.vocab
    raw_category = dict(zip(vocab.items.tolist(), vocab.categories[vocab.item_category].tolist()))
    params = parse_search(offline.limits, k=K)
    changed = 0
    for h in users:
        plain = client.retrieve(h, k=K)
        allowed = sorted({raw_category[i] for i in plain.item_ids[:3].tolist()})
        cases = [{"exclude": [*plain.item_ids[:10].tolist(), 10**12]}, {"exclude_history": True},
                 {"categories": allowed},
                 {"exclude": plain.item_ids[:5].tolist(), "exclude_history": True, "categories": allowed}]
        for options in cases:
            got = client.retrieve(h, k=K, **options)
            f = parse_filters(offline.limits, **options)
            assert_same(got, offline.retrieve([h], [params], [f])[0])
            excluded = set(f.exclude.tolist()) | (set(np.asarray(h).tolist()) if f.exclude_history else set())
            assert not excluded & set(got.item_ids.tolist())
            # a selective allow-list (a few categories of 40) can end the default walk with fewer than k
            assert len(got) == K or f.categories.size
            assert not f.categories.size or {raw_category[i] for i in got.item_ids.tolist()} <= set(allowed)
            changed += got.item_ids.tolist() != plain.item_ids.tolist()
    assert changed >= 3 * len(users), "the filters hardly changed an answer: the comparison proves little"


def test_asyncio_client_sends_the_filters(served, users, offline):
    import asyncio

    async def run():
        async with AsyncNannClient(served.server.grpc_url) as c:
            return await c.retrieve_many(users[:4], k=K, exclude_history=True)

    params = parse_search(offline.limits, k=K)
    f = parse_filters(offline.limits, exclude_history=True)
    for h, got in zip(users, asyncio.run(run())):
        assert_same(got, offline.retrieve([h], [params], [f])[0])


def test_blocked_set_is_picked_up_without_restart_and_served_equals_offline(served, users, client, blocking,
                                                                            tmp_path, capsys):
    pid = served.server.pid
    plain = [client.retrieve(h, k=K) for h in users]
    rng = np.random.default_rng(0)
    vocab_items = OfflineRetriever(served.run).service.eligibility.vocab.items
    ids = np.unique(np.concatenate([p.item_ids[:10] for p in plain] + [rng.choice(vocab_items, 300), [10**12]]))
    (tmp_path / "blocked.txt").write_text("# out of stock\n" + "\n".join(map(str, ids)) + "\n")
    assert cli_main(["items", "block", "--repo", str(served.repo), "--ids", str(tmp_path / "blocked.txt")]) == 0
    out = capsys.readouterr().out
    assert f"{ids.size:,} item ids" in out and f"{ids.size - 1:,} of them in the index" in out
    version = json.loads((served.repo / "blocked.json").read_text())["version"]
    wait_for_version(metrics_url(served), version)
    offline = OfflineRetriever(served.run, blocked=ids)
    params = parse_search(offline.limits, k=K)
    for h, before in zip(users, plain):
        got = client.retrieve(h, k=K)
        assert_same(got, offline.retrieve([h], [params])[0])
        assert len(got) == K and not np.isin(got.item_ids, ids).any() and got != before
    assert served.server.pid == pid and served.server.running()
    assert cli_main(["query", "--url", served.server.grpc_url, "--info", "--metrics-url", metrics_url(served)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["blocked"] == {"items": int(ids.size - 1), "version": version}
    assert info["limits"]["max_exclude"] == 10_000 and info["limits"]["max_categories"] == 1_000
    blocking([])  # `nann items block --clear` is the same write: nothing blocked, answers as before
    assert [client.retrieve(h, k=K) for h in users] == plain


def test_k_items_come_back_when_the_unfiltered_top_k_is_all_blocked_or_excluded(served, users, offline, client,
                                                                               blocking):
    plain = [client.retrieve(h, k=K) for h in users]
    params = parse_search(offline.limits, k=K)
    for h, p in zip(users, plain):  # per request: its whole unfiltered answer excluded
        got = client.retrieve(h, k=K, exclude=p.item_ids)
        assert len(got) == K and not np.isin(got.item_ids, p.item_ids).any()
        assert_same(got, offline.retrieve([h], [params], [parse_filters(offline.limits, exclude=p.item_ids)])[0])
    ids = np.unique(np.concatenate([p.item_ids for p in plain]))
    blocking(ids)  # per server: every user's unfiltered answer blocked
    blocked_offline = OfflineRetriever(served.run, blocked=ids)
    for h in users:
        got = client.retrieve(h, k=K)
        assert len(got) == K and not np.isin(got.item_ids, ids).any()
        assert_same(got, blocked_offline.retrieve([h], [params], [NO_FILTERS])[0])


def test_nann_query_filter_flags_equal_nann_retrieve(served, users, capsys):
    flags = ["--k", "10", "--exclude", ",".join(map(str, users[1][:5])), "--exclude-history", "--json"]
    history = ",".join(map(str, users[0]))
    assert cli_main(["query", "--url", served.server.grpc_url, "--history", history, *flags]) == 0
    served_answer = json.loads(capsys.readouterr().out)
    assert cli_main(["retrieve", "--run", str(served.run), "--history", history, *flags]) == 0
    assert json.loads(capsys.readouterr().out)["item_ids"] == served_answer["item_ids"]
    assert cli_main(["query", "--url", served.server.grpc_url, "--history", history, "--categories", "987654321"]) == 2
    assert "unknown category ids (1): 987654321" in capsys.readouterr().err
    assert cli_main(["query", "--url", served.server.grpc_url]) == 2
    assert "--history is required (or --info)" in capsys.readouterr().err
