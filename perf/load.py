"""Load tests of a served NANN repository with Triton's perf_analyzer.

* `ensure_perf_analyzer()` finds the venv's perf_analyzer (shipped by tritonclient==2.50.0), runs
  `scripts/install_perf_analyzer.sh` when a library is missing (or raises `PerfAnalyzerUnavailable` naming
  the exact command), and returns the environment (LD_LIBRARY_PATH to the pip-installed libcudart.so.12).
* `write_input_data()` writes perf_analyzer's `--input-data` JSON from real test users of a prepared data
  set: one entry per user, its raw-id history as a variable-length INT64 tensor
  (`{"data": [{"history": {"content": [...], "shape": [L]}}, ...]}`; the batch axis is not part of shape).
* `sweep()` runs perf_analyzer once per concurrency level against the `nann` ensemble over gRPC and parses
  its `--verbose-csv` output (throughput, client p50/p90/p95/p99, server queue / compute times), plus the
  per-model statistics of Triton (executions vs inferences = the batch sizes the dynamic batcher formed).
* `without_dynamic_batching()` makes a copy of an exported repository with the `dynamic_batching { ... }`
  blocks removed (version directories hard-linked, manifests intact) for the batching on/off ratio.

Used by `nann perf` (perf/run.py); stand-alone:

    python -m perf.load --repo REPO --data DATA --out OUT [--concurrency 1,2,4,8,16,32] [--interval-ms 2000]
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install_perf_analyzer.sh"
BATCHED_MODELS = ("retrieve",)


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says why and what to run."""


def _venv() -> Path:
    return Path(sys.prefix)


def perf_analyzer_path() -> Path:
    return _venv() / "bin" / "perf_analyzer"


def cudart_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        d = Path(base) / "cuda_runtime" / "lib"
        if (d / "libcudart.so.12").exists():
            return d
    return None


def _env() -> dict:
    env = dict(os.environ)
    d = cudart_dir()
    if d is not None:
        env["LD_LIBRARY_PATH"] = str(d) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def _missing_libs(pa: Path, env: dict) -> list[str]:
    try:
        out = subprocess.run(["ldd", str(pa)], env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def ensure_perf_analyzer(install: bool = True) -> tuple[Path, dict]:
    """(perf_analyzer path, environment to run it with); installs what is missing when `install`."""
    pa = perf_analyzer_path()
    fix = f"VENV={_venv()} bash {INSTALL_SCRIPT}"
    missing = _missing_libs(pa, _env()) if pa.exists() else ["perf_analyzer"]
    if missing and install and shutil.which("bash"):
        print(f"[perf] perf_analyzer needs {', '.join(missing)}: running {fix}", file=sys.stderr)
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], env={**os.environ, "VENV": str(_venv())},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PerfAnalyzerUnavailable(
                f"perf_analyzer is not runnable (missing {', '.join(missing)}) and {INSTALL_SCRIPT.name} failed: "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout).strip() else proc.returncode}. "
                f"Run `{fix}` as a user that may apt-get install libb64-0d")
        missing = _missing_libs(pa, _env()) if pa.exists() else ["perf_analyzer"]
    if missing:
        raise PerfAnalyzerUnavailable(f"perf_analyzer is not runnable (missing {', '.join(missing)}): run `{fix}`")
    return pa, _env()


def write_input_data(data_dir: str | Path, path: str | Path, users: int = 1000) -> int:
    """perf_analyzer --input-data JSON with the raw-id histories of (up to) `users` test users."""
    from nann.data.prepared import PreparedData

    prepared = PreparedData.load(str(data_dir))
    test = prepared.test
    n = min(users, len(test))
    entries = []
    for i in range(n):
        h = prepared.vocab.dense_to_raw(test.history(i)).astype(np.int64)
        if len(h):
            entries.append({"history": {"content": [int(x) for x in h], "shape": [int(len(h))]}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"data": entries}))
    return len(entries)


def linked_copy(repo: str | Path, dst: str | Path) -> Path:
    """A copy of a repository whose files are hard links (copies across file systems): unlink a file before
    rewriting it, or the original changes too."""
    repo, dst = Path(repo), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)

    def link(src, d):
        try:
            os.link(src, d)
        except OSError:
            shutil.copy2(src, d)

    shutil.copytree(repo, dst, copy_function=link, symlinks=True)
    return dst


def block_span(text: str, name: str) -> tuple[int, int] | None:
    """(start, end) of the first `NAME { ... }` block of a config.pbtxt text, nested blocks included; None if none."""
    found = re.search(rf"\b{re.escape(name)}\s*\{{", text)
    if found is None:
        return None
    depth = 0
    for end in range(found.end() - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return found.start(), end + 1
    raise ValueError(f"the {name} block is not closed")


def without_dynamic_batching(repo: str | Path, dst: str | Path) -> Path:
    """Copy of an exported repository whose batched models have no `dynamic_batching` block."""
    dst = linked_copy(repo, dst)
    for model in BATCHED_MODELS:
        cfg = dst / model / "config.pbtxt"
        if not cfg.is_file():
            continue
        text = cfg.read_text()
        span = block_span(text, "dynamic_batching")
        new = text if span is None else text[:span[0]] + text[span[1]:].removeprefix("\n")
        if block_span(new, "dynamic_batching"):
            raise RuntimeError(f"could not remove the dynamic_batching block of {cfg}")
        cfg.unlink()  # it may be a hard link into the original repository
        cfg.write_text(new)
    return dst


# ---------------------------------------------------------------------------------------------- statistics
COMPUTE_PARTS = ("compute_input", "compute_infer", "compute_output")


def model_stats(http_url: str) -> dict[str, dict]:
    """Triton's cumulative per-model statistics, versions summed: {model: {inferences, executions, success,
    success_ns (request start to end, the model's whole time in the server), queue_ns, compute_ns, and each of
    COMPUTE_PARTS + "_ns"}}."""
    with urllib.request.urlopen(f"{http_url}/v2/models/stats", timeout=10) as r:
        data = json.loads(r.read())
    out = {}
    for m in data.get("model_stats", []):
        s = m.get("inference_stats", {})
        prev = out.setdefault(m["name"], {"inferences": 0, "executions": 0, "success": 0, "success_ns": 0,
                                          "queue_ns": 0, "compute_ns": 0, **{f"{k}_ns": 0 for k in COMPUTE_PARTS}})
        prev["inferences"] += int(m.get("inference_count", 0))
        prev["executions"] += int(m.get("execution_count", 0))
        prev["success"] += int(s.get("success", {}).get("count", 0))
        prev["success_ns"] += int(s.get("success", {}).get("ns", 0))
        prev["queue_ns"] += int(s.get("queue", {}).get("ns", 0))
        for k in COMPUTE_PARTS:
            prev[f"{k}_ns"] += int(s.get(k, {}).get("ns", 0))
            prev["compute_ns"] += int(s.get(k, {}).get("ns", 0))
    return out


def stats_delta(before: dict, after: dict) -> dict[str, dict]:
    res = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: a[k] - b.get(k, 0) for k in a}
        res[name] = {
            "inferences": d["inferences"], "executions": d["executions"],
            "avg_batch": d["inferences"] / d["executions"] if d["executions"] else float("nan"),
            "queue_us_per_req": d["queue_ns"] / 1e3 / d["success"] if d["success"] else float("nan"),
            "compute_us_per_req": d["compute_ns"] / 1e3 / d["success"] if d["success"] else float("nan"),
        }
    return res


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepConfig:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    interval_ms: int = 2000
    stability: int = 50          # percent; the machine is shared, so tolerate noise
    max_trials: int = 4
    timeout_s: float = 300.0


COUNT_WINDOW_REQUESTS = 20  # requests per measurement window in the fallback attempt (`run_one`)

CSV_FIELDS = {  # perf_analyzer --verbose-csv column -> our name (latencies in microseconds)
    "Inferences/Second": "throughput_rps", "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_us", "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us", "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us", "Client Recv": "client_recv_us",
    "p50 latency": "p50_us", "p90 latency": "p90_us", "p95 latency": "p95_us", "p99 latency": "p99_us",
    "Avg latency": "avg_us",
}


def parse_csv(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            if not raw.get("Concurrency", "").strip().isdigit():
                continue
            row = {"concurrency": int(raw["Concurrency"])}
            for col, name in CSV_FIELDS.items():
                if col in raw and raw[col] not in (None, ""):
                    row[name] = float(raw[col])
            rows.append(row)
    return rows


def run_one(pa: Path, env: dict, url: str, input_json: Path, concurrency: int, cfg: SweepConfig,
            csv_path: Path, model: str = "nann") -> dict:
    base = [str(pa), "-i", "grpc", "-u", url, "-m", model, "--input-data", str(input_json),
            "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(cfg.interval_ms),
            "-f", str(csv_path), "--verbose-csv"]
    # second attempt, on a noisy machine: the stability check effectively off, and windows of a request count
    # instead of a time (a time window in which a stall completed no request never counts as stable: seen at
    # concurrency 4 on 2 cores beside a training, where both time-window attempts failed)
    attempts = [["-s", str(cfg.stability), "-r", str(cfg.max_trials)],
                ["-s", "1000", "-r", "3", "--measurement-mode", "count_windows",
                 "--measurement-request-count", str(COUNT_WINDOW_REQUESTS)]]
    log = ""
    for extra in attempts:
        if csv_path.exists():
            csv_path.unlink()
        try:
            proc = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            log += f"\n[timeout after {cfg.timeout_s:.0f} s with {' '.join(extra)}]"
            continue
        log += proc.stdout + proc.stderr
        if proc.returncode == 0 and csv_path.exists():
            rows = parse_csv(csv_path)
            if rows:
                row = rows[-1]
                row["stability_args"] = " ".join(extra)
                return row
    raise RuntimeError(f"perf_analyzer failed at concurrency {concurrency}; its output:\n{log[-3000:]}")


def sweep(server, input_json: Path, out_dir: Path, label: str, cfg: SweepConfig,
          pa_env: tuple[Path, dict] | None = None) -> list[dict]:
    """perf_analyzer at each concurrency against `server` (a running TritonServer); rows also in OUT/load_<label>.csv."""
    pa, env = pa_env or ensure_perf_analyzer()
    out_dir = Path(out_dir)
    raw_dir = out_dir / "perf_analyzer"
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in cfg.concurrency:
        before = model_stats(server.http_url)
        t0 = time.perf_counter()
        row = run_one(pa, env, server.grpc_url, input_json, c, cfg, raw_dir / f"{label}_c{c}.csv")
        per_model = stats_delta(before, model_stats(server.http_url))
        row.update({"label": label, "wall_s": round(time.perf_counter() - t0, 1)})
        for name in BATCHED_MODELS + ("scorer",):
            if name in per_model:
                row[f"{name}_avg_batch"] = per_model[name]["avg_batch"]
                row[f"{name}_queue_us"] = per_model[name]["queue_us_per_req"]
                row[f"{name}_compute_us"] = per_model[name]["compute_us_per_req"]
        print(f"[perf] {label} c={c}: {row.get('throughput_rps', float('nan')):.1f} req/s, "
              f"p50 {row.get('p50_us', float('nan')) / 1e3:.1f} ms, p99 {row.get('p99_us', float('nan')) / 1e3:.1f} ms, "
              f"retrieve batch {row.get('retrieve_avg_batch', float('nan')):.2f}", file=sys.stderr)
        rows.append(row)
    write_rows(rows, out_dir / f"load_{label}.csv")
    return rows


def alternating_sweeps(repos: dict[str, Path], input_json: Path, out_dir: Path, cfg: SweepConfig, repeats: int,
                       pa_env: tuple[Path, dict] | None = None) -> dict[str, list[dict]]:
    """`sweep` of each repository (a fresh TritonServer each time), the repositories alternating, `repeats` times:
    {name: rows of every repeat}, each row's `repeat` its round."""
    from nann.serving.server import TritonServer

    runs: dict[str, list[dict]] = {name: [] for name in repos}
    for rep in range(repeats):
        for name, repo in repos.items():
            with TritonServer(repo) as server:
                runs[name] += [{**row, "repeat": rep}
                               for row in sweep(server, input_json, out_dir, f"{name}_{rep}", cfg, pa_env)]
    return runs


def write_rows(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot(series: dict[str, list[dict]], path: Path, title: str) -> None:
    """Latency–throughput curves (p50 solid, p99 dashed), one colour per series, points labelled by concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rows) in enumerate(series.items()):
        if not rows:
            continue
        color = f"C{i}"
        x = [r["throughput_rps"] for r in rows]
        ax.plot(x, [r["p50_us"] / 1e3 for r in rows], "o-", color=color, label=f"{label} p50")
        ax.plot(x, [r["p99_us"] / 1e3 for r in rows], "s--", color=color, alpha=0.6, label=f"{label} p99")
        for r in rows:
            ax.annotate(f"c={r['concurrency']}", (r["throughput_rps"], r["p50_us"] / 1e3), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def batching_off_vs_on(repo: Path, input_json: Path, out_dir: Path, cfg: SweepConfig, concurrency: tuple[int, ...],
                       tag: str = "", pa_env: tuple[Path, dict] | None = None) -> dict:
    """Sweeps at `concurrency` with dynamic batching off (a copy of the repo), then on again right after, so
    the ratio compares neighbours in time; {"off": rows, "on_again": rows, "batching_ratios": rows}."""
    from nann.serving.server import TritonServer

    pa_env = pa_env or ensure_perf_analyzer()
    out_dir = Path(out_dir)
    sub = SweepConfig(**{**vars(cfg), "concurrency": tuple(concurrency)})
    off_repo = without_dynamic_batching(repo, out_dir / f"repo_no_batching{tag}")
    res = {}
    try:
        with TritonServer(off_repo) as server:
            res["off"] = sweep(server, input_json, out_dir, f"batching_off{tag}", sub, pa_env)
    finally:
        shutil.rmtree(off_repo, ignore_errors=True)
    with TritonServer(repo) as server:
        res["on_again"] = sweep(server, input_json, out_dir, f"batching_on_again{tag}", sub, pa_env)
    ratios = []
    for off in res["off"]:
        on = next(r for r in res["on_again"] if r["concurrency"] == off["concurrency"])
        ratios.append({"concurrency": off["concurrency"],
                       "throughput_on_over_off": on["throughput_rps"] / off["throughput_rps"],
                       "p50_off_over_on": off["p50_us"] / on["p50_us"],
                       "p99_off_over_on": off["p99_us"] / on["p99_us"],
                       "retrieve_batch_on": on.get("retrieve_avg_batch"),
                       "retrieve_batch_off": off.get("retrieve_avg_batch")})
    res["batching_ratios"] = ratios
    write_rows(ratios, out_dir / f"load_batching_ratio{tag}.csv")
    return res


def load_test(repo: Path, data_dir: Path, out_dir: Path, cfg: SweepConfig, off_concurrency: tuple[int, ...] = (8, 16),
              users: int = 1000, tag: str = "", server=None) -> dict:
    """Sweep with dynamic batching on (on `server` if given, else a new TritonServer), then off vs on at
    `off_concurrency` (skipped if empty); CSVs, the latency-throughput plot and OUT/load<tag>.json."""
    from nann.serving.server import TritonServer

    pa_env = ensure_perf_analyzer()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_json = out_dir / f"perf_input{tag}.json"
    result = {"input_users": write_input_data(data_dir, input_json, users),
              "config": {**vars(cfg), "concurrency": list(cfg.concurrency)}}
    if server is not None:
        result["on"] = sweep(server, input_json, out_dir, f"batching_on{tag}", cfg, pa_env)
    else:
        with TritonServer(repo) as srv:
            result["on"] = sweep(srv, input_json, out_dir, f"batching_on{tag}", cfg, pa_env)
    best = max(result["on"], key=lambda r: r["throughput_rps"])
    result["max_throughput_rps"], result["max_throughput_concurrency"] = best["throughput_rps"], best["concurrency"]
    if off_concurrency:
        result.update(batching_off_vs_on(repo, input_json, out_dir, cfg, off_concurrency, tag, pa_env))
    plot({"dynamic batching on": result["on"], "batching off": result.get("off", []),
          "on (rerun)": result.get("on_again", [])}, out_dir / f"latency_throughput{tag}.png",
         f"nann ensemble over gRPC, perf_analyzer {tag.strip('_')}")
    (out_dir / f"load{tag}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="perf/results")
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--off-concurrency", default="8,16", help="empty = skip the batching-off rerun")
    p.add_argument("--interval-ms", type=int, default=2000)
    a = p.parse_args(argv)
    cfg = SweepConfig(concurrency=tuple(int(x) for x in a.concurrency.split(",")), interval_ms=a.interval_ms)
    off = tuple(int(x) for x in a.off_concurrency.split(",") if x.strip())
    res = load_test(Path(a.repo), Path(a.data), Path(a.out), cfg, off)
    print(json.dumps(res.get("batching_ratios", []), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
