"""Client SDK (`nann_client`) and `nann query` against a real tritonserver serving the stand-in repository
`tests/fake_nann_repo/` (an ensemble `nann` over a deterministic Python-backend model)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nann_client import (AsyncNannClient, InvalidRequestError, NannClient, NannError, OverloadedError,
                         RequestTimeoutError, RetrievalResult, ServerError, ServerInfo, UnavailableError)

ROOT = Path(__file__).resolve().parents[1]
FAKE_REPO = Path(__file__).resolve().parent / "fake_nann_repo"

# must match tests/fake_nann_repo/fake_retrieve/1/model.py
NUM_ITEMS, DEFAULT_K, DEFAULT_EF, DEFAULT_ROUNDS, DEFAULT_FRONTIER, MAX_K, MAX_FRONTIER, MAX_SEEDS = (
    1000, 10, [10, 20], [1, 2], 0, 100, 64, 50)
SLEEP_ID = 9999


def expected(history, k=None, ef=None, rounds=None, frontier=None, seeds=None) -> RetrievalResult:
    k = DEFAULT_K if k is None else int(k)
    frontier = DEFAULT_FRONTIER if frontier is None else int(frontier)
    seeds = 0 if seeds is None else int(seeds)
    ef = DEFAULT_EF if ef is None else list(ef)
    rounds = DEFAULT_ROUNDS if rounds is None else list(rounds)
    known = [int(x) for x in history if 1 <= x <= NUM_ITEMS]  # unknown ids are dropped and counted
    seen = sorted(set(known), reverse=True)
    ids, present, cand = seen[:k], set(seen), NUM_ITEMS
    while len(ids) < k:
        if cand not in present:
            ids.append(cand)
        cand -= 1
    bonus = 0.01 * sum(ef) + 0.001 * sum(rounds) + 0.0001 * frontier + 0.00001 * seeds
    return RetrievalResult(np.asarray(ids, dtype=np.int64),
                           np.asarray([float(k - i) + bonus for i in range(k)], dtype=np.float32),
                           len(history) - len(known))


def make_repo(dst: Path) -> Path:
    """Copy the stand-in repository and point its Python model at this interpreter's environment."""
    repo = dst / "repo"
    shutil.copytree(FAKE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for cfg in repo.glob("*/config.pbtxt"):
        cfg.write_text(cfg.read_text().replace("@EXECUTION_ENV_PATH@", sys.prefix))
    return repo


def start_server(dst: Path, **kwargs):
    from nann.serving.server import TritonServer

    return TritonServer(make_repo(dst), **kwargs).start(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("fake_nann"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(server) -> str:
    return server.grpc_url


@pytest.fixture()
def client(url):
    with NannClient(url, timeout=10.0) as c:
        yield c


def dead_url() -> str:
    from nann.serving.server import free_port

    return f"127.0.0.1:{free_port()}"


def rng_histories(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, NUM_ITEMS + 1, size=rng.integers(1, 30)).tolist() for _ in range(n)]


# ------------------------------------------------------------------ offline (no server)

def test_result_type():
    r = RetrievalResult(np.array([3, 1], dtype=np.int64), np.array([0.5, 0.25], dtype=np.float32))
    assert len(r) == 2 and r.dropped == 0
    assert r.to_dict() == {"item_ids": [3, 1], "scores": [0.5, 0.25], "dropped": 0}
    assert isinstance(r.to_dict()["item_ids"][0], int) and isinstance(r.to_dict()["scores"][0], float)
    assert list(r) == [(3, 0.5), (1, 0.25)]
    assert r == RetrievalResult(np.array([3, 1]), np.array([0.5, 0.25], dtype=np.float32))
    assert r != RetrievalResult(r.item_ids, r.scores, dropped=1)
    with pytest.raises(AttributeError):
        r.item_ids = np.array([1])  # frozen


@pytest.mark.parametrize("history, k, fragment", [
    ([[1, 2], [3, 4]], None, "1-D"),
    ([1.5, 2.0], None, "integer"),
    ("1,2,3", None, "1-D"),
    ([True, False], None, "integer"),
    ([1, 2], 0, "k=0 must be >= 1"),
    ([1, 2], -3, "k=-3 must be >= 1"),
    ([1, 2], 2.0, "positive integer"),
])
def test_client_side_validation_never_sends(history, k, fragment):
    # a dead URL: had the request been sent, the error would be UnavailableError
    with NannClient(dead_url(), retries=0, timeout=2) as c:
        with pytest.raises(InvalidRequestError) as ei:
            c.retrieve(history, k)
    assert fragment in str(ei.value)
    assert ei.value.status is None


def test_client_side_validation_of_ef_rounds_and_many():
    with NannClient(dead_url(), retries=0, timeout=2) as c:
        with pytest.raises(InvalidRequestError, match="ef"):
            c.retrieve([1], ef=[0, 3])
        with pytest.raises(InvalidRequestError, match="rounds"):
            c.retrieve([1], rounds=[])
        with pytest.raises(InvalidRequestError, match=r"histories\[1\]: history must hold integer item ids"):
            c.retrieve_many([[1], [1.5]])
        assert c.retrieve_many([]) == []
        with pytest.raises(TypeError, match="unexpected search option sedes"):
            c.retrieve([1], sedes=3)


@pytest.mark.parametrize("name, value, fragment", [
    ("frontier", -1, "frontier=-1 must be >= 0 (0 = unlimited)"),
    ("frontier", 2.0, "frontier must be a non-negative integer"),
    ("frontier", True, "frontier must be a non-negative integer"),
    ("frontier", [4], "frontier must be a non-negative integer"),
    ("frontier", 2**31, "is too large"),
    ("seeds", -2, "seeds=-2 must be >= 0 (0 = none)"),
    ("seeds", 1.0, "seeds must be a non-negative integer (0 = none)"),
])
def test_client_side_validation_of_single_value_options(name, value, fragment):
    with NannClient(dead_url(), retries=0, timeout=2) as c:
        with pytest.raises(InvalidRequestError) as ei:
            c.retrieve([1], **{name: value})
        assert fragment in str(ei.value)
        with pytest.raises(InvalidRequestError, match=rf"histories\[0\]: {name}"):
            c.retrieve_many([[1]], **{name: value})


def test_options_sent_only_when_given():
    from nann_client import _common

    def names(**kw):
        return [i.name() for i in _common.build_request([1, 2], **kw)]

    assert names() == ["history"] and names(k=5, ef=[1], rounds=[1]) == ["history", "k", "ef", "rounds"]
    for name in ("frontier", "seeds"):  # 0 (unlimited / none) is a value, sent as such
        (tensor,) = [i for i in _common.build_request([1, 2], **{name: 0}) if i.name() == name]
        assert tensor.datatype() == "INT32" and tensor.shape() == [1, 1]
    empty = _common.build_request([])[0]  # a new user: sent, the server answers cold-start
    assert empty.datatype() == "INT64" and empty.shape() == [1, 0]


def test_the_sdk_options_are_the_served_inputs():
    """The SDK keeps its own table of the optional inputs (it installs without the server package): it names, types
    and shapes them as the server's REQUEST_INPUTS, takes the server's default search, and takes a search tunable's
    least served value but refuses the one below."""
    from nann_client import _common

    from nann.engine.params import TUNABLES
    from nann.serving.requests import REQUEST_INPUTS, ServingLimits

    assert [(o.name, o.datatype, o.dims) for o in _common.OPTIONS] == [(i.name, i.dtype, i.dims) for i in REQUEST_INPUTS]
    options, limits = {o.name: o for o in _common.OPTIONS}, ServingLimits()
    for t in TUNABLES:
        option, default = options[t.name], limits.default(t.name)
        assert option.check(t.name, default).shape == ((1, len(default)) if t.per_layer else (1, 1))
        option.check(t.name, [t.request_low] if t.per_layer else t.request_low)
        with pytest.raises(InvalidRequestError):
            option.check(t.name, [t.request_low - 1] if t.per_layer else t.request_low - 1)


def test_filters_are_built_as_the_server_expects_and_checked_locally():
    from nann_client import _common

    inputs = {i.name(): i for i in _common.build_request([1, 2], exclude=np.array([5, 6], np.uint32),
                                                         exclude_history=True, categories=[])}
    assert (inputs["exclude"].datatype(), inputs["exclude"].shape()) == ("INT64", [1, 2])
    assert (inputs["exclude_history"].datatype(), inputs["exclude_history"].shape()) == ("BOOL", [1, 1])
    assert (inputs["categories"].datatype(), inputs["categories"].shape()) == ("INT64", [1, 0])
    assert [i.name() for i in _common.build_request([1], exclude=None, exclude_history=None)] == ["history"]
    for options, fragment in (({"exclude": "1,2"}, "exclude must be a 1-D sequence of integer item ids"),
                              ({"exclude": [1.5]}, "exclude must hold integer item ids"),
                              ({"categories": [[1]]}, "categories must be a 1-D sequence of integer category ids"),
                              ({"exclude_history": 1}, "exclude_history must be True or False, got 1")):
        with pytest.raises(InvalidRequestError, match=re.escape(fragment)):
            _common.build_request([1], **options)


def test_dropped_is_zero_from_a_server_without_the_output():
    from nann_client import _common

    class OldServerResult:
        def as_numpy(self, name):
            return {"item_ids": np.array([[7, 3]]), "scores": np.array([[0.5, 0.25]], np.float32)}.get(name)

    assert _common.parse_result(OldServerResult()) == RetrievalResult(np.array([7, 3]), np.array([0.5, 0.25], np.float32))


def test_error_translation():
    from tritonclient.utils import InferenceServerException

    from nann_client import _common

    def tr(status, msg, **kw):
        return _common.translate(InferenceServerException(msg, status=status), url="h:1", **kw)

    e = tr("StatusCode.INVALID_ARGUMENT", "in ensemble 'nann', unknown item ids: 1, 2")
    assert type(e) is InvalidRequestError and str(e) == "unknown item ids: 1, 2"
    assert e.server_message == "in ensemble 'nann', unknown item ids: 1, 2"
    e = tr("StatusCode.UNAVAILABLE", "failed to connect to all addresses;\n Connection refused", attempts=4)
    assert type(e) is UnavailableError and e.attempts == 4 and "h:1" in str(e) and "\n" not in str(e)
    assert _common.is_transient(InferenceServerException("x", status="StatusCode.UNAVAILABLE"))
    assert not _common.is_transient(InferenceServerException("x", status="StatusCode.INVALID_ARGUMENT"))
    assert not _common.is_transient(InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED"))
    for refusal in ("in ensemble 'nann', Request timeout expired",
                    "in ensemble 'nann', [request id: <id_unknown>] Exceeds maximum queue size"):
        e = tr("StatusCode.UNAVAILABLE", refusal)  # the bounded queue of a dynamic batcher: named, not retried
        assert type(e) is OverloadedError and isinstance(e, UnavailableError) and e.status == "UNAVAILABLE"
        assert "h:1 is overloaded" in str(e) and refusal.split(", ", 1)[1] in str(e)
        assert not _common.is_transient(InferenceServerException(refusal, status="StatusCode.UNAVAILABLE"))
    e = tr("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", timeout=0.5)
    assert type(e) is RequestTimeoutError and "0.5 s" in str(e)
    e = tr("StatusCode.INTERNAL", "in ensemble 'nann', boom")
    assert type(e) is ServerError and str(e) == "boom" and e.status == "INTERNAL"
    e = _common.translate(RuntimeError("odd"), url="h:1")
    assert type(e) is NannError and "odd" in str(e)
    assert all(issubclass(t, NannError) for t in (InvalidRequestError, UnavailableError, RequestTimeoutError,
                                                  ServerError))


# ------------------------------------------------------------------ results

@pytest.mark.parametrize("history, k, ef, rounds", [
    ([5, 3, 5, 7], None, None, None),
    ([5, 3, 5, 7], 3, None, None),
    ([42], 20, [50, 100, 200], [1, 1, 3]),
    (np.array([1000, 1, 500], dtype=np.int32), 5, [7], None),
    (list(range(1, 201)), MAX_K, None, [5]),
])
def test_sync_retrieve(client, history, k, ef, rounds):
    got = client.retrieve(history, k, ef=ef, rounds=rounds)
    want = expected(history, k, ef, rounds)
    assert got.item_ids.dtype == np.int64 and got.scores.dtype == np.float32
    assert got == want
    assert len(got) == (k or DEFAULT_K)
    assert np.all(np.diff(got.scores) < 0)  # best first


def test_retrieve_with_frontier(client, url):
    assert client.retrieve([5, 3], 4, frontier=7) == expected([5, 3], 4, frontier=7)
    assert client.retrieve([5, 3], frontier=0) == expected([5, 3], frontier=0)
    assert client.retrieve([5, 3], frontier=MAX_FRONTIER, ef=[5, 6]) == expected([5, 3], None, [5, 6], None,
                                                                                 MAX_FRONTIER)
    hs = rng_histories(6, seed=4)
    assert client.retrieve_many(hs, k=3, frontier=2) == [expected(h, 3, frontier=2) for h in hs]

    async def go():
        async with AsyncNannClient(url) as c:
            return await c.retrieve([42], 20, frontier=9), await c.retrieve_many(hs, frontier=1)

    one, many = asyncio.run(go())
    assert one == expected([42], 20, frontier=9)
    assert many == [expected(h, frontier=1) for h in hs]


def test_seeds_dropped_ids_and_new_users(client, url):
    """seeds reaches the server; unknown ids are dropped and counted; an empty history is served (cold start)."""
    assert client.retrieve([5, 3], 4, seeds=7) == expected([5, 3], 4, seeds=7)
    mixed = [1, 2000, 3, 3000, 2000]
    got = client.retrieve(mixed)
    assert got == expected(mixed) and got.dropped == 3 and got == RetrievalResult(
        expected([1, 3]).item_ids, expected([1, 3]).scores, 3)
    assert client.retrieve([]) == expected([]) and client.retrieve([]).dropped == 0
    assert client.retrieve([4242, 5000]) == expected([4242, 5000]) == RetrievalResult(
        expected([]).item_ids, expected([]).scores, 2)
    hs = [[], [5, 3], [1, 4242]]
    assert client.retrieve_many(hs, seeds=2) == [expected(h, seeds=2) for h in hs]

    async def go():
        async with AsyncNannClient(url) as c:
            return await c.retrieve(mixed, seeds=1), await c.retrieve_many(hs, k=3, seeds=4)

    one, many = asyncio.run(go())
    assert one == expected(mixed, seeds=1) and many == [expected(h, 3, seeds=4) for h in hs]


def test_async_retrieve(url):
    async def go():
        async with AsyncNannClient(url) as c:
            a = await c.retrieve([5, 3, 5, 7])
            b = await c.retrieve([42], 20, ef=[50, 100], rounds=[1, 3], timeout=5)
            return a, b

    a, b = asyncio.run(go())
    assert a == expected([5, 3, 5, 7])
    assert b == expected([42], 20, [50, 100], [1, 3])


def test_retrieve_many_sync_in_order(client):
    hs = rng_histories(100, seed=1)
    many = client.retrieve_many(hs, k=7, max_concurrency=16)
    single = [client.retrieve(h, 7) for h in hs]
    assert len(many) == 100
    assert many == single
    assert many == [expected(h, 7) for h in hs]


def test_retrieve_many_async_in_order(url, client):
    hs = rng_histories(100, seed=2)

    async def go():
        async with AsyncNannClient(url) as c:
            return await c.retrieve_many(hs, ef=[5, 6], max_concurrency=32)

    many = asyncio.run(go())
    assert many == [client.retrieve(h, ef=[5, 6]) for h in hs]
    assert many == [expected(h, None, [5, 6]) for h in hs]


# ------------------------------------------------------------------ errors from the server

@pytest.mark.parametrize("history, k, kwargs, message", [
    ([1, 2], MAX_K + 1, {}, f"k={MAX_K + 1} is outside [1, {MAX_K}]"),
    (list(range(1, 202)), None, {}, "history has 201 items, more than max_history=200"),
    ([1], None, {"ef": [10_000]}, "ef=[10000] is outside [1, 500]"),
    ([1], None, {"seeds": MAX_SEEDS + 1}, f"seeds={MAX_SEEDS + 1} is outside [0, {MAX_SEEDS}] (0 = none)"),
    ([1], None, {"frontier": MAX_FRONTIER + 1},
     f"frontier={MAX_FRONTIER + 1} is outside [0, {MAX_FRONTIER}] (0 = unlimited)"),
])
def test_server_side_invalid(client, url, history, k, kwargs, message):
    t0 = time.monotonic()
    with pytest.raises(InvalidRequestError) as ei:
        client.retrieve(history, k, **kwargs)
    assert str(ei.value) == message
    assert ei.value.status == "INVALID_ARGUMENT"
    assert message in ei.value.server_message
    assert ei.value.__cause__ is not None and not isinstance(ei.value.__cause__, NannError)
    assert time.monotonic() - t0 < 2  # never retried

    async def go():
        async with AsyncNannClient(url) as c:
            await c.retrieve(history, k, **kwargs)

    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        asyncio.run(go())


def test_retrieve_many_raises_first_failure_others_unaffected(client, url):
    hs = rng_histories(20, seed=3)
    hs[7] = list(range(1, 202))
    with pytest.raises(InvalidRequestError, match="history has 201 items"):
        client.retrieve_many(hs)

    async def go():
        async with AsyncNannClient(url) as c:
            return await c.retrieve_many(hs)

    with pytest.raises(InvalidRequestError, match="history has 201 items"):
        asyncio.run(go())
    # a bad request batched with good ones does not spoil them
    assert client.retrieve_many(hs[:7] + hs[8:]) == [expected(h) for h in hs[:7] + hs[8:]]


def test_deadline_gives_request_timeout(client, url):
    slow = [SLEEP_ID, 1500, 1, 2]
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError) as ei:
        client.retrieve(slow, timeout=0.4)
    assert time.monotonic() - t0 < 1.2
    assert url in str(ei.value) and ei.value.status == "DEADLINE_EXCEEDED"
    assert isinstance(ei.value, TimeoutError)

    async def go():
        async with AsyncNannClient(url, timeout=0.4) as c:
            await c.retrieve(slow)

    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        asyncio.run(go())
    assert time.monotonic() - t0 < 1.2
    # a generous timeout lets it through
    assert client.retrieve([SLEEP_ID, 200, 1, 2], timeout=5) == expected([1, 2])


# ------------------------------------------------------------------ info / ready

def test_info_and_ready(client, url):
    assert client.ready()
    info = client.info()
    assert isinstance(info, ServerInfo)
    assert info.model_name == "nann" and info.model_version == "1"
    assert info.num_items == NUM_ITEMS and info.emb_dim == 8 and info.scorer_backend == "fake"
    assert info.defaults == {"k": 10, "ef": [10, 20], "rounds": [1, 2], "frontier": DEFAULT_FRONTIER, "seeds": 0}
    assert info.limits["max_frontier"] == MAX_FRONTIER and info.limits["max_seeds"] == MAX_SEEDS
    assert info.raw["unknown_ids"] == "skip"
    assert info.limits["max_k"] == MAX_K and info.max_k == MAX_K and info.default_k == 10
    assert info.max_history == 200 and info.max_batch_size == 64

    async def go():
        async with AsyncNannClient(url) as c:
            return await c.ready(), await c.info()

    ready, ainfo = asyncio.run(go())
    assert ready and ainfo == info


def test_unknown_model(url):
    with NannClient(url, model_name="no_such_model", retries=0) as c:
        assert c.ready() is False
        with pytest.raises(NannError) as ei:
            c.info()
        assert not isinstance(ei.value, (InvalidRequestError, UnavailableError))
        with pytest.raises(ServerError):
            c.retrieve([1])


def test_ready_false_when_down():
    with NannClient(dead_url(), timeout=1) as c:
        assert c.ready() is False

    async def go():
        async with AsyncNannClient(dead_url(), timeout=1) as c:
            return await c.ready()

    assert asyncio.run(go()) is False


# ------------------------------------------------------------------ a server that stops (and comes back)

def test_stopped_server_unavailable_with_retries_then_recovers(tmp_path):
    srv = start_server(tmp_path)
    addr = srv.grpc_url
    retries, backoff, timeout = 3, 0.2, 5.0
    with NannClient(addr, retries=retries, backoff=backoff, timeout=timeout) as c:
        assert c.retrieve([1, 2]) == expected([1, 2])
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(UnavailableError) as ei:
            c.retrieve([1, 2])
        elapsed = time.monotonic() - t0
        assert ei.value.attempts == retries + 1
        assert addr in str(ei.value) and ei.value.url == addr
        assert backoff * (1 + 2 + 4) <= elapsed < timeout  # the retries happened, within the budget
        assert ei.value.__cause__ is not None
        assert c.ready() is False

        async def go():
            async with AsyncNannClient(addr, retries=2, backoff=0.1, timeout=timeout) as ac:
                await ac.retrieve([1, 2])

        with pytest.raises(UnavailableError) as ei:
            asyncio.run(go())
        assert ei.value.attempts == 3

        # a timeout shorter than the backoff schedule bounds the call
        t0 = time.monotonic()
        with pytest.raises(UnavailableError):
            c.retrieve([1, 2], timeout=0.5)
        assert time.monotonic() - t0 < 0.5

        # the server comes back on the same port while the client is retrying: the call succeeds
        restart = threading.Thread(target=srv.start, kwargs={"timeout": 60})
        restart.start()
        try:
            with NannClient(addr, retries=8, backoff=0.25, timeout=30) as c2:
                assert c2.retrieve([3, 4]) == expected([3, 4])
        finally:
            restart.join()
            srv.stop()


# ------------------------------------------------------------------ nann query

def run_cli(argv, capsys):
    from nann_cli.main import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_query_table(url, capsys):
    code, out, err = run_cli(["query", "--url", url, "--history", "5,3,5,7", "--k", "3"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "item_id", "score"]
    want = expected([5, 3, 5, 7], 3)
    assert [l.split()[:2] for l in lines[1:]] == [[str(i + 1), str(x)] for i, x in enumerate(want.item_ids)]
    assert [float(l.split()[2]) for l in lines[1:]] == pytest.approx(want.scores.tolist(), abs=1e-5)


def test_query_json(url, capsys):
    code, out, err = run_cli(["query", "--url", url, "--history", " 5, 3,5,7 ", "--json"], capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert list(obj) == ["item_ids", "scores", "dropped"]
    assert obj == expected([5, 3, 5, 7]).to_dict()
    assert out.strip() == json.dumps(expected([5, 3, 5, 7]).to_dict())


def test_query_search_flags_dropped_ids_and_new_users(url, capsys):
    argv = ["query", "--url", url, "--k", "3", "--ef", "5,6", "--rounds", "2,3", "--frontier", "4", "--seeds", "9"]
    code, out, err = run_cli(argv + ["--history", "5,3,4242", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == expected([5, 3, 4242], 3, [5, 6], [2, 3], 4, 9).to_dict()
    assert json.loads(out)["dropped"] == 1
    code, out, err = run_cli(argv + ["--history", "5,3,4242,4343"], capsys)
    assert code == 0 and "note: 2 unknown item ids dropped from the history" in err
    assert [line.split()[1] for line in out.strip().splitlines()[1:]] == ["5", "3", "1000"]
    code, out, err = run_cli(["query", "--url", url, "--history", ",", "--json"], capsys)  # a new user
    assert code == 0 and json.loads(out) == expected([]).to_dict()


@pytest.mark.parametrize("argv, fragment", [
    (["--history", "1,2"], "unavailable"),
    (["--history", "1,x"], "'x' is not an integer"),
    (["--history", "1", "--seeds", "-1"], "seeds=-1 must be >= 0"),
])
def test_query_errors_exit_2_one_line(argv, fragment, capsys):
    t0 = time.monotonic()
    code, out, err = run_cli(["query", "--url", dead_url(), "--timeout", "3", *argv], capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("nann query: error: ")
    assert fragment in err
    assert time.monotonic() - t0 < 4


def test_query_invalid_and_timeout(url, capsys):
    code, out, err = run_cli(["query", "--url", url, "--history", "1,5000", "--k", str(MAX_K + 1)], capsys)
    assert code == 2 and f"k={MAX_K + 1} is outside" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["query", "--url", url, "--history", f"{SLEEP_ID},1500,1", "--timeout", "0.3"],
                             capsys)
    assert code == 2 and "timeout" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ packaging

@pytest.mark.skipif(os.environ.get("NANN_CHECK_CLIENT_INSTALL") != "1",
                    reason="installs the client into a fresh venv (network, ~1 min): set NANN_CHECK_CLIENT_INSTALL=1")
def test_client_installs_without_torch():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_client_install.sh")], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK"
