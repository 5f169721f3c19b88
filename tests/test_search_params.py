"""One owner of the search parameters: every caller of the engine asking for k = 500 at the catalogue's default
last-layer ef (`RunDir.search_defaults`, below 500) gets the same 500 items in the same order, because the engine itself
walks the last layer with a list of at least k entries (`SearchParams.walk_ef`): the served ensemble, `nann retrieve`,
`nann evaluate --top-m` (its Evaluator search, `--batch 1`: one user per encoder call, as the server encodes) and a
replay (nann.replay's ScoreCache, the engine on cached scores, as the perf tools and the calibration run it)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nann.engine.params import DEFAULT_SEARCH, RESULT_SIZE, TUNABLES, SearchParams
from nann.run_dir import RunDir
from nann.serving.requests import ServingLimits

K = 500
USERS = 5


def test_the_table_defines_the_defaults_the_bounds_and_the_paper_values():
    assert [t.field for t in TUNABLES] == ["ef", "rounds", "top_m", "frontier", "seeds", "patience"]
    assert SearchParams() == SearchParams(**{t.field: t.paper for t in TUNABLES})
    assert DEFAULT_SEARCH == SearchParams(**{t.field: t.default for t in TUNABLES})
    assert RESULT_SIZE.name == "k" and RESULT_SIZE.field == "top_m"
    for t in TUNABLES:
        low = (t.low - 1,) * len(SearchParams().ef) if t.per_layer else t.low - 1  # the class default: the paper
        with pytest.raises(ValueError, match=rf"{t.field} must be >= {t.low}"):
            SearchParams(**{t.field: low})
    with pytest.raises(ValueError, match="ef .* and rounds .* need the same, non-zero length"):
        SearchParams(ef=(1, 2), rounds=(1,))


@pytest.mark.serving
def test_every_caller_asking_for_k_items_gets_the_same_k_items(served, test_histories, tmp_path, capsys):
    from nann_client import NannClient

    from nann.data.prepared import PreparedData
    from nann.engine.graph import HnswGraph
    from nann.evaluate import Evaluator
    from nann_cli.evaluate import method_spec, search_flags
    from nann_cli.main import _build_parser
    from nann_cli.main import main as cli_main
    from nann.replay import ScoreCache

    defaults = RunDir(served.run).search_defaults()
    assert defaults.ef[-1] < K <= ServingLimits().maximum("k")
    histories = test_histories[:USERS]
    with NannClient(served.server.grpc_url) as client:
        served_ids = [client.retrieve(h, k=K).item_ids.tolist() for h in histories]
    assert all(len(ids) == K == len(set(ids)) for ids in served_ids)

    for history, want in zip(histories, served_ids):
        assert cli_main(["retrieve", "--run", str(served.run), "--history", ",".join(map(str, history)),
                         "--k", str(K), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["item_ids"] == want, "nann retrieve"

    data = PreparedData.load(str(served.data))
    args = _build_parser().parse_args(["evaluate", "--run", str(served.run), "--data", str(served.data),
                                       "--top-m", str(K), "--batch", "1", "--users", str(USERS)])
    evaluator = Evaluator(args.run, args.data, users=args.users, batch=args.batch)
    spec = method_spec(args.method, defaults, search_flags(args))
    assert spec.params.ef == defaults.ef and spec.params.top_m == K
    found, _, _ = evaluator.search(spec)
    assert [data.vocab.dense_to_raw(row).tolist() for row in found] == served_ids, "nann evaluate --top-m"

    cache = ScoreCache.build(served.run, data.test, USERS, tmp_path / "scores.npy", top_m=K)
    graph = HnswGraph.load(served.run / "graph")
    found, _, _ = cache.search(graph, replace(defaults, top_m=K))  # as perf.compare asks
    assert [data.vocab.dense_to_raw(row).tolist() for row in found] == served_ids, "nann.replay"
