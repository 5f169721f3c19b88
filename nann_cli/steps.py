"""Run pipeline steps through the public CLI, skipping those whose output already exists (demo, perf)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from nann.errors import UserError


def run_step(title: str, argv: list[str], done: Path | None = None) -> float | None:
    """`nann ARGV` unless `done` exists; returns its seconds (None when skipped), raises UserError on failure."""
    from nann_cli.main import main as cli_main

    if done is not None and Path(done).exists():
        print(f"== {title}: already done ({done})", file=sys.stderr)
        return None
    argv = [str(a) for a in argv]
    print(f"== {title}: nann {' '.join(argv)}", file=sys.stderr)
    t0 = time.perf_counter()
    code = cli_main(argv)
    if code != 0:
        raise UserError(f"step '{title}' failed: `nann {' '.join(argv)}` exited {code}")
    seconds = time.perf_counter() - t0
    print(f"   {title} took {seconds:.1f} s", file=sys.stderr)
    return seconds
