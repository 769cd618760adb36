"""The ``subbit`` command line: one sub-command module per verb, registered below.

Each module in :mod:`subbit.commands` exposes ``register(subparsers)``; it adds its parser and
sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown in --help.
VERB_MODULES: tuple[str, ...] = (
    "demo",
    "corpus",
    "train",
    "quantize",
    "allocate",
    "eval",
    "export",
    "bench",
    "compare",
    "study",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subbit",
        description="Sub-8-bit quantization-aware training (General Quantizer) for on-device ASR.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"subbit.commands.{name}")
        except ModuleNotFoundError as exc:  # a verb not built yet; tests/test_cli.py guards this
            if exc.name != f"subbit.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: say what, not a traceback
        if args.verbose:
            raise
        print(f"subbit {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
