"""`nann perf`: side-by-side retrieval benchmark + served latency + perf_analyzer load tests, one run.

    nann perf                      # full: |V| = 100k (add --items 100000,1000000 for 1M), writes perf/RESULTS.md
    nann perf --quick              # small data, short intervals, concurrency 1,4 (CI smoke test; a few minutes)
    nann perf --skip-load          # no perf_analyzer
    nann perf --out DIR            # raw JSON/CSV/PNG go to DIR (default perf/results, git-ignored)

For each |V|: perf/compare.py (data → three models → graphs → offline methods on the same test users), then
the NANN run is exported (`export_repository`, ONNX Runtime scorer inside `retrieve`, as offline), served
(`TritonServer`), timed at concurrency 1 through `NannClient` against the offline engine on the same users, and
load-tested with perf_analyzer (perf/load.py): concurrency sweep with dynamic batching on, then off vs on at 8/16 as a
ratio; then that export and one with the scorer behind BLS (`nann export --bls`) alternate at concurrency 1 and 16.
Every number lands in OUT/results_v<items>.json and OUT/RESULTS.md; the full mode also rewrites perf/RESULTS.md.
Timings are medians measured side by side in one run; the machine may be shared, so compare ratios.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from perf import scorer_bench, scorer_rounds
from perf.sections import update_section

ROOT = Path(__file__).resolve().parents[1]
PERF_SECTION = "nann perf"   # this command's section of perf/RESULTS.md (perf.sections)
FIGURE = ROOT / "docs" / "figures" / "latency_throughput.png"  # both placements' curves, shown by README and OPERATIONS
SERVED_REPEATS = 3           # served / offline latency at concurrency 1: median and spread of this many runs, a
                             # fresh server each
EFFICIENCY_CONCURRENCY = 16  # served throughput against the scorer's bound at this concurrency
SCORER_SHAPE = "onnxruntime 8x2000"  # the scorer_bench row the served scorer resembles (several users per call)
OFFLINE_BATCHES = (1, 4, 8, 16)  # the offline engine's throughput at these batch sizes (its parallel shards), the
#                                  served path's reference
ONE_WALK_BATCH = 16          # and at this batch walked as one (one shard, the scorer's full thread pool)
PLACEMENT_REPEATS = 2        # the run served with its scorer inside `retrieve` and behind BLS, alternating this often
#                              (once in --quick)
PLACEMENT_CONCURRENCY = (1, 4, EFFICIENCY_CONCURRENCY, 32)  # the placements' latency–throughput curves (--quick:
#                                                              1 and EFFICIENCY_CONCURRENCY)
QUICK_ITEMS = [5000]
FULL_ITEMS = [100_000]


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
            "git_describe": git("describe", "--always", "--dirty", "--tags"), "git_commit": git("rev-parse", "HEAD"),
            "loadavg_at_start": [round(x, 2) for x in load] if load else None}


def _serve_and_load(res: dict, out: Path, tag: str, quick: bool, skip_load: bool, sc) -> None:
    from perf import load as L
    from perf.compare import served_vs_offline

    from nann.serving.export import export_repository
    from nann.serving.server import TritonServer

    paths = res["paths"]
    repo = Path(paths["nann"]).parent / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    t0 = time.perf_counter()
    res["export"] = export_repository(Path(paths["nann"]), repo, scorer="onnxruntime")
    res["export"]["seconds"] = round(time.perf_counter() - t0, 1)
    cfg = L.SweepConfig(concurrency=(1, 4), interval_ms=1000, stability=50, max_trials=4, timeout_s=120) if quick \
        else L.SweepConfig()
    off = (4,) if quick else (8, 16)
    pa_env = None
    if skip_load:
        res["load"] = {"skipped": "--skip-load"}
    else:
        try:
            pa_env = L.ensure_perf_analyzer()
        except L.PerfAnalyzerUnavailable as e:
            res["load"] = {"skipped": str(e)}
            print(f"[perf] load test skipped: {e}", file=sys.stderr)
    res["served_vs_offline"] = []
    for _ in range(1 if quick else SERVED_REPEATS):  # a fresh server each, so that the repeats also sample where a
        with TritonServer(repo) as server:           # server lands (memory, cores), which differs from start to start
            print(f"[perf] serving {repo} at {server.grpc_url}", file=sys.stderr)
            res["served_vs_offline"].append(isolated(served_vs_offline, Path(paths["nann"]), Path(paths["data"]),
                                                     server.grpc_url, sc.served_users))
    if pa_env is not None:   # its own servers: batching on (sweep), off, on again; then both placements
        res["load"] = L.load_test(repo, Path(paths["data"]), out, cfg, off, users=1000, tag=tag)
        res["placement"] = placement(Path(paths["nann"]), repo, out, tag, cfg, pa_env,
                                     1 if quick else PLACEMENT_REPEATS,
                                     (1, EFFICIENCY_CONCURRENCY) if quick else PLACEMENT_CONCURRENCY)


def placement(run: Path, repo: Path, out: Path, tag: str, cfg, pa_env, repeats: int,
              concurrency: tuple[int, ...]) -> dict:
    """perf_analyzer on `repo` (its scorer inside `retrieve`) and on `run` exported with the scorer behind BLS
    (`nann export --bls`), alternating `repeats` times at `concurrency` on load_test's input; the
    latency–throughput PNG of both. {"repeats", "runs": {placement: rows}, "ratios": placement_ratios(runs)}."""
    import dataclasses

    from perf import load as L

    from nann.serving.export import export_repository

    bls = repo.parent / "repo_bls"
    shutil.rmtree(bls, ignore_errors=True)
    export_repository(run, bls, scorer="onnxruntime", in_process=False)
    sweeps = L.alternating_sweeps({f"in-process{tag}": repo, f"bls{tag}": bls}, out / f"perf_input{tag}.json", out,
                                  dataclasses.replace(cfg, concurrency=concurrency), repeats, pa_env)
    runs = {"in-process": sweeps[f"in-process{tag}"], "bls": sweeps[f"bls{tag}"]}
    L.plot({f"scorer {name}": median_rows(rows) for name, rows in runs.items()},
           out / f"latency_throughput_placement{tag}.png",
           f"nann ensemble, scorer inside `retrieve` vs behind BLS {tag.strip('_')}, medians of {repeats}")
    return {"repeats": repeats, "runs": runs, "ratios": placement_ratios(runs)}


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per concurrency: the median req/s, p50 and p99 of its repeats."""
    import statistics

    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        at = [r for r in rows if r["concurrency"] == c]
        out.append({"concurrency": c, **{k: statistics.median(r[k] for r in at)
                                         for k in ("throughput_rps", "p50_us", "p99_us")}})
    return out


def placement_ratios(runs: dict[str, list[dict]]) -> list[dict]:
    """Per concurrency: in-process req/s / BLS req/s of each alternating pair (same repeat), median and spread."""
    import statistics

    pairs: dict[int, list[float]] = {}
    for mine in runs["in-process"]:
        key = (mine["repeat"], mine["concurrency"])
        theirs = next(r for r in runs["bls"] if (r["repeat"], r["concurrency"]) == key)
        pairs.setdefault(mine["concurrency"], []).append(mine["throughput_rps"] / theirs["throughput_rps"])
    return [{"concurrency": c, "median": statistics.median(r), "spread": [min(r), max(r)], "pairs": len(r)}
            for c, r in sorted(pairs.items())]


def paired_ratio(run: dict) -> str:
    """A served_vs_offline run's median of per-user served / offline times, for its line (older results lack it)."""
    value = run.get("served_over_offline_paired")
    return "" if value is None else f"; per user, paired: {value:.2f}x"


def isolated(fn, *args):
    """fn(*args) in a fresh process (spawned): what earlier benchmarks leave in this one does not slow it down (the
    walk's rounds replayed after `scorer_bench` in the same process ran at 0.69 of its 8 x 2,000 calls, 0.93 in a
    process of their own: torch's and ONNX Runtime's thread pools of the benchmarks before)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_one(items: int, out: Path, quick: bool, skip_load: bool) -> dict:
    from perf.compare import TOP_M, compare, offline_throughput, scale_for

    sc = scale_for(items, quick)
    tag = f"_v{items}"
    t0 = time.perf_counter()
    res = compare(out / "work" / f"v{items}", sc)
    res["compare_seconds"] = round(time.perf_counter() - t0, 1)
    # the scorer against this CPU's reference bound, on a quiet machine (before any server starts), each benchmark in
    # a process of its own
    run, data = Path(res["paths"]["nann"]), Path(res["paths"]["data"])
    res["scorer"] = isolated(scorer_bench.measure, run, *((0.5, 1) if quick else (2.0, 3)))
    res["scorer_rounds"] = isolated(scorer_rounds.measure, run, data, 32 if quick else 192, 8, 2 if quick else 5)
    res["offline_throughput"] = isolated(offline_throughput, run, data, 32 if quick else 192, OFFLINE_BATCHES, TOP_M,
                                         2 if quick else 3, ONE_WALK_BATCH)
    t0 = time.perf_counter()
    _serve_and_load(res, out, tag, quick, skip_load, sc)
    res["serve_seconds"] = round(time.perf_counter() - t0, 1)
    (out / f"results{tag}.json").write_text(json.dumps(res, indent=1, default=float))
    write_csv(res, out / f"compare{tag}.csv")
    return res


def write_csv(res: dict, path: Path) -> None:
    from perf.load import write_rows

    write_rows([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in res["methods"]], path)


# ------------------------------------------------------------------------------------------------- report
def _pct(x):
    return "—" if x is None else f"{x * 100:.1f}%"


def _num(x, fmt="{:.1f}"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def queue_ms(row: dict) -> float:
    """Queue time per request summed over the ensemble's composing models (Triton's statistics; perf_analyzer
    reports none for an ensemble itself)."""
    from perf.load import BATCHED_MODELS

    return sum(row.get(f"{m}_queue_us", 0.0) for m in BATCHED_MODELS + ("scorer",)) / 1e3


def markdown(results: list[dict], info: dict, command: str) -> str:
    lines = ["Produced by `nann perf` (perf/run.py). Raw JSON/CSV/PNG: the run's OUT directory (git-ignored).", "",
             f"- command: `{command}`", f"- date: {info['date']}",
             f"- machine: {info['nproc']} cores, {info['cpu']}, {info['platform']}, Python {info['python']}; "
             f"load average at start {info['loadavg_at_start']} (shared machine: read ratios, not absolute times)",
             f"- version: `{info['git_describe']}` ({info['git_commit']})", ""]
    for res in results:
        sc = res["scale"]
        lines += [f"### |V| = {res['items']:,} items ({res['users']} test users; synthetic data, "
                  f"{sc['users']:,} users)", "",
                  f"Training (each model): `nann train {' '.join(sc['train'])}` (+ `--fgsm-eps 0` for SL2G, "
                  f"`--arch two-tower --fgsm-eps 0` for two-tower). Offline latency: one user at a time, encode + search, "
                  "ONNX Runtime scorer. Quality on all test users listed; latency on the 'timed users'.", "",
                  "| method | model | recall@200 | recall-all (own brute force) | coverage@200 vs own brute force | "
                  "overlap with NANN brute force | items scored / query | % of V | offline ms median | offline ms p99 | timed users |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["methods"]:
            lines.append(f"| {r['method']} | {r['model']} | {_pct(r['recall'])} | {_pct(r['recall_all'])} | "
                         f"{_pct(r['coverage_own'])} | {_pct(r['overlap_nann_brute'])} | "
                         f"{_num(r['items_scored'], '{:,.0f}') if r['items_scored'] is not None else 'n/a (hnswlib)'} | "
                         f"{_pct(r['scored_fraction']) if r['scored_fraction'] is not None else 'n/a'} | "
                         f"{_num(r['latency_ms_median'], '{:.2f}')} | {_num(r['latency_ms_p99'], '{:.2f}')} | {r['latency_queries']} |")
        rt = res["ratios"]
        lines += ["", "| ratio | value |", "|---|---|",
                  f"| NANN beam speed-up over brute force (median latency) at {_pct(rt['nann_coverage'])} coverage | "
                  f"{rt['nann_speedup_over_brute_median']:.1f}x |",
                  f"| items scored: brute force / NANN beam | {rt['nann_scored_ratio_brute_over_beam']:.1f}x |",
                  *[f"| NANN beam recall@200 / {what} recall@200 | {_num(rt[f'nann_recall_over_{key}'], '{:.2f}x')} "
                    f"({rt[f'nann_recall_minus_{key}_pp']:+.1f} pp) |"
                    for what, key in (("two-tower + hnswlib ip", "two_tower_hnsw"),
                                      ("two-tower + hnswlib l2 (MIPS transform)", "two_tower_l2"),
                                      ("two-tower brute force", "two_tower_brute"))]]
        runs = sorted(res.get("served_vs_offline") or [], key=lambda r: r["served_over_offline_median"])
        if runs:
            first, mid, last = runs[0], runs[len(runs) // 2], runs[-1]
            lines.append(f"| served (gRPC, NannClient, concurrency 1) / offline engine latency, median of {len(runs)} "
                         f"runs, a fresh server each [spread] ({mid['users']} users each, k={mid['k']}) | "
                         f"{mid['served_over_offline_median']:.2f}x "
                         f"[{first['served_over_offline_median']:.2f}–{last['served_over_offline_median']:.2f}] "
                         f"(median run: {mid['served']['latency_ms_median']:.2f} ms vs "
                         f"{mid['offline']['latency_ms_median']:.2f} ms; p99 {mid['served']['latency_ms_p99']:.2f} vs "
                         f"{mid['offline']['latency_ms_p99']:.2f} ms{paired_ratio(mid)}) |")
        if "scorer" in res:
            lines += ["", "#### Scorer against this CPU's reference bound (perf/scorer_bench.py, same run)", "",
                      *scorer_bench.markdown(res["scorer"])]
        if "scorer_rounds" in res:
            lines += ["", "#### The scorer on the walk's rounds (perf/scorer_rounds.py, same run)", "",
                      *scorer_rounds.markdown(res["scorer_rounds"])]
        load = res.get("load", {})
        if "skipped" in load:
            lines += ["", f"Load test skipped: {load['skipped']}"]
        elif load:
            lines += ["", f"#### Served: perf_analyzer on the `nann` ensemble (gRPC, {load['input_users']} real test-user "
                      f"histories, measurement interval {load['config']['interval_ms']} ms)", "",
                      "| dyn. batching | concurrency | req/s | p50 ms | p90 ms | p99 ms | queue ms (composing models) | "
                      "server compute ms (ensemble) | retrieve avg batch |", "|---|---|---|---|---|---|---|---|---|"]
            for label, key in (("on", "on"), ("off", "off"), ("on (rerun)", "on_again")):
                for r in load.get(key, []):
                    comp = sum(r.get(k, 0.0) for k in ("server_compute_input_us", "server_compute_infer_us",
                                                        "server_compute_output_us"))
                    lines.append(f"| {label} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_us'] / 1e3:.1f} | "
                                 f"{r['p90_us'] / 1e3:.1f} | {r['p99_us'] / 1e3:.1f} | "
                                 f"{queue_ms(r):.1f} | {comp / 1e3:.1f} | "
                                 f"{_num(r.get('retrieve_avg_batch'), '{:.2f}')} |")
            lines += ["", f"Max served throughput (batching on): {load['max_throughput_rps']:.1f} req/s at concurrency "
                      f"{load['max_throughput_concurrency']}.", "",
                      "| concurrency | throughput on/off | p50 off/on | p99 off/on |", "|---|---|---|---|"]
            for r in load.get("batching_ratios", []):
                lines.append(f"| {r['concurrency']} | {r['throughput_on_over_off']:.2f}x | {r['p50_off_over_on']:.2f}x | "
                             f"{r['p99_off_over_on']:.2f}x |")
            lines += placement_markdown(res.get("placement"))
            eff = served_efficiency(res)
            if eff:
                lines += ["", f"Served path efficiency at concurrency {EFFICIENCY_CONCURRENCY}: {eff['served_rps']:.1f} "
                          f"req/s served vs {eff['bound_rps']:.1f} req/s if every cycle scored (scorer "
                          f"{SCORER_SHAPE} {eff['scorer_candidates_per_s']:,.0f} candidates/s ÷ "
                          f"{eff['items_scored']:,.0f} items scored per query by the served defaults): "
                          f"**{eff['ratio']:.2f}** of the bound."]
                lines += offline_markdown(eff)
        lines.append("")
    return "\n".join(lines)


def offline_markdown(eff: dict) -> list[str]:
    """The offline engine's rows (`perf.compare.offline_throughput`) and the served throughput against them."""
    if not eff["offline"]:
        return []

    def ratio(value, spread=None):
        return "" if value is None else f"**{value:.2f}**" + (f" [{spread[0]:.2f}–{spread[1]:.2f}]" if spread else "")

    lines = ["", "Where the rest goes: the offline engine (`OfflineRetriever`: encode, walk and scorer in one process, no "
             f"server; same run, before any server started) on {eff['offline'][0]['users']} test users. A batch of several "
             "runs as parallel walks (shards), each scoring on one thread; 'one walk' is the batch walked as one with "
             "the scorer's full thread pool. Bound: the scorer's 8 × 2,000 calls, alternating with the passes, ÷ the "
             "pass's items scored per query (full pool; the shards' bound: the same calls split across as many threads "
             "of the one-thread scorer); median of the pairs [spread].", "",
             "| batch | walks | req/s | of the bound | of the shards' bound | scorer calls a batch |",
             "|---|---|---|---|---|---|"]
    for r in eff["offline"]:
        walks = "one walk" if r.get("one_walk") else str(r.get("shards", 1))
        lines.append(f"| {r['batch']} | {walks} | {r['requests_per_s']:.1f} | {ratio(r['of_bound'], r.get('of_bound_spread'))} "
                     f"| {ratio(r.get('of_shard_bound'))} | {r['scorer_calls_per_batch']:.1f} |")
    matched, best = eff["offline_matched"], eff["offline_best"]
    lines += ["", f"Served at concurrency {EFFICIENCY_CONCURRENCY} (`retrieve` batch {eff['served_batch']:.1f} per "
              f"instance, {eff['instances']} instances) / the offline engine in the same arrangement ({eff['instances']} "
              f"parallel walks: batch {matched['batch']}): **{eff['served_rps'] / matched['requests_per_s']:.2f}**; / the "
              f"offline engine at its fastest (batch {best['batch']}"
              f"{', one walk' if best.get('one_walk') else ''}): **{eff['served_rps'] / best['requests_per_s']:.2f}**."]
    return lines


def placement_markdown(placed: dict | None) -> list[str]:
    """The section comparing the scorer inside `retrieve` with the scorer behind BLS (`placement`)."""
    if not placed:
        return []
    lines = ["", f"Scorer inside `retrieve` (the export) vs behind BLS (`nann export --bls`), same run, fresh server "
                 f"each, alternating {placed['repeats']} times:", "",
             "| scorer | concurrency | req/s, median | p50 ms, median | p99 ms, median |", "|---|---|---|---|---|"]
    for name, rows in placed["runs"].items():
        for r in median_rows(rows):
            lines.append(f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_us'] / 1e3:.1f} | "
                         f"{r['p99_us'] / 1e3:.1f} |")
    lines += ["", "In-process / BLS req/s (each alternating pair): "
              + "; ".join(f"concurrency {r['concurrency']}: **{r['median']:.2f}** [{r['spread'][0]:.2f}–"
                          f"{r['spread'][1]:.2f}]" for r in placed["ratios"]) + "."]
    return lines


def served_efficiency(res: dict) -> dict | None:
    """Served throughput (batching on) at EFFICIENCY_CONCURRENCY against the scorer's bound for this search: the
    scorer's candidates/s divided by the items the served defaults score per query (what the served path would reach
    if it lost nothing to everything that is not scoring); and against the offline engine: in the served arrangement
    (`offline_matched`: RETRIEVE_INSTANCES parallel walks of `retrieve`'s average batch, i.e. the sharded engine at the
    measured batch nearest instances × that batch) and at its fastest batch (`offline_best`)."""
    from perf.compare import BEAM_SERVED

    from nann.serving.export import RETRIEVE_INSTANCES

    row = next((r for r in res.get("load", {}).get("on", []) if r["concurrency"] == EFFICIENCY_CONCURRENCY), None)
    beam = next((r for r in res["methods"] if r["method"] == BEAM_SERVED), None)
    if row is None or beam is None or "scorer" not in res:
        return None
    rate = res["scorer"]["ours"][SCORER_SHAPE]["candidates_per_s"]
    bound = rate / beam["items_scored"]
    # a row's own ratio to the bound measured beside it (perf.compare.offline_throughput); else against scorer_bench's
    offline = [{**r, "of_bound": r.get("of_bound", r["requests_per_s"] / bound)} for r in res.get("offline_throughput", [])]
    served_batch = float(row.get("retrieve_avg_batch") or 1.0)
    sharded = [r for r in offline if not r.get("one_walk")]
    matched = (min(sharded, key=lambda r: abs(r["batch"] - RETRIEVE_INSTANCES * served_batch)) if sharded else None)
    return {"served_rps": row["throughput_rps"], "bound_rps": bound, "scorer_candidates_per_s": rate,
            "items_scored": beam["items_scored"], "ratio": row["throughput_rps"] / bound, "offline": offline,
            "served_batch": served_batch, "instances": RETRIEVE_INSTANCES, "offline_matched": matched,
            "offline_best": max(offline, key=lambda r: r["requests_per_s"]) if offline else None}


def main(args) -> int:
    quick = bool(getattr(args, "quick", False))
    out = Path(getattr(args, "out", None) or "perf/results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = list(getattr(args, "items", None) or (QUICK_ITEMS if quick else FULL_ITEMS))
    skip_load = bool(getattr(args, "skip_load", False))
    info = machine_info()
    command = "nann perf" + (" --quick" if quick else "") + (f" --items {','.join(map(str, items))}"
                                                              if getattr(args, "items", None) else "") \
        + (" --skip-load" if skip_load else "") + (f" --out {args.out}" if getattr(args, "out", None)
                                                  and args.out != "perf/results" else "")
    results = []
    for n in items:
        t0 = time.perf_counter()
        results.append(run_one(n, out, quick, skip_load))
        print(f"[perf] |V| = {n:,} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    summary = {"machine": info, "command": command, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    md = markdown(results, info, command)
    (out / "RESULTS.md").write_text(md)
    if not quick and out == (ROOT / "perf" / "results").resolve():
        update_section(ROOT / "perf" / "RESULTS.md", PERF_SECTION, md)
        print(f"[perf] updated the `nann perf` section of {ROOT / 'perf' / 'RESULTS.md'}", file=sys.stderr)
        figure = out / f"latency_throughput_placement_v{max(items)}.png"
        if figure.exists():  # README and docs/OPERATIONS.md show it
            FIGURE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(figure, FIGURE)
            print(f"[perf] updated {FIGURE}", file=sys.stderr)
    print(md)
    return 0
