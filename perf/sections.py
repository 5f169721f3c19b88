"""Named sections of perf/RESULTS.md: each benchmark command rewrites only its own section.

A section is the text between ``<!-- section: NAME -->`` and ``<!-- end: NAME -->``; a missing one is appended
under a ``## NAME`` heading. So every table in RESULTS.md sits in the section of the one command that wrote it.
"""
from __future__ import annotations

from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- section: {name} -->", f"<!-- end: {name} -->"


def update_section(path: Path, name: str, markdown: str) -> None:
    """Replace section ``name`` of the file at ``path`` with ``markdown`` (append it when absent)."""
    begin, end = markers(name)
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    path.write_text(text)


def report(name: str, markdown: str, write: bool = True) -> None:
    """Print a benchmark's markdown and, when ``write``, make it section ``name`` of perf/RESULTS.md."""
    print(markdown)
    if write:
        update_section(RESULTS, name, markdown)
