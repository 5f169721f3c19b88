"""The `nann` command line. Each subcommand imports its module lazily so `nann --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from graph_builder import GRAPH_EF_CONSTRUCTION, GRAPH_M, SCORE_METRIC_MAX_ITEMS
from nann import scorers
from nann.engine.params import DEFAULT_SEARCH, RESULT_SIZE, SCALING_BASE_ITEMS, WALK_TUNABLES, Tunable, default_search
from nann.errors import UserError
from trainer import recipe



def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def search_flag(tunable: Tunable) -> str:
    """The command line's flag of a search tunable: its served name (`--k` for top_m)."""
    return "--" + tunable.name.replace("_", "-")


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_search_flags(s: argparse.ArgumentParser, served: bool, paper: bool, result_flag: str = "--k",
                      result_help: str = "") -> None:
    """One flag per search tunable (`nann.engine.params.TUNABLES`; dest: the SearchParams field; None = not given: the
    defaults apply), the result size first as `result_flag`; --paper selects the paper's walk. served: the defaults
    are the server's (nann query) rather than the catalogue's (`default_search`; the graph's calibrated walk below)."""
    smaller, larger = default_search(SCALING_BASE_ITEMS // 10), default_search(10 * SCALING_BASE_ITEMS)

    def default(t: Tunable) -> str:
        value = getattr(DEFAULT_SEARCH, t.field)
        scaled = {(False, True): f" up to {SCALING_BASE_ITEMS:,} items, wider above",
                  (True, True): f" at {SCALING_BASE_ITEMS:,} items; the last layer's: the graph's (nann graph)"}.get(
            (getattr(smaller, t.field) != value, getattr(larger, t.field) != value), "")
        return "default: the server's" if served else f"default {_text(value)}{scaled}"

    for t in (RESULT_SIZE, *WALK_TUNABLES):
        flag, what = (result_flag, result_help or t.help) if t is RESULT_SIZE else (search_flag(t), t.help)
        s.add_argument(flag, dest=t.field, type=_int_list if t.per_layer else int, default=None,
                       metavar=flag.lstrip("-").replace("-", "_").upper(), help=f"{what} ({default(t)})")
    if paper:
        walk = ", ".join(f"{t.name} {_text(t.paper)}" for t in WALK_TUNABLES)
        s.add_argument("--paper", action="store_true",
                       help=f"the paper's search parameters ({walk}) instead of the defaults; not with "
                            + ", ".join(search_flag(t) for t in WALK_TUNABLES))


def _add_filter_flags(s: argparse.ArgumentParser, blocked: bool) -> None:
    """The eligibility filters (the served inputs exclude, exclude_history, categories); --blocked: the server's
    blocked set, offline."""
    s.add_argument("--exclude", type=_int_list, default=None, metavar="IDS",
                   help="comma-separated raw item ids not to return, e.g. already bought; unknown ids are ignored "
                        "(default: none)")
    s.add_argument("--exclude-history", action="store_true",
                   help="do not return items of the history (default: off)")
    s.add_argument("--categories", type=_int_list, default=None, metavar="IDS",
                   help="comma-separated raw category ids: return only items of these (default: every category)")
    if blocked:
        s.add_argument("--blocked", default=None, metavar="FILE",
                       help="raw item ids nobody gets, as the server's blocked set (`nann items block`): one id per "
                            "line, or a .npy int64 array (default: none)")


def _add_items_file_flags(s: argparse.ArgumentParser, delimiter_flag: str, default_columns: str | None) -> None:
    """How an items file is read (nann.data.items): its columns, delimiter and category separator."""
    s.add_argument("--item-columns", metavar="item=COL,category=COL", default=default_columns,
                   help="the items file's id and category columns, by header name or 1-based position; "
                        "category=flags:A-B takes the first set one-hot flag of columns A..B (its 0-based index), "
                        f"e.g. item=movieId,category=genres or item=1,category=flags:6-24 (default: "
                        f"{default_columns or 'none'})")
    s.add_argument(delimiter_flag, default=None, help="the items file's field separator, any string (default: "
                                                      "sniffed from its first line, as --delimiter)")
    s.add_argument("--category-separator", default="|",
                   help="a category field holding several values (genres 'Animation|Comedy') gives the first, "
                        "split on this; '' keeps the whole text (default '|')")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nann", description="NANN Serve: neural-metric retrieval on Triton.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate or prepare interaction data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    s = dsub.add_parser("synth", help="write a synthetic UserBehavior.csv")
    s.add_argument("--out", required=True, help="output directory (gets UserBehavior.csv)")
    s.add_argument("--users", type=int, default=20_000, help="synthetic users (default 20,000)")
    s.add_argument("--items", type=int, default=100_000,
                   help="catalogue size before prepare drops unseen items (default 100,000)")
    s.add_argument("--categories", type=int, default=500, help="item categories (default 500)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same file (default 0)")
    s.set_defaults(handler="nann.data.synth:main")

    s = dsub.add_parser("prepare", help="split interaction logs (UserBehavior CSV, delimited text, Parquet) "
                                        "into train/val/test arrays")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE", help="interaction file: UserBehavior CSV, delimited text (CSV, TSV, "
                                                     "'::'...; with a header or not), or Parquet (see --format)")
    src.add_argument("--csv", metavar="FILE", help="UserBehavior CSV (no header): the same as --input FILE "
                                                   "--format userbehavior")
    s.add_argument("--format", choices=["auto", "userbehavior", "csv", "tsv", "parquet"], default="auto",
                   help="input format (default auto: .parquet/.pq or Parquet magic -> parquet, .tsv/.tab -> tsv, "
                        "a first line that is a UserBehavior row and no --columns -> userbehavior, else csv)")
    s.add_argument("--columns", metavar="ROLE=COL,...",
                   help="delimited text and Parquet: which column holds what, by header name or 1-based "
                        "position, e.g. user=userId,item=movieId,time=timestamp or user=1,item=2,rating=3,time=4 "
                        "(required roles: user, item, time; optional: category, behavior, rating). By position, "
                        "the first line is a header unless a field of it is a number or an ISO date (see "
                        "--no-header). Without category every item gets one shared category (0): "
                        "the item input is concat(id embedding, category embedding) and cold items lean on the "
                        "category, so a per-item category would only be a second id embedding with nothing to "
                        "share, while a shared one is a harmless constant. Without behavior every row is pv. "
                        "Time: unix seconds, or ISO-8601 text or a timestamp/date type (no zone = UTC). "
                        "(default: none; needed for those formats)")
    s.add_argument("--delimiter", help="field separator of delimited input, any string ('::' for MovieLens 1M) or "
                                       "'tab' (default: tab for tsv, else '::' if it occurs at least as often as the "
                                       "most frequent of , tab ; | in the first line, else that one)")
    s.add_argument("--encoding", default=None,
                   help="text encoding of the input and items files, e.g. latin-1 (default utf-8)")
    s.add_argument("--no-header", action="store_true",
                   help="files read by position have no header line, whatever their first line holds (default: "
                        "a first line with no number and no ISO date is a header)")
    s.add_argument("--hash-ids", metavar="ROLES",
                   help="comma-separated id roles (user, item, category) whose values are strings (ASINs, UUIDs): "
                        "each maps to a stable int64 (BLAKE2b, nann.data.string_ids.string_id) and "
                        "ROLE_keys.npz in --out keeps the keys (default: none; ids must be integers)")
    s.add_argument("--min-rating", type=float, default=None,
                   help="drop rows whose rating (--columns rating=...) is below this; counted in stats.json as "
                        "below_min_rating, not as malformed (default: keep every rating)")
    s.add_argument("--time-window", metavar="START,END", default=None,
                   help="treat timestamps outside [START, END) as malformed; unix seconds or ISO-8601 dates, e.g. "
                        "2000-01-01,2100-01-01 (default: off, any timestamp >= 0 is valid)")
    s.add_argument("--items", metavar="FILE", default=None,
                   help="an items file giving each item its category, joined by item id (it wins over the log's "
                        "category column; items it lacks share one unknown category); needs --item-columns")
    _add_items_file_flags(s, "--item-delimiter", None)
    s.add_argument("--out", required=True, help="output data directory")
    s.add_argument("--split", choices=["auto", "users", "last"], default="auto",
                   help="users: held-out users, the ceil(l/2)-th behaviour their target (the paper's); last: "
                        "leave-last-out, every user's last behaviour its test target, the one before validation, "
                        "the rest trains; auto: users when at least 10,000 users have --min-behaviors, else last "
                        "(default auto)")
    s.add_argument("--max-seq", type=int, default=50, help="behaviours kept before a target (default 50)")
    s.add_argument("--min-behaviors", type=int, default=None,
                   help="drop users with fewer valid behaviours (default 10 for --split users, 5 for last)")
    s.add_argument("--test-users", type=int, default=10_000,
                   help="test users (default 10000; split users: at most a tenth of the users; last: a sample "
                        "of the users, who keep training)")
    s.add_argument("--val-users", type=int, default=10_000,
                   help="validation users (default 10000; as --test-users)")
    s.add_argument("--max-malformed", type=float, default=0.01,
                   help="fail if more than this share of rows is malformed (default 0.01)")
    s.add_argument("--seed", type=int, default=0, help="seed of the val/test user draw (default 0)")
    s.set_defaults(handler="nann.data.prepare:main")

    s = sub.add_parser("train", help="train a model on prepared data and export its ONNX parts")
    s.add_argument("--data", required=True, help="prepared data directory (`nann data prepare --out`)")
    s.add_argument("--run", required=True,
                   help="run directory: model, checkpoint, log and ONNX parts go here; an existing run with a "
                        "checkpoint resumes")
    s.add_argument("--arch", choices=["attention", "mlp", "two-tower", "deep-retrieval"], default="attention",
                   help="attention (default: target attention, the paper's model), mlp (DNN w/o attention), "
                        "two-tower (inner product), deep-retrieval (the DR baseline)")
    s.add_argument("--baseline", choices=["two-tower", "none"], default="two-tower",
                   help="also train this baseline on the same data (into RUN/baseline) and print the model's test "
                        "recall beside it and popularity, with intervals (default two-tower; none skips it). It "
                        "trains first, and the model is kept only where it beats it on validation (--no-warm-start)")
    s.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not validate the two-tower baseline as the model's epoch 0 (an ablation; default: with the "
                        "user tower, the model made equal to the trained two-tower model, its other terms zero, is "
                        "epoch 0, and the run keeps it unless a trained epoch beats it on validation; where none does, "
                        "training goes on from it, what it copied at a tenth of the learning rate)")
    s.add_argument("--fgsm-eps", type=float, default=recipe.FGSM_EPS,
                   help=f"FGSM step ε of the paper's adversarial auxiliary task on e_v (default {recipe.FGSM_EPS:g}: off; "
                        f"the paper's {recipe.PAPER_FGSM_EPS:g} changes the gradient by ~1e-6 on our models and doubles "
                        "the time of a step: trainer/recipe.py)")
    s.add_argument("--no-interactions", dest="interactions", action="store_false",
                   help="score network input without the element-wise products (an ablation; default: with them)")
    s.add_argument("--no-recency", dest="recency", action="store_false",
                   help="behaviours without recency embeddings (an ablation; default: with them)")
    s.add_argument("--no-dot", dest="dot", action="store_false",
                   help="the score network alone, without the inner products of e_v with the user vector and the "
                        "attention output added to the score (an ablation; default: with them)")
    s.add_argument("--no-user-tower", dest="user_tower", action="store_false",
                   help="the user vector's inner product with e_v weighted per dimension instead of through a user "
                        "tower, <T(u), e_v> (an ablation; default: through the tower)")
    s.add_argument("--loss", choices=["nce", "softmax"], default="nce", help="nce (default) or sampled softmax")
    s.add_argument("--negatives", type=int, default=recipe.NEGATIVES,
                   help=f"NCE noise items per positive, from the unigram distribution (default {recipe.NEGATIVES}; the "
                        f"paper's {recipe.PAPER_NEGATIVES} cost 5x the time for no better recall: trainer/recipe.py)")
    s.add_argument("--uniform-noise", type=float, default=recipe.UNIFORM_NOISE, metavar="SHARE",
                   help=f"share of the noise items drawn uniformly over the items, the rest from the unigram "
                        f"distribution (default {recipe.UNIFORM_NOISE:g}: unigram alone leaves rare items' scores "
                        "unchecked; trainer/recipe.py)")
    s.add_argument("--epochs", type=int, default=0,
                   help="passes over the training samples (default 0: as many as help, until the validation recall "
                        f"stops improving, within {recipe.SAMPLE_BUDGET:,} samples and {recipe.MAX_EPOCHS} epochs); "
                        "on resume, the run's total; a run that goes on from its two-tower baseline trains up to as "
                        "many more")
    s.add_argument("--patience", type=int, default=recipe.PATIENCE,
                   help="stop after this many epochs without a better validation recall; the run keeps the best "
                        f"epoch's model (default {recipe.PATIENCE}; 0 = train every epoch)")
    s.add_argument("--batch-size", type=int, default=256, help="positives per step (default 256)")
    s.add_argument("--lr", type=float, default=3e-3,
                   help="Adam and SparseAdam learning rate (default 3e-3, the paper's; 1e-3 is steadier beyond ~1,000 "
                        "steps)")
    s.add_argument("--max-samples", type=int, default=0, help="cap on training samples per epoch (0 = all)")
    s.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0 = end of each epoch)")
    s.add_argument("--eval-users", type=int, default=0,
                   help="users for the brute-force recall checks (default 0: by catalogue size, trainer/recipe.py: "
                        "on CPU 200-2,000 validation and 500-10,000 test users, the most on GPU)")
    s.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu or cuda")
    s.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default 0: OMP_NUM_THREADS when set, else the cores per rank)")
    s.add_argument("--export-only", action="store_true",
                   help="do not train: rewrite a finished run's ONNX parts and item embeddings from its "
                        "model.safetensors (after an upgrade changed the export)")
    s.add_argument("--denormals", choices=["flush", "keep"], default="flush",
                   help="flush (default): treat denormal floats as zero, which keeps CPU steps fast; "
                        "keep: IEEE denormals (for comparisons)")
    s.add_argument("--seed", type=int, default=0, help="seed of initialisation, sample order and noise (default 0)")
    s.set_defaults(handler="trainer.train:main")

    s = sub.add_parser("graph", help="build the HNSW graph over the run's item embeddings")
    s.add_argument("--run", required=True, help="a trained run directory (the graph goes to RUN/graph)")
    s.add_argument("--m", type=int, default=GRAPH_M,
                   help=f"HNSW links per node (default {GRAPH_M}; layer 0 allows 2M)")
    s.add_argument("--ef-construction", type=int, default=GRAPH_EF_CONSTRUCTION,
                   help=f"HNSW build beam width (default {GRAPH_EF_CONSTRUCTION}; the paper used 40)")
    s.add_argument("--metric", choices=["auto", "score", "l2"], default="auto",
                   help="score: link items the model scores alike (L2 after the score-sensitivity transform, "
                        "graph_builder/metric.py); l2: plain L2 between item embeddings (the paper); auto (default): "
                        f"score up to {SCORE_METRIC_MAX_ITEMS:,} items, l2 above (measured, perf/RESULTS.md)")
    s.add_argument("--data", default=None,
                   help="prepared data of the run's training (default: the data_dir in RUN/config.json); "
                        "--metric score samples training histories from it, the calibration of the search defaults "
                        "its validation users")
    s.add_argument("--threads", type=int, default=0, help="build threads (default 0: all cores)")
    s.add_argument("--seed", type=int, default=100, help="random seed of the build (default 100)")
    s.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help=f"below {SCALING_BASE_ITEMS:,} items the graph's search defaults take the walk (last-layer ef, "
                        "frontier, lists above layer 0) that reaches a validation coverage@200 a little above 0.99 "
                        "scoring the fewest items (measured on up to 2,000 validation users of --data after the build, "
                        "nann/calibration.py); this flag skips that: the last-layer ef then follows the catalogue size "
                        "(for data without validation users)")
    s.set_defaults(handler="graph_builder.build:main")

    items = sub.add_parser("items", help="catalogue operations: add items to a run without retraining, block "
                                         "items of a served repository")
    isub = items.add_subparsers(dest="items_command", required=True, metavar="COMMAND")
    s = isub.add_parser("block", help="replace the served repository's blocked set (items nobody gets: out of stock, "
                                      "delisted); a running server picks it up within a second, no restart or reload")
    s.add_argument("--repo", required=True, help="an exported repository (`nann export`); the set is kept in its root "
                                                 "as raw ids, so it also applies to later exports into it")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", metavar="FILE", help="the new blocked set: raw item ids, one per line (# comments "
                                                    "allowed), or a .npy int64 array; it replaces the old set")
    what.add_argument("--clear", action="store_true", help="unblock every item")
    s.set_defaults(handler="nann_cli.items:main_block")
    s = isub.add_parser("add", help="add new items to a run: e_v from their category, inserted into the graph")
    s.add_argument("--run", required=True, help="a trained run with a graph (its files are replaced, never rewritten)")
    s.add_argument("--csv", required=True, metavar="FILE",
                   help="an items file, as `nann data prepare --items` reads (default columns: item_id,category_id "
                        "per line, raw int64 ids, optional header); ids already in the run are skipped and counted; "
                        "a category the model was not trained on refuses the file")
    _add_items_file_flags(s, "--delimiter", "item=1,category=2")
    s.add_argument("--encoding", default=None, help="the items file's text encoding, e.g. latin-1 (default utf-8)")
    s.add_argument("--no-header", action="store_true", help="the items file has no header line (default: a first "
                                                            "line with no number and no ISO date is a header)")
    s.add_argument("--threads", type=int, default=0, help="graph insertion threads (default 0: all cores)")
    s.add_argument("--max-malformed", type=float, default=0.01,
                   help="fail if more than this share of lines is malformed (default 0.01)")
    s.set_defaults(handler="trainer.add_items:main")

    s = sub.add_parser("evaluate", help="offline retrieval quality on the test users")
    s.add_argument("--run", required=True, help="trained run directory with a graph (`nann graph`)")
    s.add_argument("--data", required=True, help="prepared data directory: its test users are evaluated")
    s.add_argument("--method", choices=["beam", "hnsw", "brute", "dr"], default="beam",
                   help="beam (default: NANN's beam walk), hnsw (HNSW retrieval with the neural score), brute "
                        "(exact), dr (a Deep Retrieval run)")
    _add_search_flags(s, served=False, paper=True, result_flag="--top-m",
                      result_help="M of the metrics: the items each search returns")
    _add_filter_flags(s, blocked=True)
    s.add_argument("--beam", type=int, default=None, help="--method dr: beam width (default: the run's)")
    s.add_argument("--users", type=int, default=0, help="evaluate at most this many test users (0 = all)")
    s.add_argument("--batch", type=int, default=32,
                   help="requests advanced together, one scorer call per round for all (default 32)")
    s.add_argument("--backend", choices=scorers.in_python(), default="onnxruntime",
                   help="scorer runtime: " + ", ".join(f"{name} ({scorers.runtime(name).summary})"
                                                       for name in scorers.in_python())
                        + " (default onnxruntime: what the CPU server runs)")
    s.add_argument("--sweep", action="store_true", help="vary the search budget and write curves")
    s.add_argument("--json", help="also write the metrics as JSON to this file (default: print only)")
    s.set_defaults(handler="nann_cli.evaluate:main_evaluate")

    s = sub.add_parser("retrieve", help="top-k items for one history, offline (no server)")
    s.add_argument("--run", required=True, help="trained run directory with a graph (`nann graph`)")
    s.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first ('' = a new user)")
    _add_search_flags(s, served=False, paper=True)
    _add_filter_flags(s, blocked=True)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler="nann_cli.evaluate:main_retrieve")

    s = sub.add_parser("export", help="assemble a Triton model repository from a run")
    s.add_argument("--run", required=True, help="trained run directory with a graph")
    s.add_argument("--repo", required=True,
                   help="model repository to write; an existing one gets a new version of every model")
    s.add_argument("--scorer", choices=["auto", *scorers.RUNTIMES], default="auto",
                   help="auto (default: the first GPU runtime this host has, else the faster CPU runtime measured on "
                        "this run), " + ", ".join(f"{name} ({r.summary})" for name, r in scorers.RUNTIMES.items()))
    s.add_argument("--unknown-ids", choices=["skip", "refuse"], default="skip",
                   help="history ids the index does not know: skip (default: dropped, counted in the response and "
                        "the metrics) or refuse the request (INVALID_ARG naming them)")
    s.add_argument("--bls", action="store_true",
                   help="serve a Python scorer (onnxruntime, torch) as its own `scorer` model called through BLS "
                        "instead of inside `retrieve` (default); to compare the two: python -m perf.serving_params "
                        "--param placement")
    s.add_argument("--env-path", default=None, metavar="DIR",
                   help="Python environment the serving host's Python models run in (EXECUTION_ENV_PATH: a venv "
                        "with this project installed; default: this Python's, sys.prefix)")
    s.set_defaults(handler="nann.serving.export:main")

    s = sub.add_parser("serve", help="run tritonserver on an exported repository")
    s.add_argument("--repo", required=True, help="an exported model repository (`nann export`)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    s.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="none (default): the model-control API is off; poll: load new versions as they are exported")
    s.add_argument("--triton-arg", action="append", dest="triton_args", default=[], metavar="ARG",
                   help="extra tritonserver option, repeatable (default none; e.g. --triton-arg=--grpc-use-ssl=true)")
    s.add_argument("--tritonserver", default=None, metavar="PATH",
                   help="another Triton build's tritonserver (e.g. NGC's /opt/tritonserver/bin/tritonserver, needed "
                        "for a TensorRT scorer); default: $NANN_TRITONSERVER, else the one bundled in nvidia-pytriton")
    s.add_argument("--backend-directory", default=None, metavar="DIR",
                   help="Triton backend directory (default: the bundled Python backend, or PATH/../../backends "
                        "with --tritonserver PATH)")
    s.set_defaults(handler="nann.serving.server:main")

    s = sub.add_parser("query", help="ask a running server for one user's top-k")
    s.add_argument("--url", required=True, help="HOST:PORT of Triton's gRPC endpoint")
    s.add_argument("--history", default=None, help="comma-separated raw item ids, oldest first ('' = a new user); "
                                                   "required unless --info")
    _add_search_flags(s, served=True, paper=False)
    _add_filter_flags(s, blocked=False)
    s.add_argument("--info", action="store_true",
                   help="print what the server says about itself (nann_info: sizes, defaults, limits) and the size "
                        "and version of its blocked set (from its metrics) as JSON, instead of querying")
    s.add_argument("--metrics-url", default=None, metavar="URL",
                   help="Triton's metrics endpoint for --info (default: http://HOST:8002/metrics, HOST from --url)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler="nann_cli.query:main")

    s = sub.add_parser("perf", help="load tests and side-by-side retrieval benchmarks (writes perf/results/)")
    s.add_argument("--quick", action="store_true", help="small data and short intervals (a few minutes; CI smoke test)")
    s.add_argument("--out", default="perf/results", help="directory for raw results and plots (default perf/results)")
    s.add_argument("--items", type=_int_list, default=None, help="item counts for the side-by-side benchmark")
    s.add_argument("--skip-load", action="store_true", help="skip the perf_analyzer load tests")
    s.set_defaults(handler="perf.run:main")

    s = sub.add_parser("demo", help="the whole pipeline on embedded synthetic data")
    s.add_argument("--workdir", default="demo",
                   help="work directory; steps whose output exists there are skipped (default demo)")
    s.set_defaults(handler="nann_cli.demo:main")
    return p


# Commands whose torch threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless the variable is
# set): beside another busy process (a shared host, a container's CPU quota below its visible cores) spinning threads
# take each other's cores, and training ran 7x slower (perf/RESULTS.md "Training speed: threads under load",
# `python -m perf.bench_threads`). libgomp reads the variable once, when torch is first imported in the process.
PASSIVE_WAIT_COMMANDS = ("train",)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command in PASSIVE_WAIT_COMMANDS:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module_name, func_name = args.handler.split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except UserError as e:
        print(f"nann {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nann {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
