"""Every option of every `nann` command says in --help what it does and, when it has a default, what it is."""
from __future__ import annotations

import argparse

from nann_cli.main import _build_parser


def options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("nann",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def test_every_option_has_help_that_names_its_default():
    found = list(options(_build_parser()))
    assert len({command for command, _ in found}) >= 12 and len(found) >= 100  # the walk reaches every command
    silent = [f"{command} {a.option_strings[0] if a.option_strings else a.dest}" for command, a in found
              if not a.help or a.help == argparse.SUPPRESS]
    no_default = [f"{command} {a.option_strings[0]} (default {a.default!r})" for command, a in found
                  if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)
                  and "default" not in a.help.lower()]
    assert not silent, f"options without help: {silent}"
    assert not no_default, f"options whose help does not state the default: {no_default}"
