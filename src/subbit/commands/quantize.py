"""``subbit quantize``: quantization-aware fine-tune of an fp32 run (train with --init and --quant)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from subbit.commands._options import verb_parser
from subbit.commands.train import add_schedule_options, config_from_args, resume_overrides, run_config


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "quantize", run,
        help="QAT fine-tune of an fp32 run with a rules file (GQ or a baseline)",
        description="""Warm-start from the fp32 RUN, prepare the model with RULES (subbit.quant.QuantConfig),
        fine-tune while the temperature anneals, and write the converted model to QRUN/final.pt.""",
    )
    p.add_argument("run", metavar="RUN", help="fp32 run directory (or a checkpoint inside it)")
    p.add_argument("--rules", required=True, help="quantization rules (.json or .yaml)")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--data", help="corpus directory (default: the one RUN was trained on)")
    add_schedule_options(p)
    p.set_defaults(warmup_steps=50, sortagrad_epochs=0)


#: fine-tuning: a lower lr than from scratch (the default of --lr here; a resume keeps the stored one)
FINETUNE_LR = 5e-4


def run(args: argparse.Namespace) -> int:
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.checkpoint import read_run_config, run_dir_of

    if Path(args.rules).is_dir():
        raise ValueError(f"--rules: {args.rules} is a directory; give a rules file (.json or .yaml)")
    init_cfg = read_run_config(run_dir_of(args.run))
    if init_cfg.get("quant"):
        raise ValueError(f"RUN: {args.run} is already quantized; give an fp32 run")
    stored = init_cfg["train_args"]
    cfg = config_from_args(
        args,
        init=args.run,
        quant=args.rules,
        data=args.data or init_cfg["data"],
        model=stored.get("model", "rnnt"),
        preset=stored.get("preset", "small"),
        tokenizer=init_cfg["tokenizer"]["kind"],
        vocab_size=int(init_cfg["tokenizer"]["vocab_size"]),
        **({} if args.resume or args.lr is not None else {"lr": FINETUNE_LR}),
    )
    return run_config(cfg, resume_overrides(args))
