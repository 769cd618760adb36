"""``subbit compare``: the paper's comparisons and ablations as one resumable command."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from subbit.commands._options import add_json_out, add_no_progress, verb_parser

DEFAULT_RECIPES = "fp32,qat8,s8bqat4,gq8,gq5,gq4,gq3,gq2,gq-mixed,dkm4,ptq4-uniform,ptq4-kmeans"


def register(subparsers: Any) -> None:
    from subbit.experiments.ablations import ABLATIONS

    p = verb_parser(
        subparsers, "compare", run,
        help="train, quantize, evaluate and tabulate several methods from one fp32 model",
        description="""Warm-start every recipe from the same fp32 run with the same budget, convert, evaluate
        WER on the splits and measure the packed size; write OUT/results.{json,md} and WER-vs-size plots. A
        killed run continues where it stopped. --list shows the recipes.""",
    )
    p.add_argument("--list", action="store_true", help="print the recipes (and ablation variants) and exit")
    p.add_argument("--data", help="corpus directory (default: the fp32 run's)")
    p.add_argument("--out", help="output directory (shared by compare and every --ablation)")
    p.add_argument("--model", choices=("rnnt", "conformer"), default="rnnt", help="arch of a newly trained fp32 model")
    p.add_argument("--preset", choices=("tiny", "small", "paper"), default="small")
    fp = p.add_mutually_exclusive_group()
    fp.add_argument("--fp32-run", help="existing fp32 run to start from")
    fp.add_argument("--fp32-minutes", type=float, help="train the fp32 model for M minutes into OUT/fp32-base")
    fp.add_argument("--fp32-steps", type=int, help="train the fp32 model for N steps into OUT/fp32-base")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget per recipe")
    budget.add_argument("--steps", type=int, help="optimizer steps per recipe")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--recipes", help=f"comma-separated recipe names (default: {DEFAULT_RECIPES})")
    which.add_argument("--ablation", choices=ABLATIONS, help="run an ablation's variants instead of recipes")
    p.add_argument("--split", default="test_seen,test_heldout", help="comma-separated evaluation splits")
    add_json_out(p, "also write the results JSON here")
    p.add_argument("--eval-limit", type=int, help="evaluate the first N utterances of each split only")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning peak learning rate (all recipes)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, help="fine-tuning batch size (default: the fp32 run's, else 16)")
    p.add_argument("--seed", type=int, default=0)
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="speed/noise/SpecAugment while fine-tuning (default: as the fp32 run)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--tokenizer", choices=("bpe", "char"), default="bpe", help="for a newly trained fp32 model")
    p.add_argument("--vocab-size", type=int, default=128)
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps (what a kill loses)")
    p.add_argument("--no-export", dest="export", action="store_false", help="theoretical sizes only, no .subbit")
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    from subbit.experiments.ablations import ablation_recipes
    from subbit.experiments.compare import CompareConfig, markdown_table, run_compare
    from subbit.experiments.recipes import format_recipes, parse_recipes

    if args.list:
        from subbit.experiments.ablations import ABLATIONS

        print(format_recipes())
        for name in ABLATIONS:
            print(f"\nablation {name}: " + ", ".join(r.name for r in ablation_recipes(name)))
        return 0
    if not args.out:
        raise ValueError("--out is required (unless --list)")
    if args.ablation:
        recipes, name, kind = ablation_recipes(args.ablation), f"ablation-{args.ablation}", "ablation"
    else:
        recipes, name, kind = parse_recipes(args.recipes or DEFAULT_RECIPES), "results", "compare"
    splits = tuple(s.strip() for s in args.split.split(",") if s.strip())
    cfg = CompareConfig(
        out=args.out, data=args.data, model=args.model, preset=args.preset, fp32_run=args.fp32_run,
        fp32_minutes=args.fp32_minutes, fp32_steps=args.fp32_steps, minutes=args.minutes, steps=args.steps,
        splits=splits, lr=args.lr, warmup_steps=args.warmup_steps, batch_size=args.batch_size, seed=args.seed,
        augment=args.augment, tokenizer=args.tokenizer, vocab_size=args.vocab_size, eval_limit=args.eval_limit,
        ckpt_every=args.ckpt_every, threads=args.threads, device=args.device, progress=args.progress,
        export=args.export, command=_command_line(),
    )
    result = run_compare(cfg, recipes, name=name, kind=kind)
    print(markdown_table(result.rows, splits), end="")
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.files["json"].read_text())
    for key, path in result.files.items():
        print(f"{key}: {path}")
    return 0


def _command_line() -> str:
    """The command as typed, when run through the ``subbit`` script (empty when called in-process)."""
    if Path(sys.argv[0]).name != "subbit":
        return ""
    return "subbit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
