"""`nann items block`: replace a served repository's blocked set (`nann.serving.filters`); a running server picks it
up within a second, no restart or reload. (`nann items add` is `trainer.add_items`.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nann.data.prepared import Vocabulary
from nann.serving.filters import Eligibility, read_ids, write_blocked
from nann.serving.repository import model_versions


def main_block(args) -> int:
    """`nann items block`: replace the repository's blocked set; a running server picks it up within a second."""
    repo = Path(args.repo)
    ids = np.zeros(0, dtype=np.int64) if args.clear else read_ids(args.ids)
    pointer = write_blocked(repo, ids)
    versions = model_versions(repo / "retrieve") if (repo / "retrieve").is_dir() else []
    known = ""
    if versions:
        count = Eligibility(Vocabulary.load(str(versions[-1]))).blocked(ids).count
        known = f"; {count:,} of them in the index of model version {versions[-1].name}"
    print(f"blocked set version {pointer['version']}: {pointer['count']:,} item ids ({repo / pointer['file']}){known}")
    return 0
