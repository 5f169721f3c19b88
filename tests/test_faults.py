"""Faults against real tritonservers (each test has its own, so the shared `served` fixture is undisturbed):
a killed Python stub under load (and a restart that fails), broken artifacts at load and a load that fails inside
Triton (the start ends at the failure), requests past the queue bound, a new model version while clients keep sending.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from nann_cli.main import main as cli_main
from nann.errors import UserError
from nann.serving.export import RETRIEVE_INSTANCES, export_repository
from nann.serving.repository import ArtifactError, verify_repository
from nann.serving.requests import parse_search
from nann.serving.retrieval import OfflineRetriever
from nann.serving.server import LoadFailed, TritonServer, free_ports, supervise

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def histories(test_histories):
    return test_histories[:40]


def infer(client, history, k=20):
    h = np.asarray(history, np.int64).reshape(1, -1)
    inputs = [grpcclient.InferInput("history", list(h.shape), "INT64"), grpcclient.InferInput("k", [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(h)
    inputs[1].set_data_from_numpy(np.array([[k]], np.int32))
    return client.infer("nann", inputs, client_timeout=30).as_numpy("item_ids")[0]


class Load:
    """Client threads sending back to back until stopped (top k); records (start, end, error or None, ids)."""

    def __init__(self, url, histories, threads=4, k=20):
        self.url, self.histories, self.k, self.log, self._stop = url, histories, k, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t, threads), daemon=True) for t in range(threads)]

    def _run(self, t, step):
        i = t
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self._stop.is_set():
                h = self.histories[i % len(self.histories)]
                start = time.monotonic()
                try:
                    ids = infer(client, h, self.k)  # before the end time is taken
                    self.log.append((start, time.monotonic(), None, i % len(self.histories), ids))
                except Exception as e:  # noqa: BLE001 - counted by the test
                    self.log.append((start, time.monotonic(), str(e), i % len(self.histories), None))
                    time.sleep(0.05)
                i += step

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self.threads:
            t.join(60)

    def failures(self):
        return [entry for entry in self.log if entry[2] is not None]


def stub_pid(server: TritonServer, model: str) -> int:
    stubs = server.stub_processes()
    return stubs[f"{model}_0_0"]


# ---------------------------------------------------------------- a killed stub

@pytest.mark.parametrize("model", ["retrieve", "scorer"])
def test_killed_stub_under_load_is_recovered_by_the_supervisor(served, tiny_run, histories, tmp_path, model):
    """Triton 2.51 neither restarts a dead Python stub nor reports the model unready (and a dead BLS target can
    take the whole server down); `nann serve`'s supervisor restarts tritonserver. In-flight requests fail with
    an error, later ones succeed again. `scorer`: the BLS target of an export with its scorer behind BLS."""
    repo = served.repo if model == "retrieve" else fresh_repo(tiny_run, tmp_path / "repo", in_process=False)
    server = TritonServer(repo, log_path=tmp_path / "triton.log").start()
    stop = threading.Event()
    messages: list[str] = []
    code: list[int] = []
    watcher = threading.Thread(target=lambda: code.append(supervise(server, stop.is_set, interval=0.2,
                                                                    say=messages.append)))
    try:
        watcher.start()
        with Load(server.grpc_url, histories) as load:
            time.sleep(2.0)
            victim = stub_pid(server, model)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not any("ready again" in m for m in messages):
                time.sleep(0.25)
            ready_at = time.monotonic()
            # the clients' gRPC channels reconnect with their own backoff after hundreds of failures: give them time
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(e[2] is None and e[0] > ready_at for e in list(load.log)):
                time.sleep(0.25)
        failed = [e for e in load.failures() if e[0] >= killed_at - 30]
        ok_after = [e for e in load.log if e[2] is None and e[0] > ready_at]
        print(f"\nkilled {model} stub: {len(failed)} failed requests, {len(ok_after)} succeeded after; "
              f"supervisor: {messages}")
        assert any("died" in m or "exited" in m for m in messages), messages
        assert any("ready again" in m for m in messages), messages
        assert ok_after, "no request succeeded after the restart"
        assert victim not in server.stub_processes().values() and server.dead_stubs() == []
        assert all(e[2] for e in failed)  # every failure carries a message
    finally:
        stop.set()
        watcher.join(60)
        server.stop(10)
    assert code == [0]


def test_dead_stub_is_detected_and_not_repaired_by_triton(served, histories, tmp_path):
    """Without the supervisor: the model stays 'ready' while every request through it fails, naming the stub (both
    of `retrieve`'s instances killed: with one left, it would take every request)."""
    with TritonServer(served.repo, log_path=tmp_path / "triton.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        infer(client, histories[0])
        stubs = sorted(name for name in server.stub_processes() if name.startswith("retrieve_"))
        assert len(stubs) == RETRIEVE_INSTANCES
        for name in stubs:
            os.kill(server.stub_processes()[name], signal.SIGKILL)
        time.sleep(1.0)
        assert server.dead_stubs() == stubs
        assert client.is_model_ready("retrieve")  # Triton's readiness does not notice
        with pytest.raises(Exception, match=r"Stub process 'retrieve_\w+' is not healthy"):
            infer(client, histories[0])
        server.restart()
        assert len(infer(client, histories[0])) == 20 and server.dead_stubs() == []


def test_supervisor_gives_up_naming_the_model_when_the_restart_fails_to_load(tiny_run, tmp_path):
    """A stub dies and, meanwhile, an artifact of its model was damaged: the restart fails to load, and the supervisor
    returns 1 at once, naming the model, with no tritonserver or stub of it left."""
    repo = fresh_repo(tiny_run, tmp_path / "repo")
    server = TritonServer(repo, log_path=tmp_path / "triton.log").start()
    messages: list[str] = []
    try:
        target = repo / "retrieve" / "1" / "user_encoder.onnx"
        replace_file(target, target.read_bytes()[:-1])
        os.kill(stub_pid(server, "retrieve"), signal.SIGKILL)
        started = time.monotonic()
        code = supervise(server, lambda: False, interval=0.2, say=messages.append)
        took = time.monotonic() - started
    finally:
        server.stop(5)
    print(f"\nsupervisor gave up after {took:.1f} s: {messages}")
    assert code == 1 and any("restart failed: model 'retrieve' failed to load" in m and str(target) in m
                             for m in messages), messages
    assert processes_of(repo) == []


# ---------------------------------------------------------------- broken artifacts

def fresh_repo(tiny_run, path: Path, in_process: bool | None = None) -> Path:
    export_repository(tiny_run.run, path, scorer="onnxruntime", in_process=in_process)
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Rewrite a (possibly hard-linked) artifact without touching the run it was linked from."""
    path.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_nann_serve_refuses_a_broken_repository_naming_the_file(tiny_run, tmp_path, capsys, damage):
    repo = fresh_repo(tiny_run, tmp_path / "repo")
    target = repo / "retrieve" / "1" / "graph" / "layer0_indices.npy"
    data = target.read_bytes()
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        replace_file(target, data[: len(data) // 2])
    else:
        replace_file(target, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtifactError, match=str(target)):
        verify_repository(repo)
    grpc, http, metrics = free_ports(3)
    code = cli_main(["serve", "--repo", str(repo), "--grpc-port", str(grpc), "--http-port", str(http),
                     "--metrics-port", str(metrics)])
    err = capsys.readouterr().err
    assert code != 0 and str(target) in err, err
    assert {"missing": "is missing", "truncated": "truncated", "altered": "sha256"}[damage] in err


def failure_logged_at(log: Path) -> float:
    """time.time() of the first `failed to load` line of a tritonserver log (glog stamp `E1206 04:06:10.044377`,
    local time, no year)."""
    line = next(line for line in log.read_text(errors="replace").splitlines() if "failed to load '" in line)
    now = datetime.now()
    stamp = datetime.strptime(f"{now.year}{line[1:21]}", "%Y%m%d %H:%M:%S.%f")
    return (stamp if stamp <= now else stamp.replace(year=now.year - 1)).timestamp()


def processes_of(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (a tritonserver on a repository, its stubs)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in argv:
            found.append(argv)
    return found


def test_nann_serve_exits_soon_after_the_scorer_fails_to_load_inside_triton(tiny_run, tmp_path, capsys,
                                                                           monkeypatch):
    """The scorer's artifact (inside `retrieve`) changes after `nann serve`'s pre-check passed: its load fails inside
    Triton, and `nann serve` exits non-zero within 15 s of that failure, naming the model and Triton's error, with no
    tritonserver, stub or shared-memory region of it left (Triton itself would go on unloading the other models)."""
    from nann.serving import repository

    repo = fresh_repo(tiny_run, tmp_path / "repo")
    target = repo / "retrieve" / "1" / "scorer.onnx"  # the scorer runs inside `retrieve`

    def check_then_break(path):
        verify(path)
        replace_file(target, target.read_bytes()[:-10] + b"0123456789")

    verify = repository.verify_repository
    monkeypatch.setattr(repository, "verify_repository", check_then_break)
    port, http, metrics = free_ports(3)
    code = cli_main(["serve", "--repo", str(repo), "--grpc-port", str(port), "--http-port", str(http),
                     "--metrics-port", str(metrics)])
    exited_at = time.time()
    err = capsys.readouterr().err
    after_failure = exited_at - failure_logged_at(tmp_path / "tritonserver.log")
    print(f"\nnann serve exited {after_failure:.1f} s after Triton's failed load of `retrieve`")
    assert code != 0 and "model 'retrieve' failed to load in tritonserver" in err, err
    assert f"artifact {target} does not match its sha256 checksum" in err
    assert after_failure < 15.0
    assert processes_of(repo) == [] and not list(Path("/dev/shm").glob(f"nann{os.getpid()}_{port}_*"))


FAILING_LOAD_MODELS = {  # a repository of two models: one fails to load, the other holds its unload for minutes
    "broken": "class TritonPythonModel:\n    def initialize(self, args):\n"
              "        raise RuntimeError('broken on purpose')\n",
    "slow_to_unload": "import time\n\n\nclass TritonPythonModel:\n    def execute(self, requests):\n"
                      "        return []\n\n    def finalize(self):\n        time.sleep(300)\n",
}


def test_failed_load_ends_the_start_while_triton_still_unloads_the_other_models(tmp_path):
    """Triton reports a failed load, then waits for the other models to unload (up to its 30 s exit timeout, longer
    under load) before it exits: the start must end at the failure, not at the exit (before: 31 s after it)."""
    repo = tmp_path / "repo"
    for name, source in FAILING_LOAD_MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source)
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "x" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{sys.prefix}" }} }}\n')
    server = TritonServer(repo, log_path=tmp_path / "triton.log")
    with pytest.raises(LoadFailed, match="model 'broken' failed to load in tritonserver: .*broken on purpose") as err:
        server.start(timeout=120)
    after_failure = time.time() - failure_logged_at(tmp_path / "triton.log")
    print(f"\nstart ended {after_failure:.1f} s after Triton's failed load")
    assert err.value.model == "broken" and after_failure < 15.0
    assert not server.running() and processes_of(repo) == []


# ---------------------------------------------------------------- past capacity

def test_past_the_queue_bound_every_request_is_answered_or_refused_by_name(tiny_run, histories, tmp_path):
    """`retrieve`'s queue bounded to 1 request: of 64 requests sent at once some are answered (correctly) and the
    rest refused by name (the SDK's OverloadedError: UNAVAILABLE "Exceeds maximum queue size", not retried), none
    lost or failed otherwise; then the server serves normally."""
    import asyncio

    from nann_client import AsyncNannClient, OverloadedError
    from perf.overload import with_queue_policy

    repo = fresh_repo(tiny_run, tmp_path / "repo")
    cfg = repo / "retrieve" / "config.pbtxt"
    cfg.write_text(with_queue_policy(cfg.read_text(), "max_queue_size=1"))
    offline = OfflineRetriever(tiny_run.run)
    want = {i: offline.retrieve([histories[i % len(histories)]], [parse_search(offline.limits)])[0].item_ids.tolist()
            for i in range(64)}

    async def at_once(url):
        async with AsyncNannClient(url, retries=0, timeout=60) as client:
            return await asyncio.gather(*(client.retrieve(histories[i % len(histories)]) for i in range(64)),
                                        return_exceptions=True)

    with TritonServer(repo, log_path=tmp_path / "triton.log") as server:
        results = asyncio.run(at_once(server.grpc_url))
        answered = {i: r.item_ids.tolist() for i, r in enumerate(results) if not isinstance(r, Exception)}
        refused = [r for r in results if isinstance(r, OverloadedError)]
        print(f"\n64 requests at once, queue bound 1: {len(answered)} answered, {len(refused)} refused")
        assert len(answered) + len(refused) == 64, [r for r in results if isinstance(r, Exception)][:3]
        assert answered and refused and all(answered[i] == want[i] for i in answered)
        assert all("Exceeds maximum queue size" in str(e) and e.attempts == 1 for e in refused)
        params = parse_search(offline.limits, k=20)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert [infer(client, h).tolist() for h in histories[:5]] == \
                [offline.retrieve([h], [params])[0].item_ids.tolist() for h in histories[:5]]
        assert server.dead_stubs() == []


# ---------------------------------------------------------------- a new version while serving

@pytest.fixture(scope="module")
def second_run(tiny_run, tmp_path_factory):
    """The same model with a different graph, exported with a narrow default search (a cheap new version whose
    answers differ for certain: a new graph alone gives the same top-k wherever both walks find the exact one)."""
    from pipeline_fixtures import run_cli

    run2 = tmp_path_factory.mktemp("run2") / "run"
    shutil.copytree(tiny_run.run, run2, ignore=shutil.ignore_patterns("graph", "checkpoint"))
    run_cli("graph", "--run", run2, "--m", 4, "--ef-construction", 12)
    limits = OfflineRetriever(tiny_run.run).limits
    narrow = replace(limits, defaults=replace(limits.defaults, ef=(1, 1, 1, 20), rounds=(1, 1, 1, 2), frontier=2,
                                              seeds=0))
    return SimpleNamespace(run=run2, limits=narrow)


def publish(new_run, repo, tmp_path, client, scorer_last: bool, limits=None) -> None:
    """`nann export` of new_run into repo (version 2; `limits`: its ServingLimits, None = the catalogue's).
    scorer_last: an export behind BLS whose new `scorer` appears only once the new `retrieve` serves, the order in
    which `retrieve` meets items its scorer does not know yet; else an export with the scorer inside `retrieve`."""
    if not scorer_last:
        export_repository(new_run, repo, scorer="onnxruntime", limits=limits)
        return
    staging = tmp_path / "staging"
    shutil.copytree(repo, staging)
    export_repository(new_run, staging, scorer="onnxruntime", limits=limits, in_process=False)
    for model in ("retrieve", "nann", "scorer"):
        if model == "scorer":
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not client.is_model_ready("retrieve", "2"):
                time.sleep(0.2)
            time.sleep(2.0)
        shutil.copy2(staging / model / "config.pbtxt", repo / model / "config.pbtxt")
        (staging / model / "2").rename(repo / model / "2")


def answers_across_a_switch(tiny_run, new_run, histories, tmp_path, scorer_last=False,
                            new_limits=None, k=20) -> list[list[int]]:
    """Serve tiny_run's export in poll mode with clients sending back to back, publish new_run into the same
    repository, and check: 0 failed requests, every answer the old or the new version's, every answer after the
    switch the new one's, and every history's answer afterwards the new one's (new_limits: the new version's
    ServingLimits, None = the catalogue's; scorer_last: both versions behind BLS, see `publish`). Returns the new
    version's answers (top k)."""
    repo = fresh_repo(tiny_run, tmp_path / "repo", in_process=False if scorer_last else None)
    before = OfflineRetriever(tiny_run.run)
    after = OfflineRetriever(new_run, limits=new_limits)
    old_params, new_params = parse_search(before.limits, k=k), parse_search(after.limits, k=k)
    want_old = [before.retrieve([h], [old_params])[0][0].tolist() for h in histories]
    want_new = [after.retrieve([h], [new_params])[0][0].tolist() for h in histories]
    changed = [i for i in range(len(histories)) if want_old[i] != want_new[i]]
    assert changed, "the two versions answer alike: the test could not see the switch"
    server = TritonServer(repo, model_control_mode="poll", extra_args=["--repository-poll-secs=1"],
                          log_path=tmp_path / "triton.log")
    with server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        with Load(server.grpc_url, histories, k=k) as load:
            time.sleep(2.0)
            exported_at = time.monotonic()
            publish(new_run, repo, tmp_path, client, scorer_last, new_limits)
            deadline = time.monotonic() + 120
            models = ("retrieve", "nann") + (("scorer",) if scorer_last else ())
            while time.monotonic() < deadline and not all(
                    client.is_model_ready(m, "2") and not client.is_model_ready(m, "1") for m in models):
                time.sleep(0.5)
            switched_at = time.monotonic()
            time.sleep(3.0)
        assert all(client.is_model_ready(m, "2") for m in models), server.log_tail(30)
        failures = load.failures()
        during = [e for e in load.log if e[0] >= exported_at]
        print(f"\nversion switch in {switched_at - exported_at:.1f} s: {len(during)} requests during and after it, "
              f"{len(failures)} failed")
        assert not failures, failures[:3]
        late = [e for e in load.log if e[0] > switched_at + 0.5]
        assert late and all(e[4].tolist() == want_new[e[3]] for e in late)
        assert all(e[4].tolist() in (want_old[e[3]], want_new[e[3]]) for e in load.log)
        assert [infer(client, h, k).tolist() for h in histories] == want_new
    return want_new


def test_new_version_is_picked_up_without_failed_requests(tiny_run, second_run, histories, tmp_path):
    answers_across_a_switch(tiny_run, second_run.run, histories, tmp_path, new_limits=second_run.limits)


@pytest.mark.parametrize("scorer_last", [False, True], ids=["in-process", "bls-scorer-last"])
def test_items_added_version_is_picked_up_and_serves_them(tiny_run, items_added, test_histories, tmp_path,
                                                          scorer_last):
    """`nann items add` then `nann export` while serving: the poll-mode server switches with 0 failed requests
    and then returns the new items, with the scorer inside `retrieve` (its version holds the new item table), and
    behind BLS even when the new `retrieve` serves seconds before the new `scorer` (its scorer calls wait for it).
    Histories: those whose new answer holds a new item first."""
    after = OfflineRetriever(items_added.run)
    params = parse_search(after.limits, k=items_added.k)
    new = set(items_added.new_raw.tolist())
    holds_new = [bool(new & set(after.retrieve([h], [params])[0][0].tolist())) for h in test_histories]
    order = sorted(range(len(test_histories)), key=lambda i: not holds_new[i])
    histories = [test_histories[i] for i in order[:40]]
    want_new = answers_across_a_switch(tiny_run, items_added.run, histories, tmp_path, scorer_last=scorer_last,
                                       k=items_added.k)
    served_new = [answer for answer in want_new if new & set(answer)]
    print(f"{len(served_new)} of {len(histories)} users are now served new items")
    assert len(served_new) >= 3


# ---------------------------------------------------------------- the blocked set swapped under load

def test_blocked_set_swaps_under_load_without_failed_requests_or_reloads(tiny_run, histories, tmp_path):
    """`nann items block` several times while clients send back to back: 0 failed requests, every answer the one
    of a blocked set that was written (a batch uses one set), every answer between a set being in use and the next
    write that set's, and no model reloaded (poll mode, which reloads a model whose directory changes)."""
    from nann.serving.filters import write_blocked
    from perf.filters import wait_for_version

    repo = fresh_repo(tiny_run, tmp_path / "repo")
    plain = OfflineRetriever(tiny_run.run)
    params = parse_search(plain.limits, k=20)
    top = [plain.retrieve([h], [params])[0].item_ids for h in histories]
    sets = [np.zeros(0, np.int64), np.unique(np.concatenate([t[:5] for t in top])),
            np.unique(np.concatenate([t[5:12] for t in top]))]
    want = [[OfflineRetriever(tiny_run.run, blocked=ids).retrieve([h], [params])[0].item_ids.tolist()
             for h in histories] for ids in sets]
    assert all(want[0][i] != want[1][i] != want[2][i] for i in range(len(histories)))
    log = tmp_path / "triton.log"
    server = TritonServer(repo, model_control_mode="poll", extra_args=["--repository-poll-secs=1"], log_path=log)
    in_use = []  # (set, in use from, next write at)
    with server, Load(server.grpc_url, histories) as load:
        metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
        time.sleep(2.0)  # a few poll periods: a reload after the start (e.g. the stub writing bytecode) shows
        loads = log.read_text().count("loading: retrieve:")
        assert loads == 1, "poll mode reloaded `retrieve` right after the start"
        for s in (1, 2, 0, 2, 1, 0, 1):
            written_at = time.monotonic()
            if in_use:
                in_use[-1][2] = written_at
            wait_for_version(metrics, write_blocked(repo, sets[s])["version"])
            in_use.append([s, time.monotonic(), None])
            time.sleep(2.5)  # long enough for whole requests to run under this set
        in_use[-1][2] = time.monotonic()
    failures = load.failures()
    print(f"\n{len(in_use)} blocked-set swaps under load: {len(load.log)} requests, {len(failures)} failed")
    assert not failures, failures[:3]
    assert log.read_text().count("loading: retrieve:") == loads, "a blocked-set write reloaded a model"
    assert all(any(e[4].tolist() == want[s][e[3]] for s in range(3)) for e in load.log)
    for s, start, end in in_use:
        inside = [e for e in load.log if start <= e[0] and e[1] <= end]
        wrong = [(round(e[0] - start, 3), e[3], [t for t in range(3) if e[4].tolist() == want[t][e[3]]])
                 for e in inside if e[4].tolist() != want[s][e[3]]]
        assert inside and not wrong, f"set {s} in use: (seconds after the swap, history, sets it matches) {wrong}"
