"""The `nann` command line. Each subcommand imports its module lazily so `nann --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

from nann.errors import UserError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nann", description="NANN Serve: neural-metric retrieval on Triton.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate or prepare UserBehavior data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    s = dsub.add_parser("synth", help="write a synthetic UserBehavior.csv")
    s.add_argument("--out", required=True, help="output directory (gets UserBehavior.csv)")
    s.add_argument("--users", type=int, default=20_000)
    s.add_argument("--items", type=int, default=100_000)
    s.add_argument("--categories", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler="nann.data.synth:main")

    s = dsub.add_parser("prepare", help="split a UserBehavior CSV into train/val/test arrays")
    s.add_argument("--csv", required=True, help="UserBehavior-format CSV (no header)")
    s.add_argument("--out", required=True, help="output data directory")
    s.add_argument("--max-seq", type=int, default=50)
    s.add_argument("--min-behaviors", type=int, default=10)
    s.add_argument("--test-users", type=int, default=10_000)
    s.add_argument("--val-users", type=int, default=10_000)
    s.add_argument("--max-malformed", type=float, default=0.01,
                   help="fail if more than this share of rows is malformed (default 0.01)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler="nann.data.prepare:main")

    s = sub.add_parser("train", help="train a model on prepared data and export its ONNX parts")
    s.add_argument("--data", required=True)
    s.add_argument("--run", required=True)
    s.add_argument("--arch", choices=["attention", "mlp", "two-tower", "deep-retrieval"],
                   default="attention")
    s.add_argument("--fgsm-eps", type=float, default=3e-4)
    s.add_argument("--no-interactions", dest="interactions", action="store_false",
                   help="score network input without the element-wise products (ablation; attention / mlp)")
    s.add_argument("--negatives", type=int, default=199)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--max-samples", type=int, default=0, help="cap on training samples per epoch (0 = all)")
    s.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0 = end of each epoch)")
    s.add_argument("--eval-users", type=int, default=0,
                   help="users for the brute-force recall checks (0 = 200 val / 500 test on CPU, 1000 / 2000 on GPU)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default 0: OMP_NUM_THREADS when set, else the cores per rank)")
    s.add_argument("--denormals", choices=["flush", "keep"], default="flush",
                   help="flush (default): treat denormal floats as zero, which keeps CPU steps fast; "
                        "keep: IEEE denormals (for comparisons)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler="trainer.train:main")

    s = sub.add_parser("graph", help="build the HNSW graph over the run's item embeddings")
    s.add_argument("--run", required=True)
    s.add_argument("--m", type=int, default=32)
    s.add_argument("--ef-construction", type=int, default=40)
    s.add_argument("--threads", type=int, default=0, help="0 = all cores")
    s.add_argument("--seed", type=int, default=100)
    s.set_defaults(handler="graph_builder.build:main")

    s = sub.add_parser("evaluate", help="offline retrieval quality on the test users")
    s.add_argument("--run", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--method", choices=["beam", "hnsw", "brute", "dr"], default="beam")
    s.add_argument("--ef", type=_int_list, default=[100, 200, 400], help="per layer, top layer first")
    s.add_argument("--rounds", type=_int_list, default=[1, 1, 3], help="per layer, top layer first")
    s.add_argument("--frontier", type=int, default=0,
                   help="beam: list entries expanded per round, best first (0 = every new entry, Algorithm 2)")
    s.add_argument("--top-m", type=int, default=200)
    s.add_argument("--beam", type=int, default=None, help="--method dr: beam width (default: the run's)")
    s.add_argument("--users", type=int, default=0, help="evaluate at most this many test users (0 = all)")
    s.add_argument("--batch", type=int, default=32, help="requests advanced together")
    s.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    s.add_argument("--sweep", action="store_true", help="vary the search budget and write curves")
    s.add_argument("--json", help="write the metrics to this file")
    s.set_defaults(handler="nann.evaluate:main_evaluate")

    s = sub.add_parser("retrieve", help="top-k items for one history, offline (no server)")
    s.add_argument("--run", required=True)
    s.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    s.add_argument("--k", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler="nann.evaluate:main_retrieve")

    s = sub.add_parser("export", help="assemble a Triton model repository from a run")
    s.add_argument("--run", required=True)
    s.add_argument("--repo", required=True)
    s.add_argument("--scorer", choices=["auto", "tensorrt", "onnxruntime", "torch"], default="auto")
    s.set_defaults(handler="nann.serving.export:main")

    s = sub.add_parser("serve", help="run tritonserver on an exported repository")
    s.add_argument("--repo", required=True)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    s.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="none (default): the model-control API is off; poll: load new versions as they are exported")
    s.add_argument("--triton-arg", action="append", dest="triton_args", default=[], metavar="ARG",
                   help="extra tritonserver option, repeatable (e.g. --triton-arg=--grpc-use-ssl=true)")
    s.set_defaults(handler="nann.serving.server:main")

    s = sub.add_parser("query", help="ask a running server for one user's top-k")
    s.add_argument("--url", required=True, help="HOST:PORT of Triton's gRPC endpoint")
    s.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    s.add_argument("--k", type=int, default=None)
    s.add_argument("--timeout", type=float, default=10.0, help="seconds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler="nann.query:main")

    s = sub.add_parser("perf", help="load tests and side-by-side retrieval benchmarks (writes perf/results/)")
    s.add_argument("--quick", action="store_true", help="small data and short intervals (a few minutes; CI smoke test)")
    s.add_argument("--out", default="perf/results", help="directory for raw results and plots")
    s.add_argument("--items", type=_int_list, default=None, help="item counts for the side-by-side benchmark")
    s.add_argument("--skip-load", action="store_true", help="skip the perf_analyzer load tests")
    s.set_defaults(handler="perf.run:main")

    s = sub.add_parser("demo", help="the whole pipeline on embedded synthetic data")
    s.add_argument("--workdir", default="demo")
    s.set_defaults(handler="nann.demo:main")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
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
