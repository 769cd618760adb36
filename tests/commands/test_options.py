"""The shared parser pieces of ``subbit.commands._options``: one spelling of each shared option."""

from __future__ import annotations

import argparse

import pytest

from subbit import cli, runs
from subbit.commands._options import WHICH, add_json_out, add_no_progress, add_which, verb_parser


def test_which_is_the_run_loaders_list() -> None:
    # kept apart so `subbit --help` does not load torch; they must not drift
    assert WHICH == runs.WHICH


def test_verb_parser_answers_with_run_and_the_shared_options_parse() -> None:
    calls = []

    def run(args: argparse.Namespace) -> int:
        calls.append(args)
        return 7

    top = argparse.ArgumentParser()
    p = verb_parser(top.add_subparsers(dest="verb"), "x", run, help="h", description="one\n   two")
    add_which(p, "weights")
    add_json_out(p, "json here")
    add_no_progress(p)
    args = top.parse_args(["x", "--which", "last", "--json", "o.json", "--no-progress"])
    assert args.func(args) == 7 and calls == [args]
    assert (args.which, args.json_out, args.progress) == ("last", "o.json", False)
    defaults = top.parse_args(["x"])
    assert (defaults.which, defaults.json_out, defaults.progress) == ("final", None, True)
    with pytest.raises(SystemExit):
        top.parse_args(["x", "--which", "nope"])
    assert "one two" in p.format_help()  # a prose-block description is refilled


@pytest.mark.parametrize("verb", cli.VERB_MODULES)
def test_every_verb_names_its_run_function(verb: str) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    defaults = sub.choices[verb]._defaults
    if verb == "corpus":  # its sub-verbs carry the functions
        assert "func" not in defaults
    else:
        assert defaults["func"].__module__ == f"subbit.commands.{verb}"
