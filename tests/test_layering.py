"""Layering: the library under nann/ imports nothing from the packages above it: the trainer, the graph builder, the
benchmarks and the command line (trainer/, graph_builder/, perf/, nann_cli/ may import nann, never the reverse).

Function-local (lazy) imports count, and so does a string that names a module of those packages (a handler such as
"trainer.train:main", or an importlib.import_module argument): the command line's dispatch table lives in nann_cli."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

NANN = Path(__file__).resolve().parent.parent / "nann"
ABOVE = ("trainer", "graph_builder", "perf", "nann_cli")
MODULE_STRING = re.compile(rf"^(?:{'|'.join(ABOVE)})(?:\.\w+)*(?::\w+)?$")


def upward_references(source: str) -> list[str]:
    """Modules of the packages above the library that source imports (anywhere, lazily too) or names in a string."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] in ABOVE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in ABOVE:
            names.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            names.append(node.value)
    return sorted(names)


@pytest.mark.parametrize("path", sorted(NANN.rglob("*.py")), ids=lambda p: str(p.relative_to(NANN.parent)))
def test_the_library_references_nothing_above_it(path):
    assert upward_references(path.read_text()) == [], f"{path} reaches above the library"


def test_upward_references_finds_lazy_imports_and_handler_strings():
    source = ("import trainer\n"
              "import numpy, graph_builder.build\n"
              "def f():\n"
              "    from trainer.model import NANNModel\n"
              "    import perf.run as r\n"
              "    from nann.model import load_model\n"
              "    handler = 'trainer.train:main'\n"
              "    importlib.import_module('nann_cli.main')\n"
              "    note = 'see perf/RESULTS.md; the trainer (trainer/train.py) writes it'\n")
    assert upward_references(source) == ["graph_builder.build", "nann_cli.main", "perf.run", "trainer",
                                         "trainer.model", "trainer.train:main"]
