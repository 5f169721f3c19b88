"""Real public interaction logs: fetch and verify them, then prepare each with its column mapping only.

    python -m perf.real_logs fetch --out RAW [--mirror /work/.mirror] [--sets ml-100k,beauty,...]
    python -m perf.real_logs prepare --raw RAW --out DATA [--sets ...]
    python -m perf.real_logs report --raw RAW --work WORK [--sets ...]    # perf/RESULTS.md "Real logs"

``fetch`` takes every file of a set from a git snapshot of its public repository at the pinned commit (SETS):
from ``--mirror DIR``, which holds ``owner+name/repo`` git directories (as the search tool's fetch makes them), or,
when the mirror lacks the repository, from ``git clone --filter=blob:none https://github.com/owner/name`` (a
machine with internet). Each file's size and sha256 are checked against SETS, then it is written to
``RAW/<set>/<name>``. The files are research-use only, never to be redistributed: never commit them.

``prepare`` runs ``nann data prepare --out DATA/<set>`` on each set with its column mapping and nothing else (the
defaults are what a new user gets: the split, the minimum behaviours...). A set published in a shape the CLI does
not take as rows has a reader here that writes its rows first (``DATA/<set>.rows.csv``).

The sets (their sources, pinned, in SETS):

- ``ml-100k``: MovieLens 100K ``u.data`` as published (the snapshot's copy begins with 3 made-up rows of user 0,
  dropped by fetch: ``skip_lines``; what remains is the published 1,979,173-byte file) and ``u.item``, whose 19
  genre flags give each movie its category.
- ``beauty``, ``sports``: Amazon 5-core, one line per user ``user item item ...`` (oldest first) and a twin file of
  unix times, token for token; the reader ``sequences_to_rows`` makes ``user,item,time`` rows of them.
- ``home``: Amazon Home & Kitchen 5-core, the largest log to be had here (551,682 interactions of 66,519 users,
  28,237 items), in the same one-line-per-user shape, oldest first; its twin file of times is over the snapshot's
  size limit, so ``order_to_rows`` gives each behaviour its position in the user's line as its time (the order is
  the published one: the split and the model see the same sequence, only the gaps are lost).
- ``taobao-2h``: a 2-hour slice of Taobao UserBehavior, in the paper's format (read as it is).

``report`` is what a new user would do with each set, defaults only: prepare it, `nann train` (the attention model
and the two-tower baseline beside it), `nann graph`, `nann evaluate` (every test user: the served search's
metrics and the model's brute-force recall beside popularity and the two-tower model, with 95% bootstrap intervals),
which epoch's model each run kept (0: the two-tower baseline made this model, kept where no trained epoch beat it
on validation), and Deep Retrieval on the same data (`nann train --arch deep-retrieval`, `nann evaluate --method dr`
at two beams, beside NANN's beam walk swept over its budget, for recall at equal items scored). It writes section
"Real logs".

Left out: Last.fm HetRec 2011 (recohut/coldstart-recsys ``data/MKR/music/user_artists.dat``): user-artist play
counts with no time, so no order within a user to predict; the snapshot holds no timestamped file of it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nann.errors import UserError
from nann.run_dir import RunDir
from nann_cli.steps import run_step
from trainer.train import training_seconds

DEFAULT_MIRROR = "/work/.mirror"


@dataclass(frozen=True)
class Source:
    """One file of a set: where it lives, and the size and sha256 of the file as written (after skip_lines)."""

    repo: str  # owner/name on GitHub
    commit: str
    path: str
    size: int
    sha256: str
    skip_lines: int = 0  # leading lines of the snapshot's copy that are not the published file's


def sequences_to_rows(raw: Path, items: str, times: str, out: Path) -> None:
    """`user item item ...` lines and their twin `user time time ...` lines -> `user,item,time` rows."""
    with open(raw / items) as fi, open(raw / times) as ft, open(out, "w") as fo:
        for number, (item_line, time_line) in enumerate(zip(fi, ft, strict=True), start=1):
            item_tokens, time_tokens = item_line.split(), time_line.split()
            if len(item_tokens) != len(time_tokens) or item_tokens[:1] != time_tokens[:1]:
                raise UserError(f"{items} and {times} differ at line {number}: user or token count")
            user = item_tokens[0]
            fo.writelines(f"{user},{i},{t}\n" for i, t in zip(item_tokens[1:], time_tokens[1:]))


def order_to_rows(raw: Path, items: str, out: Path) -> None:
    """`user item item ...` lines (oldest first, no times) -> `user,item,position` rows."""
    with open(raw / items) as fi, open(out, "w") as fo:
        for line in fi:
            user, *tokens = line.split()
            fo.writelines(f"{user},{i},{t}\n" for t, i in enumerate(tokens))


@dataclass(frozen=True)
class LogSet:
    """A set: its files, the `nann data prepare` arguments after `--input` ({raw}: its fetched directory; the
    reader's rows file when it has a reader), and the reader."""

    files: dict[str, Source]
    prepare: list[str]
    reader: Callable[[Path, Path], None] | None = None
    notes: str = ""


_TICOSEREC = ("KingGugu/TiCoSeRec", "302b2959f27bb16bb77acae5a471de82819bd1bd")
_ML100K = ("tule2236/Item-based-CF-with-PySpark", "9687bc4ec90fa735451556937d66428c650e1c0a")


def _amazon(name: str, item_size: int, item_sha: str, time_size: int, time_sha: str) -> LogSet:
    items, times = f"{name}_item_org_rank.txt", f"{name}_time_org_rank.txt"
    return LogSet(
        files={items: Source(*_TICOSEREC, f"data/{name}/{items}", item_size, item_sha),
               times: Source(*_TICOSEREC, f"data/{name}/{times}", time_size, time_sha)},
        prepare=["--input", "{rows}", "--columns", "user=1,item=2,time=3"],
        reader=lambda raw, out: sequences_to_rows(raw, items, times, out),
        notes=f"Amazon {name} 5-core (TiCoSeRec's relabelled ids), one line per user with a twin file of times")


SETS: dict[str, LogSet] = {
    "ml-100k": LogSet(
        files={"u.data": Source(*_ML100K, "ml-100k/u.data", 1_979_173,
                                "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", skip_lines=3),
               "u.item": Source(*_ML100K, "ml-100k/u.item", 236_344,
                                "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701")},
        prepare=["--input", "{raw}/u.data", "--columns", "user=1,item=2,time=4", "--items", "{raw}/u.item",
                 "--item-columns", "item=1,category=flags:6-24"],
        notes="MovieLens 100K: 100,000 ratings of 943 users, genres from u.item"),
    "beauty": _amazon("Beauty", 1_141_495, "b95614189df525e1eb69dad579e84c6086468f2bb42dab894038949240307c4f",
                      2_306_594, "4e6a6e30f9dba1985ad9adae79a891df6b403e2132f0422a6f6e88f67d1fcc75"),
    "sports": _amazon("Sports", 1_783_816, "f4891c83d23c7cdc2981098230d8831fdb1f45b3fc4ec24f3b199310287745e5",
                      3_462_189, "c442ed4744f1de95b00744861bbaa503fcc98380d8b7ec08d52231450356c3a2"),
    "home": LogSet(
        files={"Home_item_org_rank.txt": Source(*_TICOSEREC, "data/Home/Home_item_org_rank.txt", 3_440_439,
                                                "4e472251e8bcd204fc3421c51ab7d10611a69da8e7cf313c327e0cd003a5f0dd")},
        prepare=["--input", "{rows}", "--columns", "user=1,item=2,time=3"],
        reader=lambda raw, out: order_to_rows(raw, "Home_item_org_rank.txt", out),
        notes="Amazon Home & Kitchen 5-core (TiCoSeRec's relabelled ids), one line per user, order only"),
    "taobao-2h": LogSet(
        files={"UserBehavior.csv": Source(
            "jason-wang1/UserBehaviorAnalysis", "fd73088edbb2daeedcb79c28ca4ba5aeef286cfe",
            "HotItemsAnalysis/src/main/resources/UserBehavior.csv", 4_044_757,
            "ac78f25e2dc73f7734d8ab58152a4b7af577836b625a60502e12c4bbe104950e")},
        prepare=["--input", "{raw}/UserBehavior.csv"],
        notes="Taobao UserBehavior, 110,300 rows of a 2-hour slice (shallow: few users with many events)"),
}


def _git(git_dir: str | None, *args: str, cwd: str | None = None) -> bytes:
    cmd = ["git", *(["--git-dir", git_dir] if git_dir else []), *args]
    proc = subprocess.run(cmd, capture_output=True, cwd=cwd)
    if proc.returncode:
        raise UserError(f"`{' '.join(cmd)}` failed: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return proc.stdout


class _Repositories:
    """Git directories of the sets' repositories: the mirror's, or blobless clones made on demand (removed at
    the end)."""

    def __init__(self, mirror: str | None):
        self.mirror = mirror
        self._clones = tempfile.TemporaryDirectory(prefix="real_logs_")
        self._dirs: dict[str, str] = {}

    def git_dir(self, repo: str) -> str:
        if repo not in self._dirs:
            mirrored = Path(self.mirror or "") / repo.replace("/", "+") / "repo"
            if self.mirror and mirrored.is_dir():
                self._dirs[repo] = str(mirrored)
            else:
                into = os.path.join(self._clones.name, repo.replace("/", "+"))
                print(f"cloning https://github.com/{repo} (blobs on demand)", file=sys.stderr)
                _git(None, "clone", "--quiet", "--bare", "--filter=blob:none", f"https://github.com/{repo}", into)
                self._dirs[repo] = into
        return self._dirs[repo]

    def close(self) -> None:
        self._clones.cleanup()


def fetch_file(repos: _Repositories, source: Source) -> bytes:
    """The file as written: the blob at the pinned commit (its snapshot's HEAD when the mirror lacks the commit),
    less skip_lines, checked against its size and sha256."""
    git_dir = repos.git_dir(source.repo)
    try:
        data = _git(git_dir, "show", f"{source.commit}:{source.path}")
    except UserError:
        print(f"{source.repo}: commit {source.commit[:10]} not in {git_dir}; trying its HEAD (the checksum decides)",
              file=sys.stderr)
        data = _git(git_dir, "show", f"HEAD:{source.path}")
    for _ in range(source.skip_lines):
        data = data.split(b"\n", 1)[1]
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != source.size or digest != source.sha256:
        raise UserError(f"{source.repo}:{source.path} is {len(data):,} bytes, sha256 {digest}; expected "
                        f"{source.size:,} bytes, sha256 {source.sha256}: not the file this table verified")
    return data


def _chosen(text: str | None) -> list[str]:
    names = [s.strip() for s in (text or ",".join(SETS)).split(",") if s.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise UserError(f"unknown set {', '.join(unknown)}; sets: {', '.join(SETS)}")
    return names


def fetch(out: Path, mirror: str | None, names: list[str]) -> None:
    repos = _Repositories(mirror)
    try:
        for name in names:
            print(f"{name}: {SETS[name].notes}")
            (out / name).mkdir(parents=True, exist_ok=True)
            for filename, source in SETS[name].files.items():
                data = fetch_file(repos, source)
                (out / name / filename).write_bytes(data)
                print(f"{name}/{filename}: {len(data):,} bytes, sha256 verified "
                      f"({source.repo}@{source.commit[:10]}:{source.path})")
    finally:
        repos.close()


def prepare_argv(name: str, raw: Path, out: Path) -> list[str]:
    """`nann data prepare` arguments of a set (its reader's rows file stands for {rows})."""
    values = {"raw": str(raw / name), "rows": str(out / f"{name}.rows.csv")}
    return ["data", "prepare", *(a.format(**values) for a in SETS[name].prepare), "--out", str(out / name)]


def prepare(raw: Path, out: Path, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        missing = [f for f in SETS[name].files if not (raw / name / f).is_file()]
        if missing:
            raise UserError(f"{raw / name} lacks {', '.join(missing)}: run "
                            f"`python -m perf.real_logs fetch --out {raw}`")
        if SETS[name].reader is not None:
            SETS[name].reader(raw / name, out / f"{name}.rows.csv")
        run_step(f"prepare {name}", prepare_argv(name, raw, out))
        st = json.loads((out / name / "stats.json").read_text())
        print(f"{name}: {st['users']:,} users, {st['items']:,} items, {st['categories']:,} categories, split "
              f"{st['split']} ({st['test_users']:,} test users) -> {out / name}")


DR_BEAMS = (10, 50)
SECTION = "Real logs"


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in RunDir(run).train_log_file.read_text().splitlines()]


def training_summary(run: Path) -> dict:
    """What `nann train` tried, from the run's log and its baseline's: the validation recall of the two-tower model
    (epoch 0), the best epoch from random weights and, where the run went on from the two-tower model, the best epoch
    of that phase; the epoch kept."""
    records = _log_records(run)
    best = next((r for r in reversed(records) if r.get("kind") == "best"), {})
    after = best.get("refine_from")
    epochs = [r for r in records if r.get("kind") == "val" and r.get("step") and "elapsed_s" in r]

    def best_of(phase: list[dict]) -> list | None:
        top = max(phase, key=lambda r: r["recall_all@200"], default=None)
        return None if top is None else [top["recall_all@200"], top["epoch"]]

    baseline = RunDir(run).baseline.path
    baseline_best = (next((r for r in reversed(_log_records(baseline)) if r.get("kind") == "best"), {})
                     if RunDir(baseline).train_log_file.exists() else {})
    return {"kept": best.get("epoch"), "refine_from": after, "two_tower": baseline_best.get("recall_all@200"),
            "random": best_of([r for r in epochs if after is None or r["epoch"] <= after]),
            "refined": None if after is None else best_of([r for r in epochs if r["epoch"] > after])}


def _kept_cell(training: dict) -> str:
    kept, after = training.get("kept"), training.get("refine_from")
    if kept is None:
        return "—"
    return str(kept) + ("" if after is None or kept <= after else f" (from the two-tower model, after epoch {after})")


def _training_line(name: str, training: dict) -> str:
    """One line of what training tried on a set (validation recall-all@200, `training_summary`)."""
    parts = [] if training.get("two_tower") is None else [f"two-tower {training['two_tower']:.4f}"]
    if training.get("random"):
        parts.append("attention from random weights {:.4f} (epoch {})".format(*training["random"]))
    if training.get("refined"):
        parts.append("trained on from the two-tower model {:.4f} (epoch {})".format(*training["refined"]))
    return f"- {name}: validation " + "; ".join(parts) + f"; kept epoch {_kept_cell(training)}"


def measure(name: str, data: Path, work: Path, run: Path | None = None) -> dict:
    """One prepared set through the pipeline with the defaults (module doc); each step is skipped when its output is
    there, so an interrupted report resumes. run: a trained run to use (default WORK/runs/NAME, trained here)."""
    run, dr, out = run or work / "runs" / name, work / "runs" / f"{name}-dr", work / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    run_step(f"train {name}", ["train", "--data", data, "--run", run], RunDir(run).baselines_file)
    run_step(f"graph {name}", ["graph", "--run", run], RunDir(run).graph.meta_file)
    run_step(f"evaluate {name}", ["evaluate", "--run", run, "--data", data, "--json", out / "beam.json"],
             out / "beam.json")
    run_step(f"sweep {name}", ["evaluate", "--run", run, "--data", data, "--sweep", "--json", out / "sweep.json"],
             out / "sweep.json")
    run_step(f"train {name} deep retrieval", ["train", "--arch", "deep-retrieval", "--data", data, "--run", dr],
             RunDir(dr).item_paths_file)
    for beam in DR_BEAMS:
        run_step(f"evaluate {name} deep retrieval, beam {beam}",
                 ["evaluate", "--method", "dr", "--run", dr, "--data", data, "--beam", beam, "--json",
                  out / f"dr{beam}.json"], out / f"dr{beam}.json")
    return {"name": name, "stats": _read_json(data / "stats.json"), "beam": _read_json(out / "beam.json"),
            "sweep": _read_json(out / "sweep.json")["points"],
            "dr": {beam: _read_json(out / f"dr{beam}.json") for beam in DR_BEAMS},
            "seconds": {"attention": training_seconds(run), "two-tower": training_seconds(RunDir(run).baseline.path)},
            "training": training_summary(run)}


def _cell(stats: dict) -> str:
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def at_items(points: list[dict], items: float) -> float | None:
    """NANN's recall-retrieval at `items` scored per query, interpolated (log items) between its sweep's points;
    None outside them."""
    pts = sorted((p["items_scored"], p["recall_retrieval"]) for p in points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= items <= x1:
            w = 0.0 if x1 == x0 else (np.log(items) - np.log(x0)) / (np.log(x1) - np.log(x0))
            return y0 + w * (y1 - y0)
    return None


def tables(results: list[dict]) -> str:
    """The section's tables: the model against its baselines; the served search and Deep Retrieval."""
    quality = ["| set | users / items | split (test users) | popularity | popularity, unseen | two-tower | attention "
               "(brute force) | epoch kept (0: the two-tower model) | training s, attention / two-tower |",
               "|---|---|---|---|---|---|---|---|---|"]
    verdicts, trained, search = [], [], [
        "| set | NANN beam (defaults): recall / coverage / % of V scored | DR beam " + " / ".join(map(str, DR_BEAMS))
        + ": recall / % of V scored | NANN at DR's items scored |", "|---|---|---|---|"]
    for r in results:
        st, compared = r["stats"], r["beam"]["baselines"]
        rec = compared["recall_all"]
        model = next(k for k in rec if k not in ("popularity", "popularity (unseen)", "two-tower"))
        quality.append(f"| {r['name']} | {st['users']:,} / {st['items']:,} | {st['split']} ({compared['users']:,}) | "
                       f"{_cell(rec['popularity'])} | {_cell(rec['popularity (unseen)'])} | "
                       f"{_cell(rec['two-tower']) if 'two-tower' in rec else '—'} | **{_cell(rec[model])}** | "
                       f"{_kept_cell(r['training'])} | "
                       f"{r['seconds']['attention']:.0f} / {r['seconds']['two-tower']:.0f} |")
        verdicts += [f"- {r['name']}: {line}" for line in compared["verdict"]]
        trained.append(_training_line(r["name"], r["training"]))
        b = r["beam"]
        dr = [r["dr"][beam] for beam in DR_BEAMS]
        matched = [at_items(r["sweep"], d["items_scored"]) for d in dr]
        search.append(f"| {r['name']} | {b['recall_retrieval']:.3f} / {b['coverage']:.4f} / "
                      f"{b['scored_fraction'] * 100:.2f}% | "
                      + " · ".join(f"{d['recall_retrieval']:.3f} / {d['scored_fraction'] * 100:.2f}%" for d in dr)
                      + " | " + " · ".join("—" if m is None else f"{m:.3f}" for m in matched) + " |")
    return "\n".join(quality + [""] + verdicts + ["", "What training tried (validation recall-all@200; epoch 0 is "
                                                      "the two-tower model as this model):", ""]
                     + trained + [""] + search)


def report(raw: Path, work: Path, names: list[str], write: bool = True) -> list[dict]:
    from perf.run import machine_info
    from perf.sections import command_line, provenance, report as write_section

    info = machine_info()
    prepare(raw, work / "data", [n for n in names if not (work / "data" / n / "stats.json").is_file()])
    results = [measure(name, work / "data" / name, work) for name in names]
    sources = "\n".join(f"- {n}: {SETS[n].notes}; " + ", ".join(
        f"`{f.repo}@{f.commit[:10]}:{f.path}`" for f in SETS[n].files.values()) for n in names)
    body = (provenance(command_line("perf.real_logs"), info, cores=True) + "\n\n"
            + "Every set as published (`python -m perf.real_logs fetch`, sha256-checked), prepared with its column "
              "mapping only and run with the defaults of every command (`nann train`, `nann graph`, `nann evaluate`); "
              "recall-all@200 of every test user with a 95% bootstrap interval over users, and the paired verdicts "
              "`nann evaluate` prints. Sources (research use; never redistributed):\n\n" + sources + "\n\n"
            + tables(results))
    write_section(SECTION, body, write)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="fetch and verify the published files into OUT/<set>/")
    f.add_argument("--out", required=True, type=Path, help="directory for the files (never commit them)")
    f.add_argument("--mirror", default=DEFAULT_MIRROR,
                   help=f"directory of owner+name/repo git snapshots (default {DEFAULT_MIRROR}); '' clones from GitHub")
    r = sub.add_parser("prepare", help="`nann data prepare` each fetched set, column mapping only")
    r.add_argument("--raw", required=True, type=Path, help="the fetch --out directory")
    r.add_argument("--out", required=True, type=Path, help="prepared data directories go to OUT/<set>")
    m = sub.add_parser("report", help="each set through the pipeline with the defaults, beside popularity, the "
                                      "two-tower model and Deep Retrieval: perf/RESULTS.md section 'Real logs'")
    m.add_argument("--raw", required=True, type=Path, help="the fetch --out directory")
    m.add_argument("--work", required=True, type=Path, help="prepared data, runs and evaluations go here")
    m.add_argument("--no-write", action="store_true", help="print the section, do not write perf/RESULTS.md")
    for s in (f, r, m):
        s.add_argument("--sets", default=None, help=f"comma-separated sets (default all: {', '.join(SETS)})")
    args = p.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.out, args.mirror or None, _chosen(args.sets))
        elif args.command == "prepare":
            prepare(args.raw, args.out, _chosen(args.sets))
        else:
            report(args.raw, args.work, _chosen(args.sets), write=not args.no_write)
    except UserError as e:
        print(f"real_logs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
