"""`ht-engine` help speaks for itself: every argument of every subcommand says what it is, every option with a
default shows it (`%(default)s`, so the help cannot drift from the code) and every option with choices shows them."""

import argparse

import pytest

from engine.cli import build_parser


def help_problems(parser: argparse.ArgumentParser) -> list:
    """What the help of `parser`'s own arguments lacks, one line per argument (not its subcommands)."""
    problems = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = action.help
        if not text or text == argparse.SUPPRESS:
            problems.append(f"{name}: no help")
            continue
        # A flag (store_true and the like) is off unless given: its default needs no words.
        has_default = action.default not in (None, argparse.SUPPRESS) and action.nargs != 0
        if has_default and "%(default)s" not in text:
            problems.append(f"{name}: default {action.default!r} not shown (%(default)s missing from its help)")
        # argparse lists the choices itself unless a metavar hides them.
        if action.choices is not None and action.metavar is not None and "%(choices)s" not in text:
            problems.append(f"{name}: choices hidden by metavar {action.metavar!r}")
    return problems


def subcommands() -> dict:
    parser = build_parser()
    (action,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_is_walked():
    from engine.cli import COMMAND_MODULES

    assert len(subcommands()) == len(COMMAND_MODULES)


def test_top_level_help():
    assert help_problems(build_parser()) == []


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_subcommand_help(command):
    parser = subcommands()[command]
    assert help_problems(parser) == []
    parser.format_help()  # every %(...)s placeholder resolves


def test_the_check_finds_what_is_missing():
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("--count", type=int, default=3, help="how many (default 3)")
    parser.add_argument("--mode", choices=("a", "b"), metavar="MODE", default=None, help="the mode")
    parser.add_argument("--quiet", action="store_true", help="say less")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    assert help_problems(parser) == [
        "source: no help",
        "--count: default 3 not shown (%(default)s missing from its help)",
        "--mode: choices hidden by metavar 'MODE'",
    ]
