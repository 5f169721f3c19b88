"""Oracle: the served `nann` ensemble, `nann retrieve` and `nann evaluate`'s retrieved lists against the TORCH
model's brute-force top-K, on the tiny run (tests/pipeline_fixtures.py).

The oracle shares no code with the paths under test: the trained model loaded from the run's config.json and
model.safetensors (`nann.model.load_model`), unfolded (`NANNModel.forward`), scores every item on the user's last
max_seq behaviours (what the server keeps of a longer history); its top-K is ranked by torch score, ties to the
smaller dense id, and mapped to raw ids with the run's items.npy.

Search: the largest the server allows, ef = max_ef and rounds = max_rounds on every layer, frontier 0. max_ef
(4096) is above the tiny run's ~2,900 items, so no list ever drops an entry and every entry is expanded: the walk is
exhaustive, it scores every item the graph links from its entry points (`test_evaluate_matches_the_oracle` checks
that this is every item of the catalogue, so the answer is the exact top-K of the whole catalogue).

Ties: the paths score with ONNX Runtime, whose scores differ from torch's by ~1e-6. A path's list matches the
oracle when it holds K distinct items and at every rank r its item's torch score is within TIE = 1e-5 of the
torch score of the oracle's item at rank r: items whose torch scores are closer than TIE may swap places (or swap
in and out at rank K), nothing else may.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nann_cli.main import main as cli_main
from nann.serving.requests import ServingLimits

K = 30
TIE = 1e-5
USERS = 24
LIMITS = ServingLimits()  # what the `served` fixture exports with
EF = (LIMITS.maximum("ef"),) * len(LIMITS.defaults.ef)
ROUNDS = (LIMITS.maximum("rounds"),) * len(LIMITS.defaults.rounds)


@pytest.fixture(scope="module")
def oracle(tiny_run) -> SimpleNamespace:
    from nann.data.prepared import PreparedData
    from nann.model import load_model

    model = load_model(str(tiny_run.run))
    raw_of = np.load(tiny_run.run / "items.npy")
    test = PreparedData.load(str(tiny_run.data)).test
    n, max_seq = len(raw_of), model.cfg.max_seq
    users = []
    with torch.no_grad():
        for i in range(min(USERS, len(test))):
            history = np.asarray(test.history(i), dtype=np.int64)
            kept = torch.from_numpy(history[-max_seq:])[None]
            scores = model(kept, torch.ones(kept.shape), torch.arange(n)[None])[0].numpy()
            top = np.lexsort((np.arange(n), -scores))[:K]  # torch score descending, then dense id ascending
            users.append(SimpleNamespace(raw_history=raw_of[history], scores=scores, top=top))
    assert len(users) >= 20
    return SimpleNamespace(users=users, raw_of=raw_of)


def assert_matches(oracle, user: int, ids, what: str, raw: bool = True, scores=None) -> None:
    """ids (raw or dense) of one user's answer against the oracle, by the tie rule of the module docstring;
    scores, when given, must be the torch scores of those items (to 1e-4)."""
    u = oracle.users[user]
    ids = np.asarray(ids, dtype=np.int64)
    dense = np.searchsorted(oracle.raw_of, ids) if raw else ids
    assert dense.max(initial=0) < len(oracle.raw_of) and (not raw or (oracle.raw_of[dense] == ids).all()), \
        f"{what} user {user}: ids outside the catalogue"
    assert dense.size == K and np.unique(dense).size == K, f"{what} user {user}: {dense.size} items, " \
        f"{np.unique(dense).size} distinct"
    off = np.nonzero(np.abs(u.scores[dense] - u.scores[u.top]) > TIE)[0]
    if off.size:
        r = off[0]
        pytest.fail(f"{what} user {user}: rank {r} holds item {dense[r]} (torch score {u.scores[dense[r]]:.6f}), "
                    f"the torch top-{K} has item {u.top[r]} ({u.scores[u.top[r]]:.6f}) there; "
                    f"{off.size} of {K} ranks differ\n  got    {dense.tolist()}\n  oracle {u.top.tolist()}")
    if scores is not None:
        np.testing.assert_allclose(scores, u.scores[dense], rtol=1e-4, atol=1e-4, err_msg=f"{what} user {user}")


@pytest.mark.serving
def test_served_answers_match_the_oracle(served, oracle):
    """All users at once (the client sends them concurrently, so the server batches them as in production)."""
    from nann_client import NannClient

    assert served.info["limits"]["max_ef"] == LIMITS.maximum("ef")
    assert served.info["limits"]["max_rounds"] == LIMITS.maximum("rounds")
    with NannClient(served.server.grpc_url, timeout=120.0) as client:
        answers = client.retrieve_many([u.raw_history for u in oracle.users], K, ef=EF, rounds=ROUNDS, frontier=0)
    for i, answer in enumerate(answers):
        assert_matches(oracle, i, answer.item_ids, "served", scores=answer.scores)


@pytest.mark.parametrize("workers", [1, 3])
def test_offline_retrieve_matches_the_oracle(tiny_run, oracle, workers):
    """`nann retrieve`'s library path (OfflineRetriever: the served services without a server), all users in one
    batch: walked as one, or as 3 shards in parallel threads with one-thread scorers."""
    from nann.engine.search import SearchParams
    from nann.serving.retrieval import OfflineRetriever

    params = SearchParams(EF, ROUNDS, top_m=K, frontier=0)
    histories = [u.raw_history for u in oracle.users]
    retriever = OfflineRetriever(tiny_run.run, workers=workers)
    assert (retriever.shard_scorer is not None) == (workers > 1)
    answers = retriever.retrieve(histories, [params] * len(histories))
    assert len(answers) == len(histories)
    for i, answer in enumerate(answers):
        assert_matches(oracle, i, answer[0], "OfflineRetriever", scores=answer[1])


def comma_list(values) -> str:
    return ",".join(str(int(v)) for v in values)


@pytest.mark.parametrize("user", [0, 1, 2])
def test_retrieve_command_matches_the_oracle(tiny_run, oracle, user, capsys):
    assert cli_main(["retrieve", "--run", str(tiny_run.run), "--history", comma_list(oracle.users[user].raw_history),
                     "--k", str(K), "--ef", comma_list(EF), "--rounds", comma_list(ROUNDS), "--frontier", "0",
                     "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert_matches(oracle, user, answer["item_ids"], "nann retrieve", scores=answer["scores"])


def test_evaluate_matches_the_oracle(tiny_run, oracle):
    """`nann evaluate`'s retrieved lists (Evaluator.search, dense ids) with the same search."""
    from nann.engine.params import SearchParams
    from nann.evaluate import Evaluator, MethodSpec

    evaluator = Evaluator(tiny_run.run, tiny_run.data, users=len(oracle.users))
    ids, scored, _ = evaluator.search(MethodSpec("beam", SearchParams(EF, ROUNDS, top_m=K, frontier=0)))
    assert LIMITS.maximum("ef") >= len(oracle.raw_of), "the oracle's search is no longer exhaustive"
    assert scored.min() == len(oracle.raw_of), "the exhaustive walk did not score every item"
    for i in range(len(oracle.users)):
        assert_matches(oracle, i, ids[i], "nann evaluate", raw=False)


def test_a_batch_mixing_layer_counts_answers_each_request_as_alone(tiny_run, oracle):
    """The defaults' layers beside the paper's three (a client's own ef/rounds): each request searches in the group
    of its layer count, and its answer equals the answer it gets alone."""
    from dataclasses import replace

    from nann.engine.search import PAPER_SEARCH
    from nann.serving.requests import parse_search
    from nann.serving.retrieval import OfflineRetriever

    retriever = OfflineRetriever(tiny_run.run)
    default = parse_search(retriever.limits, k=K)
    paper = replace(PAPER_SEARCH, top_m=K)
    assert len(default.ef) != len(paper.ef)
    histories = [u.raw_history for u in oracle.users[:6]]
    params = [default, paper] * 3
    mixed = retriever.retrieve(histories, params)
    for h, p, answer in zip(histories, params, mixed):
        alone, = retriever.retrieve([h], [p])
        assert answer.item_ids.tolist() == alone.item_ids.tolist()
        np.testing.assert_allclose(answer.scores, alone.scores, rtol=1e-5, atol=1e-6)
