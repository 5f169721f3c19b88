"""`nann evaluate` (the retrieval methods on a run's test users, the paper's metrics: `nann.evaluate`) and `nann
retrieve` (one history through the served pipeline, offline: `nann.serving.retrieval.OfflineRetriever`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nann.baselines import report, summary
from nann.engine.params import DEFAULT_SEARCH, RESULT_SIZE, WALK_TUNABLES, SearchParams, resolve
from nann.errors import UserError
from nann.evaluate import Evaluator, MethodSpec, evaluate_dr, plot_curves, sweep_specs
from nann.run_dir import RunDir
from nann.serving.filters import read_ids
from nann.serving.requests import (FILTER_INPUT_NAMES, SEARCH_INPUTS, FilterRequest, RequestError, ServingLimits,
                                   parse_filters, parse_search)
from nann.serving.retrieval import OfflineRetriever
from nann_cli.main import search_flag
from nann_cli.query import parse_history, print_answer


def search_flags(args) -> dict:
    """The SearchParams fields the command line sets (the rest keep the catalogue's defaults,
    `RunDir.search_defaults`): the walk's flags given, or with --paper all of the paper's walk, which excludes them;
    and the result size (--k, --top-m) when given."""
    given = {t.field: getattr(args, t.field) for t in WALK_TUNABLES if getattr(args, t.field) is not None}
    if args.paper:
        if given:
            raise UserError("--paper sets the paper's search parameters: drop "
                            + ", ".join(search_flag(t) for t in WALK_TUNABLES if t.field in given))
        given = {t.field: t.paper for t in WALK_TUNABLES}
    if args.top_m is not None:
        given[RESULT_SIZE.field] = args.top_m
    return {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}


def method_spec(method: str, defaults: SearchParams, flags: dict) -> MethodSpec:
    """What `nann evaluate` runs: `method` with the catalogue's search `defaults` (`RunDir.search_defaults`) and the
    search `flags` given over them (`resolve`)."""
    try:
        return MethodSpec(method, resolve(defaults, **flags))
    except ValueError as e:
        raise UserError(str(e)) from None


def filter_flags(args, limits: ServingLimits) -> FilterRequest:
    """The filters the command line sets (--exclude, --exclude-history, --categories), read as the server reads them."""
    try:
        return parse_filters(limits, **{name: getattr(args, name) for name in FILTER_INPUT_NAMES})
    except RequestError as e:
        raise UserError(str(e)) from None


def print_metrics(m: dict) -> None:
    print(f"{m['method']:>6}  users {m['users']}  recall-all@{m['top_m']} {m['recall_all']:.4f}  "
          f"recall-retrieval {m['recall_retrieval']:.4f}  recall-Δ {m['recall_delta'] * 100:.2f}%  "
          f"coverage {m['coverage']:.4f}  scored {m['scored_fraction'] * 100:.2f}% of |V|  "
          f"{m['seconds_per_query'] * 1000:.1f} ms/query  (popularity baseline recall "
          f"{m.get('popularity_recall', float('nan')):.4f})")


def main_evaluate(args) -> int:
    flags = search_flags(args)
    filters = filter_flags(args, ServingLimits())
    if args.method in ("hnsw", "dr") and (filters.restricts or args.blocked):
        raise UserError(f"eligibility filters apply to --method beam and brute, not {args.method}")
    if args.method == "dr":
        m = evaluate_dr(args.run, args.data, users=args.users, top_m=flags.get(RESULT_SIZE.field, DEFAULT_SEARCH.top_m),
                        beam=args.beam)
        print_metrics(m)
        if args.json:
            Path(args.json).write_text(json.dumps(m, indent=1))
        return 0
    ev = Evaluator(args.run, args.data, users=args.users, batch=args.batch, backend=args.backend, filters=filters,
                   blocked=read_ids(args.blocked) if args.blocked else None)
    base = method_spec(args.method, RunDir(args.run).search_defaults(), flags)
    specs = sweep_specs(base) if args.sweep else [base]
    results = []
    for spec in specs:
        m = ev.evaluate(spec)
        print_metrics(m)
        results.append(m)
    model_hits, baselines = ev.comparison(base.params.top_m)
    arch = RunDir(args.run).read_config().get("arch", "model")
    print(report(arch, model_hits, baselines, base.params.top_m))
    compared = summary(arch, model_hits, baselines, base.params.top_m)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        out = {"points": results, "baselines": compared} if args.sweep else {**results[0], "baselines": compared}
        Path(args.json).write_text(json.dumps(out, indent=1))
        if args.sweep:
            plot_curves({base.method: results}, Path(args.json).with_suffix(".png"))
    return 0


def main_retrieve(args) -> int:
    """`nann retrieve`: the served pipeline offline; the flags go through the server's own request parsing."""
    history = np.array(parse_history(args.history), dtype=np.int64)
    flags = search_flags(args)
    retriever = OfflineRetriever(args.run, blocked=read_ids(args.blocked) if args.blocked else None)
    filters = filter_flags(args, retriever.limits)
    try:
        params = parse_search(retriever.limits, **{s.name: flags[s.field] for s in SEARCH_INPUTS if s.field in flags})
        answer, = retriever.retrieve([history], [params], [filters])
    except RequestError as e:
        raise UserError(str(e)) from None
    print_answer(*answer, as_json=args.json)
    return 0
