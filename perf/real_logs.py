"""Real public interaction logs: fetch and verify them, then prepare each with its column mapping only.

    python -m perf.real_logs fetch --out RAW [--mirror /work/.mirror] [--sets ml-100k,beauty,...]
    python -m perf.real_logs prepare --raw RAW --out DATA [--sets ...]

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

from nann.errors import UserError
from nann_cli.steps import run_step

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
    for s in (f, r):
        s.add_argument("--sets", default=None, help=f"comma-separated sets (default all: {', '.join(SETS)})")
    args = p.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.out, args.mirror or None, _chosen(args.sets))
        else:
            prepare(args.raw, args.out, _chosen(args.sets))
    except UserError as e:
        print(f"real_logs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
