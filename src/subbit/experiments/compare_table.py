"""A comparison's outputs: the one-line progress row, the lossless marks, results.md/json, plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from subbit.experiments import plots
from subbit.experiments.compare_config import REFERENCE, CompareConfig
from subbit.experiments.compare_runs import write_json


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def format_row_line(row: dict[str, Any], splits: Sequence[str]) -> str:
    """The line printed as each recipe finishes."""
    wers = ", ".join(f"{s} {_pct(row['wer'].get(s))}%" for s in splits)
    size = row.get("size_bytes")
    return (f"{row['recipe']}: {row['status']}; WER {wers}; {row.get('bits') or 0:.2f} bits; "
            f"{(size or 0) / 1024:.1f} KiB ({(row.get('size_vs_fp32') or 0):.3f} of fp32); "
            f"{row['steps']} steps in {row['train_minutes']:.1f} min")


def mark_lossless(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str | None:
    """Set ``row["lossless"][split]``: WER within max(2% relative, 0.2 absolute) of the fp32 row
    trained with the same budget (``fp32``; else ``fp32-init``), the yardstick of gq-method.md.
    Returns the reference recipe's name (None when there is none)."""
    ref = next((r for r in rows if r["recipe"] == "fp32" and r.get("status") == "done"), None)
    ref = ref or next((r for r in rows if r["recipe"] == REFERENCE), None)
    for r in rows:
        r["lossless"] = {}
        for s in splits:
            w, w0 = r["wer"].get(s), (ref or {}).get("wer", {}).get(s)
            r["lossless"][s] = None if w is None or w0 is None else bool(w <= w0 + max(0.02 * w0, 0.002) + 1e-12)
    return None if ref is None else ref["recipe"]


def markdown_table(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str:
    """results.md: one line per recipe; WER in %, sizes in KiB and as a fraction of fp32."""
    head = ["recipe", "method", "bits", *[f"WER {s} %" for s in splits], "size KiB", "vs fp32", "deploy KiB",
            "deploy vs fp32", "lossless", "train min", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def kib(x: Any) -> str:
        return "-" if x is None else f"{x / 1024:.1f}"

    def frac(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in rows:
        cells = [
            r["recipe"] + ("" if r.get("status", "done") == "done" else f" ({r['status']})"), r["method"],
            "-" if r.get("bits") is None else f"{r['bits']:.2f}",
            *[_pct(r["wer"].get(s)) for s in splits],
            kib(r.get("size_bytes")), frac(r.get("size_vs_fp32")),
            kib(r.get("size_deploy_bytes")), frac(r.get("deploy_vs_fp32")),
            "/".join({True: "yes", False: "no", None: "-"}[(r.get("lossless") or {}).get(s)] for s in splits),
            f"{r['train_minutes']:.1f}", str(r["steps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(cfg: CompareConfig, rows: list[dict[str, Any]], name: str, kind: str) -> dict[str, Path]:
    """``OUT/<name>.json`` (every row but its per-tensor sizes), ``<name>.md`` and the plots:
    a WER bar chart per variant for ``kind="ablation"``, else WER vs size per split."""
    root = cfg.root
    ref = mark_lossless(rows, cfg.splits)
    slim = [{k: v for k, v in r.items() if k != "tensors"} for r in rows]
    doc = {"name": name, "kind": kind, "command": cfg.command, "settings": cfg.to_dict(), "splits": list(cfg.splits),
           "rows": slim}
    files = {"json": root / f"{name}.json", "md": root / f"{name}.md"}
    write_json(files["json"], doc)
    md = f"# {name}\n\n"
    if cfg.command:
        md += f"Command: `{cfg.command}`\n\n"
    md += markdown_table(slim, cfg.splits)
    md += ("\nsize: the .subbit file when the exporter wrote one (vs the fp32 model's .subbit), else "
           "packed bits + codebooks + float tensors from the quant report (vs 4 bytes per parameter). "
           "deploy: packed indices + smallest exact codebook (evenly spaced rows as offset+step) + float "
           "tensors, vs 4 bytes per parameter; the plots use it. bits: mean over quantized weights. "
           f"lossless (per split): WER within max(2% relative, 0.2 absolute) of {ref}. "
           f"{REFERENCE}: the fp32 model every recipe starts from, without fine-tuning.\n")
    files["md"].write_text(md)
    if kind == "ablation":
        files["png"] = plots.plot_ablation(slim, cfg.splits, root / f"{name}.png", title=name)
    else:
        for s in cfg.splits:
            files[f"png_{s}"] = plots.plot_wer_vs_size(slim, s, root / f"{name}_wer_vs_size_{s}.png",
                                                       title=f"{name}: WER vs size ({s})")
    return files
