"""The study's report: markdown tables, WER-vs-size and convergence plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from subbit.experiments.study_claims import _fmt_ci, yes_no
from subbit.experiments.study_plan import SECTIONS


# -- outputs ----------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def report_markdown(rows: list[dict[str, Any]], claims: list[dict[str, str]], meta: dict[str, Any]) -> str:
    lines = ["# subbit study", "",
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- machine: {meta['machine']}",
             f"- corpus: {meta['corpus']} ({meta['corpus_id']})", f"- wall time of this invocation: {meta['wall_minutes']:.1f} min",
             f"- budgets: fp32 {meta['fp32_steps']} steps, every fine-tune {meta['steps']} steps (lr {meta['lr']})",
             f"- cells finished: {meta['cells']} of {meta['cells_planned']} planned (rows without seeds are not run yet)",
             "- WER in %, 95% intervals from a paired bootstrap over utterances (2000 resamples); delta = held-out WER "
             "minus the fp32 control's (fp32 fine-tuned for the same steps and seeds), in points; lossless = upper "
             "bound of delta within max(2% relative, 0.2 absolute); (seen): the same rule on seen voices, where "
             "the fp32 model is good (reported, no claim rests on it).", ""]
    lines += ["## Claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['evidence']} |" for c in claims]
    for arch in meta["archs"]:
        for section in SECTIONS:
            sec = [r for r in rows if r["arch"] == arch and section in r.get("sections", [])]
            if not sec:
                continue
            lines += ["", f"## {arch}: {section}", "",
                      "| recipe | bits avg | bits/weight all-in | size KiB | x smaller | seeds | WER seen | delta seen [95% CI] | WER held-out [95% CI] | delta vs fp32 [95% CI] | lossless (seen) | runtime WER |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sorted(sec, key=lambda r: -(r.get("bits_avg") or 0)):
                size = r.get("size_bytes")
                ratio = (1 / r["size_vs_fp32"]) if r.get("size_vs_fp32") else None
                ci = r.get("wer_heldout_ci")
                held = "-" if r.get("wer_heldout") is None else f"{_pct(r['wer_heldout'])} [{_pct(ci[0])}, {_pct(ci[1])}]"
                bits = "-" if r.get("bits_avg") is None else f"{r['bits_avg']:.2f}"
                kib = "-" if not size else f"{size / 1024:.1f}"
                smaller = "-" if ratio is None else f"{ratio:.2f}"
                lossless = yes_no(r.get("lossless"))
                if r.get("lossless_seen") is not None:
                    lossless += f" ({yes_no(r['lossless_seen'])})"
                bpw = "-" if r.get("bits_per_weight") is None else f"{r['bits_per_weight']:.2f}"
                lines.append(f"| {r['name']} | {bits} | {bpw} | {kib} | {smaller} | {len(r.get('seeds', []))} | "
                             f"{_pct(r.get('wer_seen'))} | {_fmt_ci(r.get('delta_seen_vs_fp32_ci'))} | {held} | "
                             f"{_fmt_ci(r.get('delta_vs_fp32_ci'))} | "
                             f"{lossless} | {_pct(r.get('runtime_wer_heldout'))} |")
    served = [(abs(r["runtime_wer_heldout"] - r["torch_wer_heldout_same_utts"]), r) for r in rows
              if r.get("runtime_wer_heldout") is not None and r.get("torch_wer_heldout_same_utts") is not None]
    if served:
        gap, worst = max(served, key=lambda t: t[0])
        lines += ["", "## What you train is what you serve", "",
                  f"Each row's exported file streamed through the packed runtime (100 ms chunks, int8 activations) "
                  f"vs the converted PyTorch model on the same held-out utterances: {len(served)} rows, largest WER "
                  f"gap {100 * gap:.2f} points ({worst['arch']}:{worst['name']}), mean gap "
                  f"{100 * sum(g for g, _ in served) / len(served):.2f} points."]
    improving = [f"{r['arch']}:{r['name']}" for r in rows if r.get("still_improving")]
    if any(r.get("dev_curve") for r in rows):
        lines += ["", "## Convergence", "",
                  "Dev WER every few fine-tuning steps (curves-ARCH.png). Still improving at the step cap "
                  "(last point better than every earlier one by more than the lossless margin): "
                  + (", ".join(improving) or "none") + "."]
    for arch, table in (meta.get("tuning") or {}).items():
        lines += ["", f"## {arch}: tuning on dev (seed 0; the choice applies to the family's test cells)", "", *table]
    if meta.get("missing"):
        lines += ["", "Recipes planned but not defined yet (skipped): " + ", ".join(meta["missing"])]
    return "\n".join(lines) + "\n"


def _finish(plt: Any, fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str,
            **legend: Any) -> Path:
    """Labels, grid, legend, save and close: the same last steps for every study plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(rows: list[dict[str, Any]], out: Path, archs: Sequence[str]) -> list[Path]:
    """WER (held-out) vs size per architecture, with the 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for arch in archs:
        pts = [r for r in rows if r["arch"] == arch and r.get("wer_heldout") is not None and r.get("size_bytes")]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({r["method"] for r in pts})
        for m in methods:
            ms = [r for r in pts if r["method"] == m]
            x = [r["size_bytes"] / 1024 for r in ms]
            y = [100 * r["wer_heldout"] for r in ms]
            err = [[100 * (r["wer_heldout"] - r["wer_heldout_ci"][0]) for r in ms],
                   [100 * (r["wer_heldout_ci"][1] - r["wer_heldout"]) for r in ms]]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=m)
            for r, xi, yi in zip(ms, x, y):
                ax.annotate(r["name"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        paths.append(_finish(plt, fig, ax, out / f"pareto-{arch}.png", "model size (KiB, log scale)",
                             "held-out WER (%) with 95% CI", f"subbit study: {arch}, WER vs size", fontsize=7))
    return paths


def write_curves(rows: list[dict[str, Any]], out: Path, archs: Sequence[str]) -> list[Path]:
    """Dev WER against fine-tuning step per recipe (one seed): did the step cap cut training short?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for arch in archs:
        rs = [r for r in rows if r["arch"] == arch and r.get("dev_curve")]
        if not rs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rs:
            steps, wers = zip(*r["dev_curve"])
            ax.plot(steps, [100 * w for w in wers], marker=".", linewidth=1, label=r["name"])
        paths.append(_finish(plt, fig, ax, out / f"curves-{arch}.png", "fine-tuning step", "dev WER (%)",
                             f"subbit study: {arch}, dev WER during fine-tuning", fontsize=6, ncol=2))
    return paths


