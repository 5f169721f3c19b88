"""Reliability and security of the served system against a real tritonserver (the shared `served` fixture,
plus one server of its own for the scorer batch bound and strict unknown-id mode): bad input of every kind is
refused with INVALID_ARG naming the problem and never disturbs other requests or the server, while unknown item
ids and new users are served; limits; loopback binding; model control off; no unpickling; a short soak.
"""
from __future__ import annotations

import ipaddress
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from nann.data.prepared import PreparedData
from nann.engine.grid import CandidateGrid
from nann.run_dir import GraphDir, RunDir
from nann.serving.export import state_specs
from nann.serving.requests import ServingLimits, parse_search
from nann.serving.retrieval import OfflineRetriever
from pipeline_fixtures import send_together

pytestmark = pytest.mark.serving

MODELS = ("nann", "retrieve")  # the shared export's: its encoder and scorer run inside `retrieve`
ROOT = Path(__file__).resolve().parents[1]
BAD_INPUTS_TRIED: list[str] = []


def tensor(name, arr, dtype):
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def request(history, k=None, ef=None, rounds=None, seeds=None, patience=None, frontier=None, history_dtype=np.int64,
            history_type="INT64", batch=True):
    h = np.asarray(history, dtype=history_dtype)
    inputs = [tensor("history", h.reshape(1, -1) if batch and h.ndim == 1 else h, history_type)]
    for name, value in (("k", k), ("ef", ef), ("rounds", rounds), ("seeds", seeds), ("patience", patience),
                        ("frontier", frontier)):
        if value is not None:
            inputs.append(tensor(name, np.asarray(value, dtype=np.int32).reshape(1, -1), "INT32"))
    return inputs


def infer(client, inputs, model="nann"):
    result = client.infer(model, inputs, client_timeout=60)
    return result.as_numpy("item_ids")[0], result.as_numpy("scores")[0]


def dropped(client, inputs) -> int:
    return int(client.infer("nann", inputs, client_timeout=60).as_numpy("dropped_ids")[0, 0])


def assert_invalid(client, inputs, *patterns, model="nann"):
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, client_timeout=60)
    assert "INVALID_ARG" in str(err.value.status()), err.value
    for pattern in patterns:
        assert re.search(pattern, err.value.message()), err.value.message()
    return err.value.message()


@pytest.fixture(scope="module")
def users(test_histories):
    return test_histories[:24]


@pytest.fixture(scope="module")
def client(served):
    with grpcclient.InferenceServerClient(served.server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def offline(served):
    return OfflineRetriever(served.run)


def check_good_request(client, users, offline):
    ids, scores = infer(client, request(users[3], k=7))
    want = offline.retrieve([users[3]], [parse_search(offline.limits, k=7)])[0]
    assert ids.tolist() == want.item_ids.tolist() and np.isfinite(scores).all()


# Not errors: what a production recommender gets all day (unknown ids are dropped and counted, a new user gets the
# cold-start answer). name: (history given the users, ids dropped)
ODD = {
    "empty history": (lambda u: [], 0),
    "unknown id": (lambda u: list(u[0][:3]) + [123456789012], 1),
    "negative id": (lambda u: [-5, *u[0][:2]], 1),
    "int64 max id": (lambda u: [2**63 - 1], 1),
    "int64 min id": (lambda u: [-2**63, *u[1][:4]], 1),
    "20 unknown ids": (lambda u: np.arange(10**12, 10**12 + 20), 20),
    "1000 ids, 999 unknown": (lambda u: [*np.arange(10**12, 10**12 + 999), u[2][0]], 999),
}

BAD = {  # name: (request builder given the users, regexes the message must match)
    "1000+1 ids": (lambda u: request(np.resize(u[0], 1001)), [r"1001 item ids, more than the maximum 1000"]),
    "100000 ids": (lambda u: request(np.resize(u[0], 100_000)), [r"more than the maximum 1000"]),
    "1000+1 unknown ids": (lambda u: request(np.arange(10**12, 10**12 + 1001)), [r"more than the maximum 1000"]),
    "FP32 history": (lambda u: request(u[0], history_dtype=np.float32, history_type="FP32"),
                     [r"data-type is 'FP32', but model 'nann' expects 'INT64'"]),
    "NaN FP32 history": (lambda u: request([np.nan, np.inf], history_dtype=np.float32, history_type="FP32"),
                         [r"expects 'INT64'"]),
    "INT32 history": (lambda u: request(u[0], history_dtype=np.int32, history_type="INT32"), [r"expects 'INT64'"]),
    "1-D history without batch axis": (lambda u: request(u[0], batch=False), [r"unexpected shape for input 'history'"]),
    "2 rows in one request": (lambda u: request(np.stack([u[0][:5], u[1][:5]])),
                              [r"history must have shape \[n\] or \[1, n\], got \[2, 5\]"]),
    "k=0": (lambda u: request(u[0], k=0), [r"k=0 is outside \[1, 1000\]"]),
    "k=-3": (lambda u: request(u[0], k=-3), [r"k=-3 is outside"]),
    "k=1001": (lambda u: request(u[0], k=1001), [r"k=1001 is outside \[1, 1000\]"]),
    "k int32 max": (lambda u: request(u[0], k=2**31 - 1), [r"is outside \[1, 1000\]"]),
    "k as INT64": (lambda u: request(u[0])[:1] + [tensor("k", np.array([[5]], np.int64), "INT64")],
                   [r"input 'k' data-type is 'INT64'"]),
    "two k values": (lambda u: request(u[0])[:1] + [tensor("k", np.array([[5, 6]], np.int32), "INT32")],
                     [r"unexpected shape for input 'k'"]),
    "ef without rounds": (lambda u: request(u[0], ef=[10, 10]),
                          [r"ef and rounds need one value per layer each, got 2 and 4 \(send both"]),
    "ef too many": (lambda u: request(u[0], ef=[10] * 9),
                    [r"ef needs 1 to 8 values \(one per layer, top first\), got 9"]),
    "ef=0": (lambda u: request(u[0], ef=[0, 10, 10, 10]), [r"ef=\[0, 10, 10, 10\] is outside \[1, 4096\]"]),
    "ef negative": (lambda u: request(u[0], ef=[10, -1, 10, 10]), [r"is outside \[1, 4096\]"]),
    "ef=4097": (lambda u: request(u[0], ef=[10, 10, 10, 4097]), [r"is outside \[1, 4096\]"]),
    "rounds=0": (lambda u: request(u[0], rounds=[1, 0, 1, 1]), [r"rounds=\[1, 0, 1, 1\] is outside \[1, 64\]"]),
    "rounds=65": (lambda u: request(u[0], rounds=[1, 1, 1, 65]), [r"is outside \[1, 64\]"]),
    "rounds wrong count": (lambda u: request(u[0], rounds=[1]), [r"got 4 and 1"]),
    "seeds=-1": (lambda u: request(u[0], seeds=-1), [r"seeds=-1 is outside \[0, 50\] \(0 = none\)"]),
    "seeds=51": (lambda u: request(u[0], seeds=51), [r"seeds=51 is outside \[0, 50\]"]),
    "patience=4097": (lambda u: request(u[0], patience=4097), [r"patience=4097 is outside \[0, 4096\] \(0 = off\)"]),
    "two seeds values": (lambda u: request(u[0])[:1] + [tensor("seeds", np.array([[5, 6]], np.int32), "INT32")],
                         [r"unexpected shape for input 'seeds'"]),
    "seeds as INT64": (lambda u: request(u[0])[:1] + [tensor("seeds", np.array([[5]], np.int64), "INT64")],
                       [r"input 'seeds' data-type is 'INT64'"]),
    "exclude 10000+1 ids": (lambda u: request(u[0]) + [tensor("exclude", np.arange(10_001).reshape(1, -1), "INT64")],
                            [r"exclude has 10001 item ids, more than the maximum 10000"]),
    "exclude as INT32": (lambda u: request(u[0]) + [tensor("exclude", np.array([[5]], np.int32), "INT32")],
                         [r"input 'exclude' data-type is 'INT32', but model 'nann' expects 'INT64'"]),
    "exclude 2 rows": (lambda u: request(u[0]) + [tensor("exclude", np.ones((2, 3), np.int64), "INT64")],
                       [r"batch size does not match other inputs for 'nann'"]),
    "exclude_history as INT32": (
        lambda u: request(u[0]) + [tensor("exclude_history", np.array([[1]], np.int32), "INT32")],
        [r"input 'exclude_history' data-type is 'INT32', but model 'nann' expects 'BOOL'"]),
    "two exclude_history values": (
        lambda u: request(u[0]) + [tensor("exclude_history", np.array([[True, False]]), "BOOL")],
        [r"unexpected shape for input 'exclude_history'"]),
    "categories 1000+1 ids": (lambda u: request(u[0]) + [tensor("categories", np.arange(1001).reshape(1, -1), "INT64")],
                              [r"categories has 1001 category ids, more than the maximum 1000"]),
    "unknown category": (lambda u: request(u[0]) + [tensor("categories", np.array([[987654321, -1]]), "INT64")],
                         [r"unknown category ids \(2\): 987654321, -1"]),
    "categories as FP32": (lambda u: request(u[0]) + [tensor("categories", np.array([[1.0]], np.float32), "FP32")],
                           [r"input 'categories' data-type is 'FP32', but model 'nann' expects 'INT64'"]),
    "unknown input": (lambda u: request(u[0]) + [tensor("bogus", np.array([[1]], np.int32), "INT32")],
                      [r"unexpected inference input 'bogus'"]),
    "internal tensor via the ensemble": (
        lambda u: request(u[0]) + [tensor("user_bias", np.full((1, 128), np.nan, np.float32), "FP32")],
        [r"unexpected inference input 'user_bias'"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_refused_with_invalid_arg_and_server_keeps_serving(served, client, users, offline, name):
    build, patterns = BAD[name]
    assert_invalid(client, build(users), *patterns)
    BAD_INPUTS_TRIED.append(name)
    check_good_request(client, users, offline)


@pytest.mark.parametrize("name", list(ODD))
def test_unknown_ids_and_new_users_are_served_not_refused(served, client, users, offline, name):
    history, n_dropped = ODD[name][0](users), ODD[name][1]
    ids, scores = infer(client, request(history, k=9))
    assert dropped(client, request(history, k=9)) == n_dropped
    want = offline.retrieve([history], [parse_search(offline.limits, k=9)])[0]
    assert len(ids) == 9 and ids.tolist() == want.item_ids.tolist() and want.dropped == n_dropped
    assert np.isfinite(scores).all()
    BAD_INPUTS_TRIED.append(f"served {name}")
    check_good_request(client, users, offline)


def test_history_between_max_seq_and_max_history_keeps_most_recent(client, users, offline):
    history = np.resize(np.concatenate(users[:6]), 1000)
    ids, _ = infer(client, request(history, k=10))
    want = offline.retrieve([history[-offline.limits.max_seq:]], [parse_search(offline.limits, k=10)])[0]
    assert ids.tolist() == want.item_ids.tolist()


def test_bad_requests_in_a_shared_batch_do_not_affect_the_good_ones(served, users, offline):
    """Good, odd (unknown ids, new users) and bad requests sent at once (they share execute() calls): each gets
    its own answer."""
    bad_names = ["1000+1 ids", "seeds=51", "k=0", "ef without rounds", "rounds=65", "2 rows in one request",
                 "exclude 10000+1 ids", "unknown category"]
    odd_names = ["empty history", "unknown id", "20 unknown ids"]
    jobs = [("good", i) for i in range(12)] + [("bad", n) for n in bad_names] + [("odd", n) for n in odd_names]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]
    histories = {("good", i): users[i] for i in range(12)} | {("odd", n): ODD[n][0](users) for n in odd_names}
    inputs = [BAD[what][0](users) if kind == "bad" else request(histories[(kind, what)], k=20) for kind, what in jobs]
    results, executions = send_together(served.server.grpc_url, [lambda c, x=x: infer(c, x) for x in inputs],
                                        "retrieve")
    params = parse_search(offline.limits, k=20)
    for (kind, what), got in zip(jobs, results):
        if kind != "bad":
            assert not isinstance(got, Exception), got
            assert got[0].tolist() == offline.retrieve([histories[(kind, what)]], [params])[0].item_ids.tolist()
        else:
            assert isinstance(got, InferenceServerException) and "INVALID_ARG" in str(got.status())
            assert re.search(BAD[what][1][0], got.message()), got.message()
            BAD_INPUTS_TRIED.append(f"batched {what}")
    assert executions < len(jobs), "the requests were never batched together"


# ---------------------------------------------------------------- the internal models, called directly
# Triton serves every model of the repository on the same port (no per-model access control), so the internal
# models' inputs (the `scorer`'s state: the only float inputs) are reachable from outside: they must refuse what would
# corrupt others.

def state_inputs(run, rows=1, seq=50, fill=0.1, nan_in=None):
    """The user-state inputs of the run's model (`state_specs`: the names and shapes its encoder outputs)."""
    out = {}
    for spec in state_specs(run):
        name, shape = spec["name"], (rows, *[seq if d < 0 else d for d in spec["dims"]])
        arr = np.full(shape, fill, np.float32)
        if name == nan_in:
            arr.flat[0] = np.nan
        out[name] = arr
    return out


def test_scorer_called_directly_refuses_nan_state_and_bad_ids(strict_tiny_grid, tiny_run):
    client, run = strict_tiny_grid, tiny_run.run  # an export with the `scorer` model (behind BLS)

    def scorer_inputs(state, cand_ids, owner):
        return [tensor(n, v, "FP32") for n, v in state.items()] + [
            tensor("cand_ids", np.asarray(cand_ids, np.int64), "INT64"), tensor("owner", np.asarray(owner, np.int64), "INT64")]

    good = client.infer("scorer", scorer_inputs(state_inputs(run), [1, 2, 3], [0, 0, 0])).as_numpy("scores")
    assert good.shape == (3,) and np.isfinite(good).all()
    for name in ("keys", "user_bias"):
        assert_invalid(client, scorer_inputs(state_inputs(run, nan_in=name), [1, 2], [0, 0]), rf"state input {name} holds NaN",
                       model="scorer")
    assert_invalid(client, scorer_inputs(state_inputs(run), [10**9], [0]), r"cand_ids outside", model="scorer")
    assert_invalid(client, scorer_inputs(state_inputs(run), [1], [5]), r"owner outside", model="scorer")
    assert_invalid(client, scorer_inputs(state_inputs(run), [1, 2], [0]), r"differ in shape", model="scorer")
    BAD_INPUTS_TRIED.extend(["scorer NaN keys", "scorer NaN user_bias", "scorer bad id", "scorer bad owner",
                             "scorer shape mismatch"])


def test_retrieve_called_directly_answers_each_request_alone_and_refuses_what_nann_refuses(served, client, users,
                                                                                             offline):
    """`retrieve` takes the ensemble's inputs: called directly, requests sharing its execute() each get the answer of
    their own history alone (each user encoded alone), and it refuses what `nann` refuses (several histories in one
    request, a history that is not INT64)."""
    histories = [users[i] for i in range(8)] + [[], [123456789012, *users[8][:3]]]
    results, executions = send_together(served.server.grpc_url, [
        lambda c, h=h: c.infer("retrieve", request(h, k=10), client_timeout=60) for h in histories], "retrieve")
    params = parse_search(offline.limits, k=10)
    for history, result in zip(histories, results):
        want = offline.retrieve([history], [params])[0]
        assert result.as_numpy("item_ids")[0].tolist() == want.item_ids.tolist()
        assert result.as_numpy("dropped_ids").tolist() == [[want.dropped]]
    assert executions < len(histories), "never batched together"
    assert_invalid(client, request(np.stack([users[0][:5], users[1][:5]])), r"got \[2, 5\]", model="retrieve")
    assert_invalid(client, request(users[0], history_dtype=np.int32, history_type="INT32"), r"expects 'INT64'",
                   model="retrieve")
    BAD_INPUTS_TRIED.extend(["retrieve 2 rows", "retrieve INT32 history"])


# ---------------------------------------------------------------- limits

def test_limits_are_published_in_nann_info(served, client):
    config = client.get_model_config("nann", as_json=True)["config"]
    info = json.loads(config["parameters"]["nann_info"]["string_value"])
    # the catalogue's defaults: below 100k items the walk `nann graph` calibrated on the validation users
    graph = RunDir(served.run).graph
    calibrated = graph.read_meta()[GraphDir.CALIBRATION]
    walk = [*calibrated["descent_ef"], calibrated["ef"]]
    assert list(graph.search_defaults().ef) == walk and graph.search_defaults().frontier == calibrated["frontier"]
    published = ServingLimits.for_catalogue(graph.search_defaults(), max_seq=info["max_seq"]).published()
    assert info["limits"] == published["limits"] and info["defaults"] == published["defaults"]
    assert (info["defaults"]["ef"], info["defaults"]["frontier"]) == (walk, calibrated["frontier"])
    assert set(info["defaults"]) == {"k", "ef", "rounds", "frontier", "seeds", "patience"}
    assert info["limits"]["max_seeds"] == 50
    assert info["limits"]["max_exclude"] == 10_000 and info["limits"]["max_categories"] == 1_000
    assert info["unknown_ids"] == "skip"
    assert info["max_seq"] == 50 and info["grid"] == {"sizes": None, "max_size": CandidateGrid().max_size}  # CPU: unpadded
    assert int(config["max_batch_size"]) == 64


TINY_GRID = CandidateGrid([1, 16, 32, 64], 64)


@pytest.fixture(scope="module")
def strict_tiny_grid(tiny_run, tmp_path_factory):
    """A second export, served: its scorer behind BLS (the `scorer` model), a tiny grid (max 64 candidates per scorer
    call) and `--unknown-ids refuse`."""
    from nann.serving.export import export_repository
    from nann.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("strict") / "repo"
    export_repository(tiny_run.run, repo, scorer="onnxruntime", grid=TINY_GRID, unknown_ids="refuse",
                      in_process=False)
    with TritonServer(repo) as server, grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def test_rounds_larger_than_the_grid_maximum_are_split_not_refused(tiny_run, strict_tiny_grid, monkeypatch):
    """Big rounds become several scorer calls of at most 64 candidates, with the same answers: the server makes
    exactly the scorer calls (BLS calls to `scorer`) the offline engine makes with the same grid, and more than with
    the default grid."""
    c = strict_tiny_grid
    data = PreparedData.load(str(tiny_run.data))
    histories = [data.vocab.dense_to_raw(data.test.history(i)) for i in range(4)]
    offline = OfflineRetriever(tiny_run.run, grid=TINY_GRID)
    unsplit = OfflineRetriever(tiny_run.run)
    calls = {"tiny grid": 0, "default grid": 0}
    for name, retriever in (("tiny grid", offline), ("default grid", unsplit)):
        def counting(*args, score=retriever.scorer.runtime.score, name=name):
            calls[name] += 1
            return score(*args)
        monkeypatch.setattr(retriever.scorer.runtime, "score", counting)
    # every new list entry expanded each round (frontier 0): rounds far above the tiny grid's 64 candidates, whatever
    # frontier the tiny run's graph was calibrated to
    params = parse_search(offline.limits, k=50, ef=[20, 100, 300], rounds=[1, 2, 3], frontier=0)
    before = {m: c.get_inference_statistics(m, as_json=True)["model_stats"][0] for m in ("retrieve", "scorer")}
    for h in histories:  # one at a time: one execute() per request
        ids, _ = infer(c, request(h, k=50, ef=[20, 100, 300], rounds=[1, 2, 3], frontier=0))
        assert ids.tolist() == offline.retrieve([h], [params])[0].item_ids.tolist()
        assert ids.tolist() == unsplit.retrieve([h], [params])[0].item_ids.tolist()
    after = {m: c.get_inference_statistics(m, as_json=True)["model_stats"][0] for m in ("retrieve", "scorer")}
    scorer_calls, executions = (int(after[m].get("execution_count", 0)) - int(before[m].get("execution_count", 0))
                                for m in ("scorer", "retrieve"))  # a count of 0 is left out of the JSON
    assert executions == len(histories)
    assert scorer_calls == calls["tiny grid"] > calls["default grid"]


def test_strict_mode_refuses_unknown_ids_but_serves_new_users(strict_tiny_grid, users):
    c = strict_tiny_grid
    info = json.loads(c.get_model_config("nann", as_json=True)["config"]["parameters"]["nann_info"]["string_value"])
    assert info["unknown_ids"] == "refuse"
    assert_invalid(c, request(list(users[0][:3]) + [123456789012]), r"unknown item ids \(1\): 123456789012")
    assert_invalid(c, request(np.arange(10**12, 10**12 + 20)), r"unknown item ids \(20\)", r"\.\.\.")
    ids, scores = infer(c, request([], k=6))  # a new user is not an error
    assert len(ids) == 6 and np.isfinite(scores).all() and dropped(c, request([])) == 0
    BAD_INPUTS_TRIED.extend(["strict unknown id", "strict 20 unknown ids"])


# ---------------------------------------------------------------- security

def listening_addresses(port: int) -> list[str]:
    """Local addresses with a LISTEN socket on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, state = fields[1], fields[3]
            host, p = addr.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                if len(host) == 8:
                    found.append(".".join(str(b) for b in reversed(bytes.fromhex(host))))
                else:  # IPv6: four little-endian 32-bit words; IPv4-mapped ::ffff:a.b.c.d shown as a.b.c.d
                    raw = b"".join(bytes(reversed(bytes.fromhex(host[i:i + 8]))) for i in range(0, 32, 8))
                    ip = ipaddress.IPv6Address(raw)
                    found.append(str(ip.ipv4_mapped or ip))
    return found


def test_server_listens_on_loopback_only(served):
    for port in (served.server.grpc_port, served.server.http_port, served.server.metrics_port):
        found = listening_addresses(port)
        assert found and all(ipaddress.ip_address(a).is_loopback for a in found), (port, found)


def test_model_control_api_is_off_by_default(client, served):
    assert served.server.model_control_mode == "none"
    for call in (lambda: client.unload_model("retrieve"), lambda: client.load_model("nann")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert "not allowed" in err.value.message() or "explicit" in err.value.message(), err.value.message()
    assert all(client.is_model_ready(m) for m in MODELS)


def test_serving_code_never_unpickles():
    offenders = []
    patterns = [re.compile(r"allow_pickle\s*=\s*True"), re.compile(r"\bpickle\.loads?\("),
                re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), re.compile(r"\bjoblib\.load\(")]
    for folder in ("nann", "nann_cli", "trainer", "graph_builder", "model_repository", "client", "perf"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(ROOT)}: {p.pattern}" for p in patterns if p.search(text)]
    assert not offenders, offenders
    serving_loads = [line for path in (ROOT / "nann" / "serving").glob("*.py")
                     for line in path.read_text().splitlines() if "np.load(" in line]
    assert all("allow_pickle=False" in line or "mmap_mode" in line for line in serving_loads), serving_loads


# ---------------------------------------------------------------- soak (short) and the final tally

def test_short_soak_has_no_failures(served):
    from perf.soak import random_histories, repo_item_ids, soak

    report = soak(served.server.grpc_url, random_histories(repo_item_ids(served.repo)), seconds=15.0,
                  concurrency=8, warmup_s=5.0, server_pid=served.server.pid)
    assert report["requests_failed"] == 0, report["first_failures"]
    assert report["requests_ok_after_warmup"] > 0 and report["threads_stuck"] == 0
    assert report["server_rss_mb"]["end"] > 0


def test_zz_no_bad_input_crashed_anything(served, client):
    """Runs last in this module: the server process is alive and every model ready after all of the above."""
    assert served.server.running()
    assert all(client.is_model_ready(m) for m in MODELS)
    assert served.server.dead_stubs() == []
    with urllib.request.urlopen(f"{served.server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    print(f"\nbad inputs tried: {len(BAD_INPUTS_TRIED)}, crashes: 0")
    assert len(set(BAD_INPUTS_TRIED) & set(BAD)) in (0, len(BAD))  # all of them, or none selected
