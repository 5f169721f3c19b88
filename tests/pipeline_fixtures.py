"""Session fixtures: a tiny but real pipeline (synth → prepare → train → graph) and a served export of it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from nann_cli.main import main as cli_main


def run_cli(*argv: str) -> None:
    code = cli_main([str(a) for a in argv])
    assert code == 0, f"nann {' '.join(map(str, argv))} exited {code}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    work: Path = tmp_path_factory.mktemp("pipeline")
    raw, data, run = work / "raw", work / "data", work / "run"
    run_cli("data", "synth", "--out", raw, "--users", 800, "--items", 3000, "--categories", 40, "--seed", 1)
    run_cli("data", "prepare", "--csv", raw / "UserBehavior.csv", "--out", data, "--test-users", 120,
            "--val-users", 40, "--split", "users")  # held-out users, as the tests using this run were written for
    # one torch thread: torch's threads spin, so beside busy processes (perf.stress, a shared CI machine) two threads
    # on 2 cores collapse (over 10x slower than one). The two-tower baseline is trained too (test_evaluate_baselines).
    run_cli("train", "--data", data, "--run", run, "--epochs", 1, "--negatives", 10, "--max-samples", 8000,
            "--batch-size", 256, "--eval-users", 50, "--threads", 1)
    # one build thread: hnswlib's multi-threaded build differs from run to run, and with it the walk `nann graph`
    # calibrates (tests that need a particular walk ask for it, but the suite runs the same defaults every time)
    run_cli("graph", "--run", run, "--m", 8, "--ef-construction", 40, "--threads", 1)
    return SimpleNamespace(work=work, data=data, run=run)


@pytest.fixture(scope="session")
def items_added(tiny_run, tmp_path_factory) -> SimpleNamespace:
    """A copy of the tiny run with one new item per category added by `nann items add` (one per category: new
    items of one category share their e_v). ``num_old``: items before; ``new_raw``: the new raw ids, in order."""
    import shutil

    import numpy as np

    work: Path = tmp_path_factory.mktemp("items_added")
    run, csv = work / "run", work / "new_items.csv"
    shutil.copytree(tiny_run.run, run, ignore=shutil.ignore_patterns("checkpoint"))
    items, categories = np.load(run / "items.npy"), np.load(run / "categories.npy")
    new_raw = int(items.max()) + 1 + np.arange(categories.shape[0])
    csv.write_text("item_id,category_id\n" + "".join(f"{i},{c}\n" for i, c in zip(new_raw, categories)))
    run_cli("items", "add", "--run", run, "--csv", csv)
    return SimpleNamespace(run=run, csv=csv, num_old=int(items.shape[0]), new_raw=new_raw, data=tiny_run.data,
                           k=added_items_depth(run, tiny_run.data, int(items.shape[0])))


def added_items_depth(run: Path, data: Path, num_old: int, users: int = 6, step: int = 20) -> int:
    """An answer size (a multiple of `step`, at most the served maximum) whose exact top holds an added item for at
    least `users` test users. Added items have the category-only e_v, so where they rank depends on the trained model
    (ranks ~25-60 of 2,962 once, none in any user's top 20 after a model change): tests that must see them served
    ask for this many items instead of a fixed count."""
    import numpy as np

    from nann.data.prepared import PreparedData
    from nann.runtime import ModelRuntime
    from nann.serving.requests import ServingLimits

    runtime = ModelRuntime.load(run)
    test = PreparedData.load(str(data)).test
    histories = [test.history(i) for i in range(len(test))]
    state = runtime.encode(histories)
    items = np.arange(runtime.num_items)
    best_rank = []
    for u in range(len(histories)):
        scores = runtime.score(state, np.full(items.shape[0], u, np.int64), items)
        best_rank.append(int((scores > scores[num_old:].max()).sum()))  # items above the best added one
    needed = sorted(best_rank)[min(users, len(best_rank)) - 1] + 1
    return int(min(ServingLimits().maximum("k"), -(-needed // step) * step))


@pytest.fixture(scope="session")
def served(tiny_run, tmp_path_factory):
    """The tiny run exported (CPU ONNX Runtime scorer) and served by a real tritonserver on free ports."""
    from nann.serving.export import export_repository
    from nann.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("repo")
    info = export_repository(tiny_run.run, repo, scorer="onnxruntime")
    with TritonServer(repo) as server:
        yield SimpleNamespace(server=server, repo=repo, info=info, **vars(tiny_run))


@pytest.fixture(scope="session")
def test_histories(tiny_run) -> list:
    """Raw-id histories (oldest first) of the tiny run's test users."""
    from nann.data.prepared import PreparedData

    data = PreparedData.load(str(tiny_run.data))
    return [data.vocab.dense_to_raw(data.test.history(i)) for i in range(len(data.test))]


def send_together(url: str, calls: list, model: str, tries: int = 8) -> tuple[list, int]:
    """Run every `call(client)` in its own thread, all released at once so that the server batches them. Returns
    their results (the InferenceServerException where one failed) and how many execute() calls `model` made.

    Whether two requests share an execute() is a race the client cannot decide (`retrieve` takes no queue delay: it
    batches only what arrives while its instances run, and threads released together on a busy machine arrive apart), so the
    calls are sent again, up to `tries` times, until `model` ran fewer executions than calls: the round returned is
    the first batched one (or the last)."""
    for _ in range(tries):
        results, executions = _send_once(url, calls, model)
        if executions < len(calls):
            break
    return results, executions


def _send_once(url: str, calls: list, model: str) -> tuple[list, int]:
    import threading

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def executions() -> int:
        with grpcclient.InferenceServerClient(url) as c:
            stats = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
            return int(stats.get("execution_count", 0))  # a count of 0 is left out of the JSON

    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def worker(i):
        with grpcclient.InferenceServerClient(url) as c:
            barrier.wait()
            try:
                results[i] = calls[i](c)
            except InferenceServerException as e:
                results[i] = e

    before = executions()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, executions() - before
