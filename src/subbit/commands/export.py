"""``subbit export``: write a trained run as a bit-packed ``.subbit`` file and print what it cost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from subbit.commands._options import add_json_out, add_which, verb_parser


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "export", run,
        help="write a run as a bit-packed .subbit file",
        description="""Pack a run's quantized weights (indices at their bit depth + codebooks), keep the other
        tensors in float, add the tokenizer and the model config; print bytes per tensor vs fp32 and int8.""",
    )
    p.add_argument("run", metavar="RUN", help="run directory (made by `subbit train` / `subbit quantize`)")
    p.add_argument("--out", required=True, help="output file, e.g. model.subbit")
    p.add_argument("--fp16", action="store_true", help="store the unquantized float tensors in fp16")
    add_which(p, "weights to export: final.pt (default, converted) or a training checkpoint")
    add_json_out(p, "also write the size summary as JSON here")


def run(args: argparse.Namespace) -> int:
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.runs import export_run

    out = Path(args.out)
    summary = export_run(args.run, out, which=args.which, fp16=args.fp16)
    print(summary)
    if args.json_out:
        data = {
            "file": str(out), "file_bytes": summary.file_bytes, "header_bytes": summary.header_bytes,
            "theory_bytes": summary.theory_bytes, "fp32_bytes": summary.fp32_bytes, "int8_bytes": summary.int8_bytes,
            "tensors": [vars(t) for t in summary.tensors],
        }  # fmt: skip
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n")
    return 0
