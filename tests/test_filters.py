"""Eligibility filters around the engine, without a server: the filter inputs' parsing, raw → dense mapping and the
engine's Filters, the blocked set's files and watcher, and the offline paths (`OfflineRetriever`, `nann retrieve`,
`nann evaluate`) against brute force over the eligible items."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nann.data.prepared import Vocabulary
from nann.errors import UserError
from nann.serving.filters import (NOTHING_BLOCKED, POINTER, BlockedWatcher, Eligibility, read_blocked, read_ids,
                                  write_blocked)
from nann.serving.requests import FilterRequest, RequestError, ServingLimits, parse_filters

# raw item ids (dense 0..5), their dense categories, and the raw category ids (dense 0..2)
VOCAB = Vocabulary(np.array([11, 25, 37, 40, 58, 70]), np.array([0, 1, 2, 0, 1, 2]), np.array([100, 200, 300]))
LIMITS = ServingLimits(max_exclude=4, max_categories=2)


def test_filter_inputs_parse_bound_and_default_to_nothing():
    none = parse_filters(LIMITS)
    assert none.exclude.size == 0 and none.categories.size == 0 and not none.exclude_history
    assert not none.restricts and not parse_filters(LIMITS, exclude=[], categories=np.zeros((1, 0), np.int64)).restricts
    f = parse_filters(LIMITS, exclude=np.array([[11, 99]]), exclude_history=np.array([[True]]),
                      categories=np.array([300]))
    assert f.exclude.tolist() == [11, 99] and f.exclude_history is True and f.categories.tolist() == [300]
    assert f.restricts and parse_filters(LIMITS, exclude_history=1).exclude_history
    assert LIMITS.published()["limits"]["max_exclude"] == 4 and LIMITS.published()["limits"]["max_categories"] == 2


@pytest.mark.parametrize("inputs, message", [
    ({"exclude": np.arange(5)}, r"exclude has 5 item ids, more than the maximum 4"),
    ({"categories": [1, 2, 3]}, r"categories has 3 category ids, more than the maximum 2"),
    ({"exclude": np.array([1.5])}, r"exclude must be an integer tensor"),
    ({"exclude": np.zeros((2, 2), np.int64)}, r"exclude must have shape \[n\] or \[1, n\]"),
    ({"exclude_history": np.array([True, False])}, r"exclude_history must be a single value, got 2"),
    ({"exclude_history": np.array([2])}, r"exclude_history must be true or false, got 2"),
    ({"exclude_history": np.array([0.5])}, r"exclude_history must be true or false"),
])
def test_bad_filter_inputs_are_refused(inputs, message):
    with pytest.raises(RequestError, match=message):
        parse_filters(LIMITS, **inputs)
    with pytest.raises(TypeError, match="unexpected filter inputs"):
        parse_filters(LIMITS, excluded=[1])


def test_raw_ids_map_to_dense_unknown_items_ignored_unknown_categories_refused():
    elig = Eligibility(VOCAB)
    f = elig.dense(FilterRequest(np.array([40, 12345, 11]), False, np.array([300, 100])), np.array([2, -1]))
    assert f.exclude.tolist() == [3, 0] and f.categories.tolist() == [2, 0]
    # exclude_history adds the request's own (dense) history; ids outside the catalogue are ignored
    f = elig.dense(FilterRequest(np.array([40]), True, np.zeros(0, np.int64)), np.array([2, -1, 6, 5]))
    assert sorted(f.exclude.tolist()) == [2, 3, 5] and f.categories is None
    assert elig.dense(FilterRequest(np.array([12345]), False, np.zeros(0, np.int64)), np.zeros(0)) == (None, None)
    with pytest.raises(RequestError, match=r"unknown category ids \(2\): 7, 8"):
        elig.dense(FilterRequest(np.zeros(0, np.int64), False, np.array([100, 7, 8])), np.zeros(0))


def test_engine_filters_only_when_something_is_filtered():
    elig = Eligibility(VOCAB)
    plain = elig.dense(FilterRequest(), np.zeros(0))
    assert elig.engine_filters([plain, plain], NOTHING_BLOCKED) is None
    assert elig.engine_filters([plain], elig.blocked(np.array([12345]))) is None  # nothing of this index blocked
    blocked = elig.blocked(np.array([58, 12345, 11, 58]), version=3)
    assert (blocked.version, blocked.count) == (3, 2)
    filters = elig.engine_filters([plain, elig.dense(FilterRequest(categories=np.array([200])), np.zeros(0))],
                                  blocked)
    assert filters.restricted().tolist() == [True, True]
    assert filters.allow_cats.tolist() == [1] and filters.allow_ptr.tolist() == [0, 0, 1]
    assert np.flatnonzero(np.unpackbits(filters.blocked.view(np.uint8), bitorder="little")).tolist() == [0, 4]


def fake_repo(tmp_path):
    (tmp_path / "nann").mkdir()
    (tmp_path / "nann" / "config.pbtxt").write_text("")
    return tmp_path


def test_blocked_set_versions_pointer_and_pruning(tmp_path):
    with pytest.raises(UserError, match="not an exported NANN repository"):
        write_blocked(tmp_path, [1])
    repo = fake_repo(tmp_path)
    assert read_blocked(repo)[0] == 0 and read_blocked(repo)[1].size == 0
    for n in range(1, 6):
        pointer = write_blocked(repo, np.array([n, 70, 70, 30]))
        assert pointer == {"version": n, "file": f"blocked-{n}.npy", "count": 3}
        version, ids = read_blocked(repo)
        assert version == n and ids.tolist() == [n, 30, 70]
    assert sorted(p.name for p in repo.glob("blocked-*.npy")) == ["blocked-3.npy", "blocked-4.npy", "blocked-5.npy"]
    assert not list(repo.glob(".*tmp")) and json.loads((repo / POINTER).read_text())["version"] == 5
    assert write_blocked(repo, [])["count"] == 0 and read_blocked(repo)[1].size == 0


def test_id_files(tmp_path):
    (tmp_path / "ids.txt").write_text("# out of stock\n11\n\n 25 \n")
    assert read_ids(tmp_path / "ids.txt").tolist() == [11, 25]
    np.save(tmp_path / "ids.npy", np.array([3, 4], np.int32))
    assert read_ids(tmp_path / "ids.npy").dtype == np.int64
    (tmp_path / "bad.txt").write_text("11\nabc\n")
    with pytest.raises(UserError, match=r"bad.txt, line 2: 'abc' is not an integer item id"):
        read_ids(tmp_path / "bad.txt")
    np.save(tmp_path / "f.npy", np.array([1.5]))
    with pytest.raises(UserError, match="must hold a 1-D integer array"):
        read_ids(tmp_path / "f.npy")
    with pytest.raises(UserError, match="is not a file"):
        read_ids(tmp_path / "missing.txt")


def test_watcher_swaps_in_new_versions_and_keeps_the_set_when_a_file_is_broken(tmp_path, capsys):
    repo = fake_repo(tmp_path)
    seen = []
    watcher = BlockedWatcher(repo, Eligibility(VOCAB), seen.append)
    assert watcher.current is not None and watcher.current.version == 0 and [s.count for s in seen] == [0]
    assert not watcher.refresh()  # nothing changed
    write_blocked(repo, [11, 25, 999])
    assert watcher.refresh() and (watcher.current.version, watcher.current.count) == (1, 2)
    old = watcher.current
    (repo / "blocked-1.npy").write_bytes(b"garbage")
    (repo / POINTER).write_text(json.dumps({"version": 2, "file": "blocked-1.npy", "count": 3}))
    assert not watcher.refresh() and watcher.current is old
    assert "blocked set in" in capsys.readouterr().err
    (repo / POINTER).unlink()  # no pointer: nothing blocked
    assert watcher.refresh() and watcher.current.count == 0 and len(seen) == 3
    watcher.start()
    version = write_blocked(repo, [70])["version"]
    for _ in range(100):
        if watcher.current.version == version:
            break
        watcher._stop.wait(0.05)
    watcher.stop()
    assert (watcher.current.version, watcher.current.count) == (version, 1)


# ------------------------------------------------------------------ offline paths on the tiny run

@pytest.fixture(scope="module")
def tiny(tiny_run):
    from nann.data.prepared import PreparedData
    from nann.runtime import ModelRuntime

    data = PreparedData.load(str(tiny_run.data))
    histories = [data.vocab.dense_to_raw(data.test.history(i)) for i in range(6)]
    return tiny_run, data, histories, ModelRuntime.load(tiny_run.run)


def assert_brute_eligible(runtime, vocab, raw_history, eligible, got_raw, k, tie=1e-5):
    """`got_raw` is the top-k of the eligible items by scoring every item: rank by rank, the same item or one whose
    score is within `tie` (the engine's scorer calls are batched differently: ~1e-6 rounding)."""
    state = runtime.encode([vocab.raw_to_dense(raw_history)])
    scores = runtime.score(state, np.zeros(vocab.num_items, np.int64), np.arange(vocab.num_items))
    want = sorted(np.flatnonzero(eligible), key=lambda i: (-float(scores[i]), i))[:k]
    got = vocab.raw_to_dense(got_raw)
    assert len(got) == k and len(set(got.tolist())) == k and eligible[got].all()
    assert np.abs(scores[got] - scores[want]).max() <= tie


def test_offline_retriever_with_filters_equals_brute_force_over_the_eligible_items(tiny):
    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    run, data, histories, runtime = tiny
    vocab = data.vocab
    rng = np.random.default_rng(0)
    blocked = rng.choice(vocab.items, vocab.num_items // 3, replace=False)
    limits = ServingLimits(maxima={"ef": 10_000})  # an exhaustive walk: the answer must be exact
    offline = OfflineRetriever(run.run, limits=limits, blocked=np.concatenate([blocked, [123456789]]))
    params = parse_search(limits, k=25, ef=[5000] * 3, rounds=[64] * 3, frontier=0)
    cats = np.unique(vocab.categories[vocab.item_category])[:6]
    for i, h in enumerate(histories):
        f = [parse_filters(limits, exclude=rng.choice(vocab.items, 50)),
             parse_filters(limits, exclude_history=True, categories=cats[i % 3:i % 3 + 3]),
             parse_filters(limits, exclude=h[:3], categories=cats[:1])][i % 3]
        eligible = ~np.isin(vocab.items, np.concatenate([blocked, f.exclude, h if f.exclude_history else []]))
        if f.categories.size:
            eligible &= np.isin(vocab.categories[vocab.item_category], f.categories)
        assert_brute_eligible(runtime, vocab, h, eligible, offline.retrieve([h], [params], [f])[0].item_ids, 25)


def test_evaluate_with_filters_measures_against_brute_force_over_the_eligible_items(tiny, tmp_path, capsys):
    from dataclasses import replace

    from nann.engine.params import DEFAULT_SEARCH
    from nann.evaluate import Evaluator, MethodSpec
    from nann_cli.main import main as cli_main

    run, data, histories, _ = tiny
    blocked = data.vocab.items[::2]
    ev = Evaluator(run.run, run.data, users=12, filters=parse_filters(LIMITS, exclude_history=True), blocked=blocked)
    exact = ev.brute_top(50)
    assert (exact >= 0).all() and not np.isin(exact, np.arange(0, data.vocab.num_items, 2)).any()
    assert not any(np.isin(exact[u], ev.test.history(u)).any() for u in range(12))
    m = ev.evaluate(MethodSpec("beam", replace(DEFAULT_SEARCH, top_m=50)))
    assert m["coverage"] > 0.8 and m["filters"]["blocked_items"] == blocked.size and m["filters"]["exclude_history"]
    np.save(tmp_path / "blocked.npy", blocked)
    assert cli_main(["evaluate", "--run", str(run.run), "--data", str(run.data), "--users", "12", "--top-m", "50",
                     "--blocked", str(tmp_path / "blocked.npy"), "--exclude-history", "--json",
                     str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["coverage"] == m["coverage"]
    capsys.readouterr()
    assert cli_main(["evaluate", "--run", str(run.run), "--data", str(run.data), "--method", "hnsw",
                     "--exclude", "1"]) == 2
    assert "apply to --method beam and brute, not hnsw" in capsys.readouterr().err
    assert cli_main(["retrieve", "--run", str(run.run), "--history", ",".join(map(str, histories[0])), "--k", "5",
                     "--categories", "123456789"]) == 2
    assert "unknown category ids (1): 123456789" in capsys.readouterr().err
