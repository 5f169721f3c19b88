"""Soak test: the client SDK at fixed concurrency against a served repository for a bounded time.

    python -m perf.soak --repo REPO --minutes 3 --concurrency 16          # starts its own tritonserver
    python -m perf.soak --url 127.0.0.1:8001 --server-pid PID --minutes 3  # an already running one

Loopback only. Every thread sends requests back to back (random histories of known item ids, seeded)
until the time is up; nothing is retried (retries=0), so every failure is counted. Reports requests served,
failures (with the first messages), the server's RSS (tritonserver + its Python stub processes, from /proc)
after the warm-up and at the end, and latency percentiles over the whole measurement and of its first and last window.
`main` prints the report (JSON) and writes it as the "Soak" section of perf/RESULTS.md (not with --no-results-md).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from perf.sections import command_line, provenance, report as write_section

SECTION = "Soak"
SAMPLE_WINDOW_S = 30.0


def is_loopback(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def process_tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its direct children (tritonserver's stubs), from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if int(entry) != pid and ppid != pid:
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def repo_item_ids(repo: Path) -> np.ndarray:
    """Raw item ids the served index knows (the newest version of the `retrieve` model)."""
    from nann.run_dir import RunDir
    from nann.serving.repository import model_versions

    return RunDir(model_versions(repo / "retrieve")[-1]).vocabulary().items


def random_histories(item_ids: np.ndarray, count: int = 512, seed: int = 0, max_len: int = 60) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(item_ids, size=int(rng.integers(1, max_len + 1))).tolist() for _ in range(count)]


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    arr = np.asarray(latencies) * 1000.0
    return {"n": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p90_ms": round(float(np.percentile(arr, 90)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "max_ms": round(float(arr.max()), 2)}


def soak(url: str, histories: list[list[int]], seconds: float, concurrency: int = 16, warmup_s: float = 10.0,
         server_pid: int | None = None, k: int | None = None, timeout: float = 30.0) -> dict:
    """Run the load; returns the report (see module doc). Stops by itself after warmup_s + seconds."""
    from nann_client import NannClient

    if not is_loopback(url):
        raise SystemExit(f"perf.soak: {url} is not a loopback address (the soak runs on this machine only)")
    if seconds <= 0 or concurrency < 1:
        raise SystemExit("perf.soak: duration and concurrency must be positive")
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    failures: list[list[tuple[float, str]]] = [[] for _ in range(concurrency)]
    t0 = time.monotonic()
    end_warmup = t0 + warmup_s
    deadline = end_warmup + seconds
    rss = {}

    def worker(t: int) -> None:
        i = t
        with NannClient(url, retries=0, timeout=timeout) as client:
            while time.monotonic() < deadline:
                history = histories[i % len(histories)]
                i += concurrency
                start = time.monotonic()
                try:
                    client.retrieve(history, k=k)
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    failures[t].append((start - t0, f"{type(e).__name__}: {e}"))
                    continue
                records[t].append((start - t0, time.monotonic() - start))

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    if server_pid:
        time.sleep(max(0.0, end_warmup - time.monotonic()))
        rss["after_warmup_bytes"] = process_tree_rss(server_pid)
    for th in threads:
        th.join(timeout=max(1.0, deadline - time.monotonic() + timeout + 5))
    elapsed = time.monotonic() - t0
    if server_pid:
        rss["end_bytes"] = process_tree_rss(server_pid)
    done = sorted(r for rs in records for r in rs)
    failed = sorted(f for fs in failures for f in fs)
    window = min(SAMPLE_WINDOW_S, seconds / 3)
    measured = [r for r in done if r[0] >= warmup_s]
    first = [lat for start, lat in measured if start < warmup_s + window]
    last = [lat for start, lat in measured if start >= warmup_s + seconds - window]
    report = {
        "url": url, "concurrency": concurrency, "warmup_s": warmup_s, "duration_s": round(seconds, 1),
        "elapsed_s": round(elapsed, 1), "requests_ok": len(done), "requests_failed": len(failed),
        "requests_ok_after_warmup": len(measured), "qps_after_warmup": round(len(measured) / seconds, 1),
        "first_failures": [f"t={t:.1f}s {m}" for t, m in failed[:5]],
        "latency": percentiles([lat for _, lat in measured]),
        "latency_first_window": percentiles(first), "latency_last_window": percentiles(last),
        "window_s": round(window, 1), "threads_stuck": sum(th.is_alive() for th in threads),
    }
    if rss:
        report["server_rss_mb"] = {key.replace("_bytes", ""): round(v / 2**20, 1) for key, v in rss.items()}
    return report


def markdown(rep: dict, command: str, info: dict, served: str) -> str:
    """The section: requests, failures and server RSS, then latency of the first and last window and overall."""
    rss = rep.get("server_rss_mb", {})
    mb = (lambda key: f"{rss[key]:,.1f}" if key in rss else "n/a")
    total = rep["requests_ok"] + rep["requests_failed"]
    w = rep["window_s"]
    first, last, whole = rep["latency_first_window"], rep["latency_last_window"], rep["latency"]
    ms = (lambda lat, key: f"{lat[key]:,.0f}" if key in lat else "n/a")
    rows = [(f"first {w:g} s", first), (f"last {w:g} s", last), ("whole measurement", whole)]
    growth = f"{rss['end'] - rss['after_warmup']:+,.1f} MB" if {"end", "after_warmup"} <= set(rss) else "not measured"
    alive = {True: "yes", False: "**no**"}.get(rep.get("server_alive_after"), "n/a")
    failed = (f"{rep['requests_failed']:,} of {total:,} requests failed (first: {rep['first_failures'][0]})"
              if rep["requests_failed"] else f"none of {total:,} requests failed")
    return "\n".join([
        provenance(command, info, cores=True), "",
        f"{served}; the client SDK (no retries) at concurrency {rep['concurrency']}, {rep['warmup_s']:g} s warm-up "
        f"then {rep['duration_s']:g} s measured ({rep['elapsed_s']:g} s in all); server RSS is tritonserver + its "
        "Python stubs, from /proc.", "",
        "| requests (all) | failed | requests/s after warm-up | threads stuck | server RSS after warm-up MB | "
        "server RSS at end MB | server alive after |", "|---|---|---|---|---|---|---|",
        f"| {total:,} | **{rep['requests_failed']:,}** | {rep['qps_after_warmup']:,.1f} | {rep['threads_stuck']} | "
        f"{mb('after_warmup')} | {mb('end')} | {alive} |", "",
        "| latency window | requests | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
        *[f"| {name} | {lat['n']:,} | {ms(lat, 'p50_ms')} | {ms(lat, 'p90_ms')} | {ms(lat, 'p99_ms')} | "
          f"{ms(lat, 'max_ms')} |" for name, lat in rows], "",
        f"{failed[0].upper()}{failed[1:]}; server RSS {mb('after_warmup')} → {mb('end')} MB ({growth}) over the measurement; "
        f"latency p50 {ms(first, 'p50_ms')} → {ms(last, 'p50_ms')} ms, p99 {ms(first, 'p99_ms')} → "
        f"{ms(last, 'p99_ms')} ms, first vs last {w:g} s."])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.soak", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="exported repository: start a tritonserver on it (loopback, free ports)")
    where.add_argument("--url", help="HOST:PORT of a running server's gRPC endpoint (loopback only)")
    p.add_argument("--server-pid", type=int, default=None, help="tritonserver pid for RSS (with --url)")
    p.add_argument("--item-ids-from", default=None, help="repository to take known item ids from (with --url)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    from perf.run import machine_info

    info = machine_info()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    repo = Path(args.repo or args.item_ids_from or "")
    if not (repo / "retrieve").is_dir():
        p.error("need --repo, or --item-ids-from REPO with --url, to draw histories of known item ids")
    item_ids = repo_item_ids(repo)
    histories = random_histories(item_ids)
    if args.repo:
        from nann.serving.server import TritonServer

        with TritonServer(Path(args.repo)) as server:
            report = soak(server.grpc_url, histories, seconds, args.concurrency, args.warmup, server.pid, args.k)
            report["server_alive_after"] = server.running() and server.is_ready()
    else:
        report = soak(args.url, histories, seconds, args.concurrency, args.warmup, args.server_pid, args.k)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    served = (f"Served repository `{args.repo}`" if args.repo else f"Server at {args.url}") + \
        f" ({len(item_ids):,} items), {f'k={args.k}' if args.k is not None else 'the served default k'}"
    write_section(SECTION, markdown(report, command_line("perf.soak", argv), info, served),
                  write=not args.no_results_md)
    ok = report["requests_failed"] == 0 and report["threads_stuck"] == 0 and report.get("server_alive_after", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
