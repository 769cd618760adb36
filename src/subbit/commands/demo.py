"""``subbit demo``: the README's main job, end to end on the embedded corpus.

Stages run in order and each adds its figures to one summary (printed at the end and written
to RUN/summary.json). A stage whose output already exists is reused, so an interrupted demo
continues where it stopped. To extend the demo (GQ fine-tune, export, runtime), append a stage
function to :data:`STAGES`. The stages are in :mod:`demo_stages`, the tables and summary in
:mod:`demo_report`; their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subbit.commands._options import verb_parser
from subbit.commands.demo_report import SUMMARY_LINES, describe_corpus, format_summary, result_rows, write_results
from subbit.commands.demo_stages import (
    DEMO_RECIPE,
    GQ_RULES,
    QAT8_RULES,
    VARIANTS,
    DemoContext,
    stage_corpus,
    stage_eval_fp32,
    stage_eval_gq,
    stage_eval_qat8,
    stage_export,
    stage_quantize_gq,
    stage_quantize_qat8,
    stage_results,
    stage_runtime,
    stage_train_fp32,
)

STAGES: list[Callable[[DemoContext], None]] = [
    stage_corpus,
    stage_train_fp32,
    stage_eval_fp32,
    stage_quantize_gq,
    stage_eval_gq,
    stage_quantize_qat8,
    stage_eval_qat8,
    stage_export,
    stage_runtime,
]


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "demo", run,
        help="corpus -> fp32 RNN-T -> GQ 4-bit -> .subbit -> packed runtime, with WER and sizes",
        description="""The main job: corpus -> fp32 RNN-T -> GQ 4-bit fine-tune -> .subbit export -> packed
        streaming runtime, with WER at each step.""",
    )
    p.add_argument("--data", default="data/quick", help="corpus directory (built if missing)")
    p.add_argument("--out", default="runs/demo-rnnt", help="demo directory (the fp32 run goes in OUT/fp32)")
    p.add_argument("--minutes", type=float, default=4.0, help="fp32 training budget")
    p.add_argument("--qat-minutes", type=float, default=2.0, help="GQ 4-bit fine-tune budget")
    p.add_argument("--runtime-utterances", type=int, default=60,
                   help="held-out utterances streamed through the packed runtime")
    p.add_argument("--quick", action="store_true", help="smoke-sized: tiny model, 50 test utterances per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    if not args.minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    if not args.qat_minutes > 0:
        raise ValueError(f"--qat-minutes must be > 0, got {args.qat_minutes}")
    ctx = DemoContext(
        Path(args.data), Path(args.out), args.minutes, args.quick, args.seed, args.device,
        qat_minutes=args.qat_minutes, runtime_limit=args.runtime_utterances,
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for stage in STAGES:
        stage(ctx)
    ctx.summary["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    stage_results(ctx)  # last: results.json carries the wall time
    (ctx.out / "summary.json").write_text(json.dumps(ctx.summary, indent=2) + "\n")
    print(format_summary(ctx.summary))
    return 0


__all__ = [
    "DEMO_RECIPE", "GQ_RULES", "QAT8_RULES", "STAGES", "SUMMARY_LINES", "VARIANTS", "DemoContext", "describe_corpus",
    "format_summary", "register", "result_rows", "run", "stage_corpus", "stage_eval_fp32", "stage_eval_gq",
    "stage_eval_qat8", "stage_export", "stage_quantize_gq", "stage_quantize_qat8", "stage_results", "stage_runtime",
    "stage_train_fp32", "write_results",
]
