"""``subbit demo``: the README's main job, end to end on the embedded corpus.

Stages run in order and each adds its figures to one summary (printed at the end and written
to RUN/summary.json). A stage whose output already exists is reused, so an interrupted demo
continues where it stopped. To extend the demo (GQ fine-tune, export, runtime), append a stage
function to :data:`STAGES`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    data: Path
    out: Path
    minutes: float
    quick: bool
    seed: int
    device: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def fp32_run(self) -> Path:
        return self.out / "fp32"

    @property
    def eval_limit(self) -> int | None:
        return 50 if self.quick else None


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def stage_corpus(ctx: DemoContext) -> None:
    """Build the quick synthetic corpus unless it is already there (a cached build is a no-op)."""
    from subbit.asr.corpus import BuildOptions, build_corpus

    _say(f"corpus: {ctx.data} (quick synthetic corpus; built once, then reused)")
    info = build_corpus(ctx.data, BuildOptions.create(quick=True, seed=ctx.seed))
    ctx.summary["corpus"] = {
        split: {"utterances": s["utterances"], "hours": s["hours"]} for split, s in info["splits"].items()
    }


#: the fp32 recipe of the demo, tuned for a few CPU minutes on the quick corpus (runs/ measured
#: 08:30-09:00 UTC on the shared 2-core machine, 10 min each, greedy WER seen / held-out):
#: CLI defaults (bpe128, batch 16, lr 2e-3, augmentation)            94.9% / 95.1%
#: char tokenizer + sortagrad 1                                       91.5% / 94.5%
#: char + sortagrad 1 + batch 8 + lr 3e-3, no augmentation            36.8% / 72.3%
#: the same with augmentation (speed, noise, SpecAugment)              92.4% / 95.5%
#: Many small updates matter most in a short budget; augmentation pays off only with more steps.
DEMO_RECIPE: dict[str, Any] = {
    "tokenizer": "char",
    "sortagrad_epochs": 1,
    "batch_size": 8,
    "lr": 3e-3,
    "augment": False,
    "num_workers": 1,
    # one compute thread next to the loader process: two threads on a busy 2-core machine
    # stalled at ~10 s per step (measured), one thread kept 0.3-0.5 s
    "threads": 1,
}


def stage_train_fp32(ctx: DemoContext) -> None:
    """Train the small (tiny with --quick) RNN-T in fp32 for the time budget."""
    from subbit.asr.checkpoint import RunPaths
    from subbit.asr.train import TrainConfig, train

    paths = RunPaths(ctx.fp32_run)
    preset = "tiny" if ctx.quick else "small"
    if paths.final.is_file():
        _say(f"train: {paths.root} is finished; reusing it")
    else:
        resume = paths.last.is_file()
        _say(f"train: rnnt/{preset} fp32 for {ctx.minutes:g} min -> {paths.root}" + (" (resuming)" if resume else ""))
        cfg = TrainConfig(
            data=str(ctx.data), out=str(paths.root), model="rnnt", preset=preset, minutes=ctx.minutes,
            seed=ctx.seed, device=ctx.device, resume=resume, **DEMO_RECIPE,
        )
        result = train(cfg)
        ctx.summary["train_audio_sec_per_sec"] = round(result.audio_sec_per_sec, 1)
    ckpt_minutes = _trained_minutes(paths)
    ctx.summary["train_minutes"] = round(ckpt_minutes, 2)


def _trained_minutes(paths: Any) -> float:
    from subbit.asr.checkpoint import load_checkpoint

    return float(load_checkpoint(paths.last)["elapsed"]) / 60


def stage_eval_fp32(ctx: DemoContext) -> None:
    """Greedy WER of the fp32 model on seen voices and on held-out voices/engines."""
    from subbit.asr.checkpoint import load_run
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import evaluate, write_errors

    loaded = load_run(ctx.fp32_run, "final")
    n_params = sum(p.numel() for p in loaded.model.parameters())
    ctx.summary["params"] = n_params
    ctx.summary["fp32_mb"] = round(n_params * 4 / 2**20, 3)
    for split in ("test_seen", "test_heldout"):
        _say(f"eval: greedy on {split}")
        res = evaluate(
            loaded.model, loaded.tokenizer, read_manifest(ctx.data / f"{split}.jsonl"),
            limit=ctx.eval_limit, split=split, run=str(ctx.fp32_run), device=ctx.device, progress=True,
            frontend=loaded.frontend,
        )
        (ctx.fp32_run / f"eval-{split}.json").write_text(json.dumps(res.to_dict(), indent=2) + "\n")
        write_errors(ctx.fp32_run / f"errors-{split}.tsv", res)
        _say(res.summary())
        ctx.summary[f"wer_{split}"] = round(100 * res.wer, 2)


STAGES: list[Callable[[DemoContext], None]] = [stage_corpus, stage_train_fp32, stage_eval_fp32]


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "=== subbit demo: summary ==="]
    if "params" in s:
        lines.append(f"model            rnnt, {s['params'] / 1e6:.2f}M params, {s['fp32_mb']:.2f} MB fp32")
    if "train_minutes" in s:
        lines.append(f"training         {s['train_minutes']:.1f} min (fp32)")
    if "wer_test_seen" in s:
        lines.append(f"WER seen voices  {s['wer_test_seen']:.2f}%")
    if "wer_test_heldout" in s:
        lines.append(f"WER held-out     {s['wer_test_heldout']:.2f}% (voices and engines never trained on)")
    lines.append(f"total time       {s.get('wall_minutes', 0):.1f} min")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build the quick corpus, train a small RNN-T, evaluate it, print a summary",
        description="The main job: corpus -> fp32 RNN-T -> WER on seen and held-out voices.",
    )
    p.add_argument("--data", default="data/quick", help="corpus directory (built if missing)")
    p.add_argument("--out", default="runs/demo-rnnt", help="demo directory (the fp32 run goes in OUT/fp32)")
    p.add_argument("--minutes", type=float, default=4.0, help="fp32 training budget")
    p.add_argument("--quick", action="store_true", help="smoke-sized: tiny model, 50 test utterances per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    ctx = DemoContext(Path(args.data), Path(args.out), args.minutes, args.quick, args.seed, args.device)
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for stage in STAGES:
        stage(ctx)
    ctx.summary["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    (ctx.out / "summary.json").write_text(json.dumps(ctx.summary, indent=2) + "\n")
    print(format_summary(ctx.summary))
    return 0
