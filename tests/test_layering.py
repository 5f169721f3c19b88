"""Layering: the library under nann/ never imports the trainer (trainer/ may import nann, not the reverse).

The one sanctioned mention of the trainer is nann/cli.py's dispatch table, which names handlers as strings
("trainer.train:main") and so is no import statement."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NANN = Path(__file__).resolve().parent.parent / "nann"


def trainer_imports(source: str) -> list[str]:
    """Modules of the trainer package imported anywhere in source, function-local (lazy) imports included."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return sorted(n for n in names if n == "trainer" or n.startswith("trainer."))


@pytest.mark.parametrize("path", sorted(NANN.rglob("*.py")), ids=lambda p: str(p.relative_to(NANN.parent)))
def test_nann_does_not_import_trainer(path):
    assert trainer_imports(path.read_text()) == [], f"{path} imports the trainer"


def test_trainer_imports_finds_lazy_and_top_level_imports():
    source = ("import trainer\n"
              "def f():\n"
              "    from trainer.model import NANNModel\n"
              "    import trainer.train as t\n"
              "    from nann.model import load_model\n"
              "    handler = 'trainer.train:main'\n")
    assert trainer_imports(source) == ["trainer", "trainer.model", "trainer.train"]
