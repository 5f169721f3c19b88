"""Eligibility filters of served requests: raw ids → the engine's `Filters`, and the server's blocked set.

Per request (`FILTER_INPUTS`): `exclude` (raw item ids), `exclude_history` and a `categories` allow-list (raw
category ids). Per server: the blocked set (out of stock, delisted), kept as RAW item ids in the repository root so
that it outlives re-exports and applies to every model version: `REPO/blocked-<n>.npy` (int64, sorted, unique) and
the pointer `REPO/blocked.json` (`{"version", "file", "count"}`), replaced atomically (os.replace) by `nann items
block`. Plain files are the one thing Triton ignores there: a directory at the root is taken for a model, and a file
inside a model directory makes poll mode reload that model.

The `retrieve` model's `BlockedWatcher` polls the pointer and swaps in a new `BlockedSet` (a bitmap over ITS index's
dense ids) with one assignment; a batch reads the set once, so every request of it sees the same set. Offline
(`nann retrieve`, `nann evaluate`, `OfflineRetriever`) the same `Eligibility` maps the same raw ids.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from nann.engine.search import Filters, blocked_bitmap
from nann.errors import UserError
from nann.serving.requests import FilterRequest, RequestError, listing

POINTER = "blocked.json"
KEEP_VERSIONS = 3          # blocked-set files kept beside the pointer's (older ones are deleted)
POLL_SECONDS = 0.5         # how often the `retrieve` model looks at the pointer
# The `retrieve` model's Prometheus gauges: name → (description, the BlockedSet field it shows)
BLOCKED_GAUGES = {"nann_blocked_items": ("Items of this index in the blocked set", "count"),
                  "nann_blocked_version": ("Version of the repository's blocked set in use (0: none)", "version")}


def read_ids(path: str | Path) -> np.ndarray:
    """Raw item ids (int64) from a file: a .npy integer array, or text with one id per line (blank lines and lines
    starting with # skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise UserError(f"{path} must hold a 1-D integer array, got {ids.dtype} {list(ids.shape)}")
        return ids.astype(np.int64)
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            try:
                ids.append(int(text))
            except ValueError:
                raise UserError(f"{path}, line {number}: {text[:40]!r} is not an integer item id") from None
    return np.array(ids, dtype=np.int64)


# ------------------------------------------------------------------------------------------ the blocked set
def _version_files(repo: Path) -> dict[int, Path]:
    found = {}
    for path in repo.glob("blocked-*.npy"):
        number = path.stem.split("-", 1)[1]
        if number.isdigit():
            found[int(number)] = path
    return found


def write_blocked(repo: str | Path, raw_ids: np.ndarray) -> dict:
    """Make `raw_ids` the repository's blocked set (a new version); returns the new pointer.

    The ids file is complete before the pointer names it, and the pointer is replaced in one rename, so a reader
    sees the old set or the new one. Versions older than the newest KEEP_VERSIONS are deleted."""
    repo = Path(repo)
    if not (repo / "nann" / "config.pbtxt").is_file():
        raise UserError(f"{repo} is not an exported NANN repository (no nann/config.pbtxt): run `nann export`")
    ids = np.unique(np.asarray(raw_ids, dtype=np.int64))
    version = max(_version_files(repo), default=0) + 1
    while True:  # O_EXCL: two writers never share a version
        path = repo / f"blocked-{version}.npy"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            version += 1
    with os.fdopen(fd, "wb") as f:
        np.save(f, ids, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    pointer = {"version": version, "file": path.name, "count": int(ids.size)}
    tmp = repo / f".{POINTER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, repo / POINTER)
    files = _version_files(repo)
    for old in sorted(files)[:-KEEP_VERSIONS]:
        files[old].unlink(missing_ok=True)
    return pointer


def read_blocked(repo: str | Path) -> tuple[int, np.ndarray]:
    """(version, raw ids) of the repository's blocked set; (0, none) when none was ever written."""
    repo = Path(repo)
    try:
        pointer = json.loads((repo / POINTER).read_text())
    except FileNotFoundError:
        return 0, np.zeros(0, dtype=np.int64)
    return int(pointer["version"]), np.load(repo / pointer["file"], allow_pickle=False).astype(np.int64)


@dataclass(frozen=True)
class BlockedSet:
    """One version of the blocked set as the engine takes it: a bitmap over one index's dense ids."""

    version: int          # the repository's blocked-set version (0: none)
    bitmap: np.ndarray    # uint64 words (`blocked_bitmap`); empty = nothing blocked
    count: int            # items of the index blocked (ids it does not know are not counted)


NOTHING_BLOCKED = BlockedSet(0, np.zeros(0, dtype=np.uint64), 0)


class BlockedWatcher:
    """A repository's blocked set for one index, reloaded by a thread when the pointer file changes.

    `current` is replaced in one assignment (readers take it once per batch); a pointer or file that cannot be
    read keeps the previous set and is reported once on stderr (Triton's log)."""

    def __init__(self, repo: str | Path, eligibility: "Eligibility", on_change: Callable[[BlockedSet], None],
                 poll_seconds: float = POLL_SECONDS):
        self.repo = Path(repo)
        self.eligibility = eligibility
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.current = NOTHING_BLOCKED
        self._seen: object = ()   # the pointer's (inode, mtime, size) last looked at; () = never
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nann-blocked", daemon=True)
        self.refresh()

    def refresh(self) -> bool:
        """Load the set if the pointer changed since the last look, then call on_change with it; whether `current` was
        replaced. Any thread may call it: `retrieve` calls it before each batch too, so that every instance serves a
        set from the first batch that starts after the pointer was written (the poll alone left up to a poll period
        in which one instance served the new set and another the old)."""
        with self._lock:
            changed = self._reload()
        if changed:
            self.on_change(self.current)
        return changed

    def _reload(self) -> bool:
        try:
            st = os.stat(self.repo / POINTER)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            version, ids = read_blocked(self.repo)
        except (OSError, ValueError, KeyError) as e:
            print(f"nann: blocked set in {self.repo} not loaded, keeping version {self.current.version}: {e}",
                  file=sys.stderr, flush=True)
            return False
        self.current = self.eligibility.blocked(ids, version)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def start(self) -> "BlockedWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


# ------------------------------------------------------------------------------------------ raw → dense
class DenseFilter(NamedTuple):
    """One request's filters in the index's dense ids; None where it sets none."""

    exclude: np.ndarray | None      # dense item ids it may not get
    categories: np.ndarray | None   # dense categories it may get


class Eligibility:
    """Maps filters in raw ids to the engine's dense ids by one index's vocabulary (`nann.data.prepared.Vocabulary`)."""

    def __init__(self, vocab):
        self.vocab = vocab

    def blocked(self, raw_ids: np.ndarray, version: int = 0) -> BlockedSet:
        """The blocked set `raw_ids` (ids the index does not know ignored) as this index's bitmap."""
        dense = self.vocab.raw_to_dense(np.asarray(raw_ids, dtype=np.int64))
        dense = np.unique(dense[dense >= 0])
        if not dense.size:
            return BlockedSet(version, NOTHING_BLOCKED.bitmap, 0)
        return BlockedSet(version, blocked_bitmap(dense, self.vocab.num_items), int(dense.size))

    def dense(self, request: FilterRequest, history: np.ndarray) -> DenseFilter:
        """A request's filters in dense ids. history: its dense history ids (outside the catalogue: ignored), excluded
        with `exclude_history`. Unknown item ids are ignored (the index cannot return them); unknown category ids
        refuse the request, since an allow-list of categories the index lacks would silently return nothing."""
        exclude = self.vocab.raw_to_dense(request.exclude)
        if request.exclude_history:
            exclude = np.concatenate([exclude, np.asarray(history, dtype=np.int64).reshape(-1)])
        exclude = exclude[(exclude >= 0) & (exclude < self.vocab.num_items)]
        categories = None
        if request.categories.size:
            categories = self.vocab.category_to_dense(request.categories)
            unknown = request.categories[categories < 0]
            if unknown.size:
                raise RequestError(f"unknown category ids ({unknown.size}): {listing(unknown)}")
        return DenseFilter(exclude if exclude.size else None, categories)

    def engine_filters(self, requests: Sequence[DenseFilter], blocked: BlockedSet) -> Filters | None:
        """The engine's `Filters` for a batch; None when nothing is blocked and no request filters (the plain walk)."""
        if not blocked.count and all(r.exclude is None and r.categories is None for r in requests):
            return None
        return Filters.build(len(requests), blocked=blocked.bitmap if blocked.count else None,
                             exclude=[r.exclude for r in requests], categories=[r.categories for r in requests],
                             item_category=self.vocab.item_category)
