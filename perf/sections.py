"""Named sections of perf/RESULTS.md: each benchmark command rewrites only its own section.

A section is the text between ``<!-- section: NAME -->`` and ``<!-- end: NAME -->``; a missing one replaces the
body of a hand-written ``## NAME`` heading (up to the next ``## `` heading) or, without one, is appended under a new
``## NAME`` heading. So every table in RESULTS.md sits in the section of the one command that wrote it, whose first
line (``provenance``) says which command, when, at which commit and under which load.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- section: {name} -->", f"<!-- end: {name} -->"


def update_section(path: Path, name: str, markdown: str) -> None:
    """Replace section ``name`` of the file at ``path`` with ``markdown`` (the body of a hand-written ``## name``
    heading when there are no markers yet; appended when neither is there)."""
    begin, end = markers(name)
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    heading = f"## {name}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif text.startswith(heading) or f"\n{heading}" in text:
        at = 0 if text.startswith(heading) else text.index(f"\n{heading}") + 1
        head, body = text[:at + len(heading)], text[at + len(heading):]
        following = body.find("\n## ")
        text = head + f"\n{block}\n" + (body[following:] if following >= 0 else "")
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    path.write_text(text)


def command_line(module: str, argv: list[str] | None = None, env: tuple[str, ...] = ()) -> str:
    """The command as run: ``python -m MODULE ARGS`` (``argv``, or ``sys.argv[1:]`` when None, shell-quoted),
    preceded by ``VAR=value`` for each variable of ``env`` that is set (e.g. OMP_NUM_THREADS)."""
    args = sys.argv[1:] if argv is None else list(argv)
    prefix = [f"{v}={shlex.quote(os.environ[v])}" for v in env if v in os.environ]
    return " ".join([*prefix, "python -m", module, *([shlex.join(args)] if args else [])])


def provenance(command: str, info: dict, cores: bool = False) -> str:
    """A section's first line: ``Command: `COMMAND` — DATE, commit C, load average at start L.``, from
    ``perf.run.machine_info()``'s date, git_describe and loadavg_at_start (with ``cores``: also nproc and cpu)."""
    machine = f"{info['nproc']} cores ({info['cpu']}), " if cores else ""
    return (f"Command: `{command}` — {info['date']}, commit {info['git_describe']}, {machine}"
            f"load average at start {info['loadavg_at_start']}.")


def report(name: str, markdown: str, write: bool = True) -> None:
    """Print a benchmark's markdown and, when ``write``, make it section ``name`` of perf/RESULTS.md."""
    print(markdown)
    if write:
        update_section(RESULTS, name, markdown)
