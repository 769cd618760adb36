"""``subbit train``: train (or resume) an fp32 or quantization-aware transducer run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from subbit.asr.recipes import AUGMENT_FROM_MINUTES, default_recipe, describe
from subbit.asr.train import ARCHS, PRESETS, RESUME_OVERRIDES, TrainConfig, TrainingDiverged
from subbit.commands._options import add_no_progress, verb_parser

#: exit code of a run stopped by a NaN/inf loss
EXIT_DIVERGED = 3


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``quantize``: budget, optimizer, GQ schedule, session."""
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget; sets the number of steps from measured speed")
    budget.add_argument("--steps", type=int, help="number of optimizer steps")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from checkpoints/last.pt (with --lr: at another peak lr; with "
                        "--steps: extend a finished run)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's (8)")
    p.add_argument("--max-frames", type=int, help="cap on feature frames per batch (bucketing)")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW, warmup + cosine); default: the recipe's (3e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--ctc-weight", type=float, default=0.3,
                   help="weight of an auxiliary CTC loss on the encoder output (training only: the head "
                        "is not in final.pt nor exported); it learns the alignment much faster, 0 = off")
    p.add_argument("--warmup-steps", type=int, help="default: the recipe's (200, at most 10%% of the run)")
    p.add_argument("--grad-clip", type=float, default=5.0,
                   help="max L2 norm of the gradient (with --latent-clip: of every parameter but the latents)")
    p.add_argument("--latent-clip", type=float, metavar="NORM",
                   help="with --quant: clip each latent weight's gradient to NORM on its own (default: off, "
                        "the latents are in the --grad-clip norm)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (under torchrun: one GPU per rank)")
    p.add_argument("--seed", type=int, default=0)
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="speed/noise/SpecAugment (default: on only for budgets of 2 h or more)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no speed/noise/SpecAugment")
    p.add_argument("--sortagrad", dest="sortagrad_epochs", type=int, metavar="N",
                   help="curriculum: the first N epochs run from the shortest batches to the longest")
    p.add_argument("--eval-every", type=int, default=0, help="dev WER every N steps (keeps checkpoints/best.pt)")
    p.add_argument("--eval-limit", type=int, default=200, help="dev utterances used by --eval-every")
    p.add_argument("--ckpt-every", type=int, default=200, help="write checkpoints/last.pt every N steps")
    p.add_argument("--keep-every", type=int, default=0, help="also keep checkpoints/step-N.pt every N steps")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--workers", dest="num_workers", type=int, default=0,
                   help="data-loading processes that prepare batches ahead (0 = in the training process)")
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if killed
    add_no_progress(p, "no progress bar")
    g = p.add_argument_group("quantization schedule (with --quant)")
    g.add_argument("--tau-start", type=float, default=1.0, help="relative softmax temperature at the start")
    g.add_argument("--tau-end", type=float, default=1e-3, help="relative temperature at the end of the anneal")
    g.add_argument("--anneal", choices=("exp", "cosine", "linear"), default="exp")
    g.add_argument("--anneal-end", type=float, default=0.85, help="fraction of the steps at which tau reaches --tau-end")
    g.add_argument("--quant-every", type=int, default=0, help="T_q: project weights every N steps (0 = never)")
    g.add_argument("--quant-mode", choices=("project", "forward"), default="project")


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "train", run,
        help="train an RNN-T or Conformer transducer (fp32 or with --quant)",
        description=f"""Train a transducer on a corpus directory (DIR/{{train,dev}}.jsonl) into a run directory.
        Options left unset come from the default recipe (subbit.asr.recipes), per architecture and budget:
        {describe('rnnt', 10)} for a 10-minute budget; augmentation switches on from
        {AUGMENT_FROM_MINUTES:g} minutes.""",
    )
    p.add_argument("--model", choices=ARCHS, default="rnnt")
    p.add_argument("--preset", choices=PRESETS, default="small")
    p.add_argument("--data", help="corpus directory with train.jsonl (and dev.jsonl)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--quant", help="quantization rules (.json or .yaml, subbit.quant.QuantConfig)")
    p.add_argument("--init", help="warm start from an fp32 run directory or checkpoint")
    p.add_argument("--tokenizer", choices=("bpe", "char"), help="default: the recipe's (char)")
    p.add_argument("--vocab-size", type=int, default=128)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model hyperparameter of the preset, e.g. dropout=0.3 (repeatable)")
    add_schedule_options(p)


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["dropout=0.3", "enc_layers=3"]`` -> ``{"dropout": 0.3, "enc_layers": 3}`` (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build the TrainConfig; on --resume the stored config wins, so budget/data may be omitted."""
    keys = {f for f in TrainConfig.__dataclass_fields__ if f != "model_overrides"}
    values = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    if getattr(args, "model_arg", None):
        values["model_overrides"] = parse_model_args(args.model_arg)
    values.update(overrides)
    unset = [k for k, v in values.items() if v is None]
    if unset and not values.get("resume"):
        recipe = default_recipe(values.get("model") or "rnnt", values.get("minutes"), values.get("steps"))
        picked = {k: v for k, v in recipe.items() if k in unset}
        values.update(picked)
        if picked:
            print("subbit: default recipe for " + str(values.get("model")) + ": "
                  + ", ".join(f"{k}={v}" for k, v in picked.items()), file=sys.stderr)
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("resume"):
        # placeholders: train() replaces them with RUN/config.json's train_args
        values.setdefault("data", "")
        if values.get("data") is None:
            values["data"] = ""
        if values.get("minutes") is None and values.get("steps") is None:
            values["steps"] = 1
    elif not values.get("data"):
        raise ValueError("--data is required (unless --resume)")
    return TrainConfig(**values)


def resume_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """With --resume: the stored options this command changes on purpose (--lr, --steps given here)."""
    if not getattr(args, "resume", False):
        return {}
    return {k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k, None) is not None}


def run_config(cfg: TrainConfig, overrides: dict[str, Any] | None = None) -> int:
    """Run training and turn a divergence into a clear message and a non-zero exit code."""
    # local: looked up at call time (tests patch subbit.asr.train.train)
    from subbit.asr.train import train

    try:
        result = train(cfg, overrides=overrides) if overrides else train(cfg)
    except TrainingDiverged as exc:
        print(f"subbit train: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if result.stopped == "finished":
        print(f"run {result.run_dir}: already finished at step {result.steps}/{result.total_steps}; nothing to do "
              f"(resume with --steps N > {result.steps} to train further)")
        return 0
    print(
        f"run {result.run_dir}: {result.steps}/{result.total_steps} steps ({result.stopped}) in "
        f"{result.elapsed / 60:.1f} min, last loss {result.last_loss:.4f}, "
        f"{result.audio_sec_per_sec:.0f} audio s per s"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    return run_config(config_from_args(args), resume_overrides(args))
