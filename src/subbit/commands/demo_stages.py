"""The stages of ``subbit demo``: corpus, fp32 training, GQ 4-bit and 8-bit QAT fine-tunes,
evaluation, export, and the packed runtime. Each reads and adds to one :class:`DemoContext`
and reuses its output when it already exists, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subbit.asr.recipes import default_recipe
from subbit.commands.demo_report import describe_corpus, write_results


@dataclass
class DemoContext:
    """The demo's settings, where its runs and files go, and the summary the stages fill in."""

    data: Path
    out: Path
    minutes: float
    quick: bool
    seed: int
    device: str
    summary: dict[str, Any] = field(default_factory=dict)
    qat_minutes: float = 2.0
    runtime_limit: int = 60

    @property
    def fp32_run(self) -> Path:
        return self.out / "fp32"

    @property
    def gq_run(self) -> Path:
        return self.out / "gq4"

    @property
    def subbit_file(self) -> Path:
        return self.out / "model-gq4.subbit"

    @property
    def eval_limit(self) -> int | None:
        return 50 if self.quick else None

    @property
    def preset(self) -> str:
        return "tiny" if self.quick else "small"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def stage_corpus(ctx: DemoContext) -> None:
    """Build the quick synthetic corpus unless it is already there (a cached build is a no-op)."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.corpus import BuildOptions, build_corpus

    _say(f"corpus: {ctx.data} (quick synthetic corpus; built once, then reused)")
    info = build_corpus(ctx.data, BuildOptions.create(quick=True, seed=ctx.seed))
    ctx.summary["corpus"] = {
        split: {"utterances": s["utterances"], "hours": s["hours"]} for split, s in info["splits"].items()
    }
    ctx.summary["corpus_engines"] = info.get("engines", {})
    ctx.summary["corpus_open_sentences"] = int((info.get("options") or {}).get("open_sentences", 0))
    _say("corpus: " + describe_corpus(ctx.summary["corpus_engines"], ctx.summary["corpus_open_sentences"]))


#: the fp32 recipe of the demo, tuned for a few CPU minutes on the quick corpus (runs/ measured
#: 08:30-09:00 UTC on the shared 2-core machine, 10 min each, greedy WER seen / held-out):
#: CLI defaults (bpe128, batch 16, lr 2e-3, augmentation)            94.9% / 95.1%
#: char tokenizer + sortagrad 1                                       91.5% / 94.5%
#: char + sortagrad 1 + batch 8 + lr 3e-3, no augmentation            36.8% / 72.3%
#: the same with augmentation (speed, noise, SpecAugment)              92.4% / 95.5%
#: Many small updates matter most in a short budget; augmentation pays off only with more steps.
#: These are now the defaults of `subbit train` (subbit.asr.recipes); the demo adds only how it
#: uses this machine.
DEMO_RECIPE: dict[str, Any] = {
    **{k: v for k, v in default_recipe("rnnt", minutes=10).items() if k != "warmup_steps"},
    "num_workers": 1,
    # one compute thread next to the loader process: two threads on a busy 2-core machine
    # stalled at ~10 s per step (measured), one thread kept 0.3-0.5 s
    "threads": 1,
}


def stage_train_fp32(ctx: DemoContext) -> None:
    """Train the small (tiny with --quick) RNN-T in fp32 for the time budget."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.checkpoint import RunPaths
    from subbit.asr.train import TrainConfig, train

    paths = RunPaths(ctx.fp32_run)
    preset = ctx.preset
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
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.checkpoint import load_checkpoint

    return float(load_checkpoint(paths.last)["elapsed"]) / 60


def _evaluate_run(ctx: DemoContext, run_dir: Path, tag: str) -> None:
    """Greedy WER of a run's final model on seen voices and on held-out voices/engines."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import evaluate, write_errors
    from subbit.runs import load_run

    loaded = load_run(run_dir, "final")
    if tag == "fp32":
        n_params = sum(p.numel() for p in loaded.model.parameters())
        ctx.summary["params"] = n_params
        ctx.summary["fp32_mb"] = round(n_params * 4 / 2**20, 3)
    for split in ("test_seen", "test_heldout", "test_open"):
        if split == "test_open" and not (ctx.data / f"{split}.jsonl").is_file():
            continue  # only the full corpus has open sentences in their own split
        _say(f"eval ({tag}): greedy on {split}")
        res = evaluate(
            loaded.model, loaded.tokenizer, read_manifest(ctx.data / f"{split}.jsonl"),
            limit=ctx.eval_limit, split=split, run=str(run_dir), device=ctx.device, progress=True,
            frontend=loaded.frontend,
        )
        (run_dir / f"eval-{split}.json").write_text(json.dumps(res.to_dict(), indent=2) + "\n")
        write_errors(run_dir / f"errors-{split}.tsv", res)
        _say(res.summary())
        ctx.summary[f"wer_{split}" if tag == "fp32" else f"{tag}_wer_{split}"] = round(100 * res.wer, 2)


def stage_eval_fp32(ctx: DemoContext) -> None:
    """Greedy WER of the fp32 model on seen voices and on held-out voices/engines."""
    _evaluate_run(ctx, ctx.fp32_run, "fp32")


#: the demo's quantized variants, each fine-tuned from the fp32 run for QAT_MINUTES:
#: GQ 4 bits everywhere (per-tensor mu-law codebooks, learnable centroids, tau annealed soft ->
#: hard) and the paper's 8-bit QAT baseline (uniform symmetric per-channel fake quant + STE);
#: biases and norms stay float
GQ_RULES: dict[str, Any] = {"default": {"method": "gq", "bits": 4}, "rules": {}}
QAT8_RULES: dict[str, Any] = {"default": {"method": "uniform", "bits": 8, "granularity": "channel"}, "rules": {}}
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "gq4": ("gq", GQ_RULES, "GQ 4-bit"),
    "qat8": ("uniform", QAT8_RULES, "8-bit QAT"),
}


def _quantize(ctx: DemoContext, tag: str) -> None:
    """QAT fine-tune of one variant, warm-started from the fp32 run."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.checkpoint import RunPaths, read_run_config
    from subbit.asr.train import TrainConfig, train
    from subbit.quant import QuantConfig

    _, rules_dict, label = VARIANTS[tag]
    paths = RunPaths(ctx.out / tag)
    if paths.final.is_file():
        _say(f"quantize: {paths.root} is finished; reusing it")
        return
    rules = ctx.out / f"{tag}-rules.json"
    QuantConfig.from_dict(rules_dict).save(rules)
    fp32_cfg = read_run_config(ctx.fp32_run)
    resume = paths.last.is_file()
    _say(f"quantize: {label} fine-tune for {ctx.qat_minutes:g} min -> {paths.root}" + (" (resuming)" if resume else ""))
    recipe = {**DEMO_RECIPE, "lr": 5e-4, "warmup_steps": 50, "sortagrad_epochs": 0}
    recipe["tokenizer"] = fp32_cfg["tokenizer"]["kind"]
    recipe["vocab_size"] = int(fp32_cfg["tokenizer"]["vocab_size"])
    cfg = TrainConfig(
        data=str(ctx.data), out=str(paths.root), model="rnnt", preset=ctx.preset, minutes=ctx.qat_minutes,
        seed=ctx.seed, device=ctx.device, resume=resume, init=str(ctx.fp32_run), quant=str(rules), **recipe,
    )
    result = train(cfg)
    ctx.summary[f"{tag}_train_minutes"] = round(result.elapsed / 60, 2)


def stage_quantize_gq(ctx: DemoContext) -> None:
    """GQ quantization-aware fine-tune (4 bits) warm-started from the fp32 run."""
    _quantize(ctx, "gq4")


def stage_eval_gq(ctx: DemoContext) -> None:
    """Greedy WER of the converted 4-bit model (the PyTorch forward of what gets exported)."""
    _evaluate_run(ctx, ctx.gq_run, "gq4")


def stage_quantize_qat8(ctx: DemoContext) -> None:
    """The 8-bit QAT baseline, same start and budget as GQ."""
    _quantize(ctx, "qat8")


def stage_eval_qat8(ctx: DemoContext) -> None:
    _evaluate_run(ctx, ctx.out / "qat8", "qat8")


def stage_export(ctx: DemoContext) -> None:
    """Write the bit-packed .subbit files (GQ, 8-bit QAT, fp32) and read each back through the
    validating loader."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.runs import export_run

    for tag, run, path in _files(ctx):
        summary = export_run(run, path)
        _say(f"export: {path} ({summary.file_bytes:,} bytes)")
        ctx.summary[f"{tag}_file_bytes"] = summary.file_bytes
        if tag == "gq4":
            ctx.summary["subbit_bytes"] = summary.file_bytes
            ctx.summary["fp32_bytes"] = summary.fp32_bytes
            ctx.summary["int8_bytes"] = summary.int8_bytes


def _files(ctx: DemoContext) -> list[tuple[str, Path, Path]]:
    """(tag, run, .subbit path) of every model the demo serves, GQ first."""
    return [("gq4", ctx.gq_run, ctx.subbit_file), ("qat8", ctx.out / "qat8", ctx.out / "model-qat8.subbit"),
            ("fp32", ctx.fp32_run, ctx.out / "model-fp32.subbit")]


def stage_runtime(ctx: DemoContext) -> None:
    """Stream held-out audio through the packed-weight runtime (C kernels, no torch) and score it:
    WER and per-chunk latency of each served file, side by side on this machine."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    import numpy as np

    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import score
    from subbit.experiments.study import stream_utterances

    utts = read_manifest(ctx.data / "test_heldout.jsonl")[: ctx.runtime_limit]
    _say(f"runtime: streaming {len(utts)} held-out utterances through each .subbit file in 100 ms chunks")
    for tag, _, path in _files(ctx):
        t0 = time.perf_counter()
        hyps, chunk_ms, audio_s, weight_bytes = stream_utterances(path, utts)
        elapsed = time.perf_counter() - t0
        rows = score([u.id for u in utts], [u.text for u in utts], hyps)
        errors, words = sum(r.errors for r in rows), max(1, sum(r.ref_words for r in rows))
        p50, p90 = (float(np.percentile(chunk_ms, q)) for q in (50, 90))
        prefix = "runtime" if tag == "gq4" else f"{tag}_runtime"
        ctx.summary[f"{prefix}_wer_test_heldout"] = round(100 * errors / words, 2)
        ctx.summary[f"{prefix}_rtf"] = round(elapsed / max(audio_s, 1e-9), 4)
        ctx.summary[f"{prefix}_weight_bytes"] = weight_bytes
        ctx.summary[f"{tag}_p50_ms"] = round(p50, 3)
        ctx.summary[f"{tag}_p90_ms"] = round(p90, 3)
        ctx.summary["runtime_utterances"] = len(utts)
        _say(f"runtime {tag}: WER {100 * errors / words:.2f}%, RTF {elapsed / audio_s:.3f}, "
             f"chunk p50 {p50:.2f} ms p90 {p90:.2f} ms, {weight_bytes:,} weight bytes")


def stage_results(ctx: DemoContext) -> None:
    """results.json, report.md and a WER-vs-size plot of the three served models."""
    write_results(ctx.out, ctx.data, ctx.summary)
    _say(f"results: {ctx.out / 'results.json'}, {ctx.out / 'report.md'}, {ctx.out / 'wer-vs-size.png'}")
