"""What every verb's parser starts with, and the options several verbs share.

Each verb module calls :func:`verb_parser` in its ``register`` instead of repeating
``add_parser`` + ``set_defaults(func=run)``; the shared options keep one spelling (flag, dest,
choices) while each verb keeps its own help text. Nothing here imports torch: ``subbit --help``
imports every verb module.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

#: the weights of a run a verb can read (``subbit.runs.WHICH``; not imported: that loads torch)
WHICH = ("final", "last", "best")


def verb_parser(subparsers: Any, name: str, run: Callable[[argparse.Namespace], int], *, help: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """The parser of verb ``name``, which answers by calling ``run`` with the parsed namespace."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.set_defaults(func=run)
    return p


def add_json_out(p: argparse.ArgumentParser, help: str) -> None:
    """``--json FILE`` (``args.json_out``): also write the verb's result as JSON."""
    p.add_argument("--json", dest="json_out", help=help)


def add_which(p: argparse.ArgumentParser, help: str) -> None:
    """``--which``: the run's final model (default) or one of its training checkpoints."""
    p.add_argument("--which", choices=WHICH, default="final", help=help)


def add_no_progress(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--no-progress`` (``args.progress`` false): no progress bars."""
    p.add_argument("--no-progress", dest="progress", action="store_false", help=help)
