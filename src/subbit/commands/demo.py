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

from subbit.asr.recipes import default_recipe


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

    qat_minutes: float = 2.0
    runtime_limit: int = 60

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


def describe_corpus(engines: dict[str, list[str]], open_sentences: int) -> str:
    """One line naming the engines, their voices and the text sources: results depend on them."""
    def voices(vs: list[str]) -> str:  # a long espeak list would bury the line: name a few
        return ", ".join(vs) if len(vs) <= 6 else ", ".join(vs[:4]) + f", ... (+{len(vs) - 4} more)"

    parts = [f"{eng} ({len(vs)} voice{'s' if len(vs) != 1 else ''}: {voices(vs)})" for eng, vs in engines.items()]
    text = (f"grammar commands + {open_sentences:,} open fortune sentences" if open_sentences
            else "grammar commands only (no Debian fortunes: no open sentences)")
    return "engines " + ("; ".join(parts) or "none") + "; text: " + text


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


def result_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's rows in the study's shape (results.json)."""
    rows = []
    for tag, method, bits in (("fp32", "fp32", 32.0), ("qat8", "uniform", 8.0), ("gq4", "gq", 4.0)):
        pre = "" if tag == "fp32" else f"{tag}_"
        rows.append({
            "name": tag, "method": method, "bits_avg": bits, "size_bytes": s.get(f"{tag}_file_bytes"),
            "wer_seen": s.get(f"{pre}wer_test_seen"), "wer_heldout": s.get(f"{pre}wer_test_heldout"),
            "runtime_wer_heldout": s.get("runtime_wer_test_heldout" if tag == "gq4" else f"{tag}_runtime_wer_test_heldout"),
            "p90_ms": s.get(f"{tag}_p90_ms"), "p50_ms": s.get(f"{tag}_p50_ms"),
        })
    return rows


def stage_results(ctx: DemoContext) -> None:
    """results.json, report.md and a WER-vs-size plot of the three served models."""
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    import matplotlib

    matplotlib.use("Agg")
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    import matplotlib.pyplot as plt

    rows = result_rows(ctx.summary)
    (ctx.out / "results.json").write_text(json.dumps({"rows": rows, "summary": ctx.summary}, indent=2) + "\n")
    lines = ["# subbit demo", "", f"corpus: {ctx.data}", "",
             "WER in % (greedy, PyTorch forward of the converted model; runtime = the .subbit file streamed in "
             "100 ms chunks); size = bytes of the .subbit file; p90 = 90th percentile of the time per 100 ms chunk "
             "in the packed runtime on this machine, one thread. One seed, short budgets: differences of a few "
             "points are within noise (see `subbit study` for intervals).", "",
             "| model | bits | file bytes | WER seen | WER held-out | runtime WER held-out | p50 ms | p90 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['bits_avg']:g} | {r['size_bytes'] or '-'} | {r['wer_seen']} | {r['wer_heldout']} | "
                     f"{r['runtime_wer_heldout']} | {r['p50_ms']} | {r['p90_ms']} |")
    (ctx.out / "report.md").write_text("\n".join(lines) + "\n")
    pts = [r for r in rows if r["size_bytes"] and r["wer_heldout"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in pts:
            ax.scatter(r["size_bytes"] / 1024, r["wer_heldout"], s=40)
            ax.annotate(f"{r['name']} (p90 {r['p90_ms']} ms)", (r["size_bytes"] / 1024, r["wer_heldout"]),
                        fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(".subbit file size (KiB, log scale)")
        ax.set_ylabel("held-out WER (%)")
        ax.set_title("subbit demo: fp32 vs 8-bit QAT vs GQ 4-bit")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(ctx.out / "wer-vs-size.png", dpi=120)
        plt.close(fig)
    _say(f"results: {ctx.out / 'results.json'}, {ctx.out / 'report.md'}, {ctx.out / 'wer-vs-size.png'}")


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


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "=== subbit demo: summary ==="]
    if "corpus_engines" in s:
        lines.append(f"corpus           {describe_corpus(s['corpus_engines'], s.get('corpus_open_sentences', 0))}")
    if "params" in s:
        lines.append(f"model            rnnt, {s['params'] / 1e6:.2f}M params, {s['fp32_mb']:.2f} MB fp32")
    if "train_minutes" in s:
        lines.append(f"training         {s['train_minutes']:.1f} min (fp32)")
    if "wer_test_seen" in s:
        lines.append(f"WER seen voices  {s['wer_test_seen']:.2f}%")
    if "wer_test_heldout" in s:
        lines.append(f"WER held-out     {s['wer_test_heldout']:.2f}% (voices and engines never trained on)")
    if "wer_test_open" in s:
        lines.append(f"WER open text    {s['wer_test_open']:.2f}% (fortune sentences, open vocabulary)")
    if "gq4_wer_test_seen" in s:
        lines.append(
            f"GQ 4-bit         WER seen {s['gq4_wer_test_seen']:.2f}%, held-out {s['gq4_wer_test_heldout']:.2f}%"
        )
    if "qat8_wer_test_seen" in s:
        lines.append(
            f"8-bit QAT        WER seen {s['qat8_wer_test_seen']:.2f}%, held-out {s['qat8_wer_test_heldout']:.2f}%"
        )
    if "subbit_bytes" in s:
        lines.append(
            f"model file       {s['subbit_bytes']:,} bytes .subbit vs {s['fp32_bytes']:,} fp32 "
            f"({s['fp32_bytes'] / s['subbit_bytes']:.1f}x smaller) and {s['int8_bytes']:,} int8"
        )
    if "runtime_wer_test_heldout" in s:
        lines.append(
            f"packed runtime   WER held-out {s['runtime_wer_test_heldout']:.2f}% on {s['runtime_utterances']} "
            f"utterances, streaming RTF {s['runtime_rtf']:.3f}, {s['runtime_weight_bytes']:,} weight bytes"
        )
    if "gq4_p90_ms" in s and "qat8_p90_ms" in s:
        lines.append(
            f"latency (p90)    per 100 ms chunk: GQ 4-bit {s['gq4_p90_ms']:.2f} ms, 8-bit QAT {s['qat8_p90_ms']:.2f} ms, "
            f"fp32 {s.get('fp32_p90_ms', float('nan')):.2f} ms; files {s.get('gq4_file_bytes', 0):,} / "
            f"{s.get('qat8_file_bytes', 0):,} / {s.get('fp32_file_bytes', 0):,} bytes"
        )
    lines.append(f"total time       {s.get('wall_minutes', 0):.1f} min")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="corpus -> fp32 RNN-T -> GQ 4-bit -> .subbit -> packed runtime, with WER and sizes",
        description="The main job: corpus -> fp32 RNN-T -> GQ 4-bit fine-tune -> .subbit export -> packed streaming runtime, with WER at each step.",
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
    p.set_defaults(func=run)


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
