"""Overload: a served repository past its capacity, with the queue policy of its generated configs or others.

    python -m perf.overload --run RUN [--seconds 60] [--concurrency 256[,1024]] [--policies exported,none]

Exports RUN once (ONNX Runtime scorer) and makes one copy of the repository per queue policy: `exported` (the
`default_queue_policy` of the templates, as `nann export` writes it), `none` (no policy: an unbounded queue), or
Triton's fields joined by `+` (`max_queue_size=64+default_timeout_microseconds=500000`, timeout_action REJECT),
set in the dynamic batchers of `--models` (default retrieve; the others keep the exported one). For each copy: a
tritonserver on loopback; per concurrency of `--concurrency`: 2 s of warm-up and `--baseline` seconds at
concurrency 1 (its p50), then `--seconds` at that concurrency (asyncio SDK clients, no retries: each sends its next
request as soon as the last one is answered or refused), sampling the server's RSS
(tritonserver + stubs) every second; then the load drops and one client sends at concurrency 1: the time from the
drop to its first answer within 2x the baseline p50 is "normal service after". Every request is counted as answered,
refused by name (`OverloadedError`) or failed otherwise. Writes the "Overload" section of perf/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SECTION = "Overload"
NORMAL_FACTOR = 2.0        # a probe answered within this multiple of the baseline p50 is normal service
CLIENTS_PER_CHANNEL = 32   # asyncio tasks sharing one gRPC channel


def policy_block(spec: str) -> str:
    """`default_queue_policy { ... }` for `max_queue_size=64+default_timeout_microseconds=500000`; '' for `none`."""
    if spec == "none":
        return ""
    fields = dict(item.split("=", 1) for item in spec.split("+"))
    unknown = set(fields) - {"max_queue_size", "default_timeout_microseconds"}
    if unknown:
        raise SystemExit(f"unknown queue policy field(s) {', '.join(sorted(unknown))} in {spec!r}")
    body = " ".join(f"{k}: {int(v)}" for k, v in fields.items())
    if "default_timeout_microseconds" in fields:
        body += " timeout_action: REJECT"
    return f"default_queue_policy {{ {body} }}"


def with_queue_policy(text: str, spec: str) -> str:
    """A config.pbtxt's text with its dynamic batcher's queue policy replaced by `spec` (see `policy_block`)."""
    from perf.load import block_span

    start, end = block_span(text, "dynamic_batching")
    block = re.sub(r"\s*default_queue_policy\s*\{[^}]*\}", "", text[start:end - 1]).rstrip()
    new = policy_block(spec)
    return text[:start] + block + (f"\n  {new}\n" if new else "\n") + text[end - 1:]


def repository_with_policy(exported: Path, dst: Path, models: list[str], spec: str) -> Path:
    """A hard-linked copy of an exported repository whose `models` run queue policy `spec` (`exported`: unchanged)."""
    from perf.load import linked_copy

    linked_copy(exported, dst)
    if spec != "exported":
        for model in models:
            cfg = dst / model / "config.pbtxt"
            text = cfg.read_text()
            cfg.unlink()  # a hard link into the exported repository
            cfg.write_text(with_queue_policy(text, spec))
    return dst


def exported_policy(repo: Path, models: list[str]) -> str:
    """The queue policies an exported repository's `models` run, as written in their configs."""
    found = []
    for model in models:
        m = re.search(r"default_queue_policy \{([^}]*)\}", (repo / model / "config.pbtxt").read_text())
        found.append(f"{model}: {m.group(1).strip() if m else 'none'}")
    return "; ".join(found)


@dataclass
class Outcomes:
    """Every request of a phase: (start, latency) of the answered, (start, message) of the refused and of the other
    failures."""

    answered: list[tuple[float, float]] = field(default_factory=list)
    refused: list[tuple[float, str]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)


async def drive(url: str, histories: list, concurrency: int, until: float, outcomes: Outcomes, t0: float,
                timeout: float) -> None:
    """`concurrency` clients sending back to back until time.monotonic() >= until; records every outcome."""
    from nann_client import AsyncNannClient, OverloadedError

    async def one_client(client, first: int) -> None:
        i = first
        while time.monotonic() < until:
            history = histories[i % len(histories)]
            i += concurrency
            start = time.monotonic()
            try:
                await client.retrieve(history)
                outcomes.answered.append((start - t0, time.monotonic() - start))
            except OverloadedError as e:
                outcomes.refused.append((start - t0, e.server_message or str(e)))
            except Exception as e:  # noqa: BLE001 - every other failure is counted and reported
                outcomes.failed.append((start - t0, f"{type(e).__name__}: {e}"))

    channels = [AsyncNannClient(url, retries=0, timeout=timeout)
                for _ in range(-(-concurrency // CLIENTS_PER_CHANNEL))]
    try:
        await asyncio.gather(*(one_client(channels[t // CLIENTS_PER_CHANNEL], t) for t in range(concurrency)))
    finally:
        for client in channels:
            await client.close()


async def recovery(url: str, histories: list, normal_s: float, t_drop: float, give_up_s: float) -> dict:
    """One client at concurrency 1 from the load drop on: seconds to the first answer within `normal_s`, and the
    p50 of the answers in the 5 s after it."""
    from nann_client import AsyncNannClient

    normal_at, after = None, []
    async with AsyncNannClient(url, retries=0, timeout=give_up_s) as client:
        i = 0
        while time.monotonic() < t_drop + give_up_s:
            start = time.monotonic()
            try:
                await client.retrieve(histories[i % len(histories)])
            except Exception:  # noqa: BLE001 - still overloaded: try again
                await asyncio.sleep(0.01)
                continue
            i += 1
            latency = time.monotonic() - start
            if normal_at is None and latency <= normal_s:
                normal_at = time.monotonic()
            elif normal_at is not None:
                after.append(latency)
                if time.monotonic() > normal_at + 5.0:
                    break
    return {"normal_after_s": None if normal_at is None else round(normal_at - t_drop, 2),
            "p50_after_ms": round(1e3 * float(np.median(after)), 1) if after else None}


def sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, int]], t0: float) -> None:
    from perf.soak import process_tree_rss

    while not stop.wait(1.0):
        samples.append((time.monotonic() - t0, process_tree_rss(pid)))


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(1e3 * float(np.percentile(latencies, q)), 1) if latencies else None


def measure(server, histories: list, seconds: float, concurrency: int, baseline_s: float, warmup_s: float,
            timeout: float) -> dict:
    """Baseline at concurrency 1, the overload, the recovery; the report of one policy."""
    t0 = time.monotonic()
    asyncio.run(drive(server.grpc_url, histories, 1, t0 + 2.0, Outcomes(), t0, timeout))  # warm-up (first calls JIT)
    baseline = Outcomes()
    t0 = time.monotonic()
    asyncio.run(drive(server.grpc_url, histories, 1, t0 + baseline_s, baseline, t0, timeout))
    base_p50 = float(np.median([lat for _, lat in baseline.answered]))
    load, rss, stop = Outcomes(), [], threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=sample_rss, args=(server.pid, stop, rss, t0), daemon=True)
    sampler.start()

    async def overload_then_recover() -> dict:
        t_drop = t0 + seconds
        driving = asyncio.ensure_future(drive(server.grpc_url, histories, concurrency, t_drop, load, t0, timeout))
        await asyncio.sleep(max(0.0, t_drop - time.monotonic()))
        recovered = await recovery(server.grpc_url, histories, NORMAL_FACTOR * base_p50, t_drop, give_up_s=60.0)
        await driving
        return recovered

    recovered = asyncio.run(overload_then_recover())
    stop.set()
    sampler.join()
    steady = [(t, lat) for t, lat in load.answered if t >= warmup_s]
    rss_steady = [b for t, b in rss if warmup_s <= t <= seconds]
    rss_first = rss_steady[0] if rss_steady else 0
    return {
        "baseline_p50_ms": round(1e3 * base_p50, 1), "seconds": seconds, "concurrency": concurrency,
        "answered": len(load.answered), "refused": len(load.refused), "failed": len(load.failed),
        "first_failures": [f"t={t:.1f}s {m}" for t, m in sorted(load.failed)[:3]],
        "answered_per_s": round(len(steady) / max(seconds - warmup_s, 1e-9), 1),
        "refused_per_s": round(sum(t >= warmup_s for t, _ in load.refused) / max(seconds - warmup_s, 1e-9), 1),
        "refusal_messages": sorted({m for _, m in load.refused}),
        "p50_ms": percentile_ms([lat for _, lat in steady], 50),
        "p99_ms": percentile_ms([lat for _, lat in steady], 99),
        "max_ms": percentile_ms([lat for _, lat in steady], 100),
        "rss_mb": {"first": round(rss_first / 2**20, 1), "end": round(rss_steady[-1] / 2**20, 1) if rss_steady else 0,
                   "min": round(min(rss_steady, default=0) / 2**20, 1),
                   "max": round(max(rss_steady, default=0) / 2**20, 1)},
        "rss_change": (round(max(abs(b - rss_first) for b in rss_steady) / rss_first, 3) if rss_first else None),
        **recovered,
        "alive_after": server.running() and server.is_ready() and not server.dead_stubs(),
    }


def markdown(reports: dict[tuple[str, int], dict], command: str, info: dict, described: str) -> str:
    from perf.sections import provenance

    any_report = next(iter(reports.values()))
    lines = [provenance(command, info, cores=True), "", described, "",
             "| queue policy | concurrency | answered | refused (OverloadedError) | failed otherwise | answered/s | "
             "p50 ms | p99 ms | max ms | RSS MB first → end (max change) | normal service after | p50 after ms | "
             "server up |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, concurrency), r in reports.items():
        rss = r["rss_mb"]
        change = f"{100 * r['rss_change']:.1f}%" if r["rss_change"] is not None else "n/a"
        normal = f"{r['normal_after_s']:.2f} s" if r["normal_after_s"] is not None else "**never (60 s)**"
        lines.append(f"| {name} | {concurrency} | {r['answered']:,} | {r['refused']:,} | **{r['failed']:,}** | "
                     f"{r['answered_per_s']:.1f} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                     f"{rss['first']:,.0f} → {rss['end']:,.0f} "
                     f"({change}) | {normal} | {r['p50_after_ms']} | {'yes' if r['alive_after'] else '**no**'} |")
    failures = [f"{name} at {c}: {r['first_failures'][0]}" for (name, c), r in reports.items() if r["first_failures"]]
    messages = sorted({m for r in reports.values() for m in r["refusal_messages"]})
    lines += ["", f"Baseline at concurrency 1 before each row (p50 ms): "
              + ", ".join(f"{r['baseline_p50_ms']}" for r in reports.values())
              + f"; latency and answered/s after the first {any_report['warmup_s']:g} s of the load."]
    if messages:
        lines += ["", "Refusals' messages (gRPC UNAVAILABLE): " + ", ".join(f"`{m}`" for m in messages)]
    if failures:
        lines += ["", "First other failures: " + "; ".join(failures)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from nann.serving.export import export_repository
    from nann.serving.server import TritonServer
    from perf.load import BATCHED_MODELS
    from perf.run import machine_info
    from perf.sections import command_line, report
    from perf.soak import random_histories, repo_item_ids

    p = argparse.ArgumentParser(prog="python -m perf.overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="trained run directory (exported here with the ONNX Runtime scorer)")
    p.add_argument("--work", default="perf/results/overload", help="repositories go here")
    p.add_argument("--policies", default="exported,none",
                   help="queue policies, comma-separated: exported, none, or FIELD=N+FIELD=N (default exported,none)")
    p.add_argument("--models", default="retrieve",
                   help="models whose queue policy changes, comma-separated (default retrieve, where requests wait)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of overload (default 60)")
    p.add_argument("--concurrency", default="256", help="concurrencies, comma-separated (default 256)")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds at concurrency 1 before (default 5)")
    p.add_argument("--warmup", type=float, default=5.0, help="first seconds of the overload left out of rates and "
                                                             "latency, and before the first RSS sample (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request in seconds (default 60)")
    p.add_argument("--no-results-md", action="store_true", help="do not write the section of perf/RESULTS.md")
    args = p.parse_args(argv)
    info = machine_info()
    work, models = Path(args.work), args.models.split(",")
    shutil.rmtree(work, ignore_errors=True)
    exported = work / "exported"
    export_repository(Path(args.run), exported, scorer="onnxruntime")
    items = repo_item_ids(exported)
    histories = random_histories(items)
    reports = {}
    for i, spec in enumerate(args.policies.split(",")):
        repo = repository_with_policy(exported, work / f"policy{i}", models, spec)
        name = f"exported ({exported_policy(exported, models)})" if spec == "exported" else spec
        with TritonServer(repo) as server:
            for concurrency in map(int, args.concurrency.split(",")):
                reports[name, concurrency] = {**measure(server, histories, args.seconds, concurrency, args.baseline,
                                                        args.warmup, args.timeout), "warmup_s": args.warmup}
                print(name, reports[name, concurrency], file=sys.stderr)
    others = sorted(set(BATCHED_MODELS) - set(models))
    kept = f" ({exported_policy(exported, others)}, as exported, in every row)" if others else ""
    described = (f"Run `{args.run}` ({len(items):,} items), exported with the ONNX Runtime scorer; the queue policy of "
                 f"{', '.join(f'`{m}`' for m in models)} varies{kept}. Per row, that many asyncio SDK "
                 f"clients (no retries, {args.timeout:g} s timeout) for {args.seconds:g} s, each sending its next "
                 f"request as soon as the last is answered or refused; then the load drops and one client at "
                 f"concurrency 1 measures how soon an answer takes at most {NORMAL_FACTOR:g}x the baseline p50. RSS: "
                 f"tritonserver + stubs, sampled every second after the first {args.warmup:g} s.")
    report(SECTION, markdown(reports, command_line("perf.overload", argv), info, described),
           write=not args.no_results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
