"""What ``subbit demo`` reports: the corpus line, results.json / report.md / the plot, and the
summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def describe_corpus(engines: dict[str, list[str]], open_sentences: int) -> str:
    """One line naming the engines, their voices and the text sources: results depend on them."""
    def voices(vs: list[str]) -> str:  # a long espeak list would bury the line: name a few
        return ", ".join(vs) if len(vs) <= 6 else ", ".join(vs[:4]) + f", ... (+{len(vs) - 4} more)"

    parts = [f"{eng} ({len(vs)} voice{'s' if len(vs) != 1 else ''}: {voices(vs)})" for eng, vs in engines.items()]
    text = (f"grammar commands + {open_sentences:,} open fortune sentences" if open_sentences
            else "grammar commands only (no Debian fortunes: no open sentences)")
    return "engines " + ("; ".join(parts) or "none") + "; text: " + text


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


def write_results(out: Path, data: Path, summary: dict[str, Any]) -> None:
    """OUT/results.json, OUT/report.md and OUT/wer-vs-size.png of the three served models."""
    # local: matplotlib is slow to import and every verb module is imported to build --help
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result_rows(summary)
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    lines = ["# subbit demo", "", f"corpus: {data}", "",
             "WER in % (greedy, PyTorch forward of the converted model; runtime = the .subbit file streamed in "
             "100 ms chunks); size = bytes of the .subbit file; p90 = 90th percentile of the time per 100 ms chunk "
             "in the packed runtime on this machine, one thread. One seed, short budgets: differences of a few "
             "points are within noise (see `subbit study` for intervals).", "",
             "| model | bits | file bytes | WER seen | WER held-out | runtime WER held-out | p50 ms | p90 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['bits_avg']:g} | {r['size_bytes'] or '-'} | {r['wer_seen']} | {r['wer_heldout']} | "
                     f"{r['runtime_wer_heldout']} | {r['p50_ms']} | {r['p90_ms']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
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
        fig.savefig(out / "wer-vs-size.png", dpi=120)
        plt.close(fig)


#: the summary's lines in order: (keys the summary must hold, the line as a template over it);
#: ``format_summary`` adds the derived values ``params_m``, ``smaller`` and ``corpus_line``
SUMMARY_LINES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("corpus_engines",), "corpus           {corpus_line}"),
    (("params",), "model            rnnt, {params_m:.2f}M params, {fp32_mb:.2f} MB fp32"),
    (("train_minutes",), "training         {train_minutes:.1f} min (fp32)"),
    (("wer_test_seen",), "WER seen voices  {wer_test_seen:.2f}%"),
    (("wer_test_heldout",), "WER held-out     {wer_test_heldout:.2f}% (voices and engines never trained on)"),
    (("wer_test_open",), "WER open text    {wer_test_open:.2f}% (fortune sentences, open vocabulary)"),
    (("gq4_wer_test_seen",),
     "GQ 4-bit         WER seen {gq4_wer_test_seen:.2f}%, held-out {gq4_wer_test_heldout:.2f}%"),
    (("qat8_wer_test_seen",),
     "8-bit QAT        WER seen {qat8_wer_test_seen:.2f}%, held-out {qat8_wer_test_heldout:.2f}%"),
    (("subbit_bytes",), "model file       {subbit_bytes:,} bytes .subbit vs {fp32_bytes:,} fp32 "
                        "({smaller:.1f}x smaller) and {int8_bytes:,} int8"),
    (("runtime_wer_test_heldout",),
     "packed runtime   WER held-out {runtime_wer_test_heldout:.2f}% on {runtime_utterances} utterances, "
     "streaming RTF {runtime_rtf:.3f}, {runtime_weight_bytes:,} weight bytes"),
    (("gq4_p90_ms", "qat8_p90_ms"),
     "latency (p90)    per 100 ms chunk: GQ 4-bit {gq4_p90_ms:.2f} ms, 8-bit QAT {qat8_p90_ms:.2f} ms, "
     "fp32 {fp32_p90_ms:.2f} ms; files {gq4_file_bytes:,} / {qat8_file_bytes:,} / {fp32_file_bytes:,} bytes"),
)


def format_summary(s: dict[str, Any]) -> str:
    """The summary printed at the end: one line per figure the stages produced."""
    v: dict[str, Any] = {"fp32_p90_ms": float("nan"), "gq4_file_bytes": 0, "qat8_file_bytes": 0,
                         "fp32_file_bytes": 0, **s}  # fmt: skip
    if "params" in s:
        v["params_m"] = s["params"] / 1e6
    if "subbit_bytes" in s:
        v["smaller"] = s["fp32_bytes"] / s["subbit_bytes"]
    if "corpus_engines" in s:
        v["corpus_line"] = describe_corpus(s["corpus_engines"], s.get("corpus_open_sentences", 0))
    lines = ["", "=== subbit demo: summary ==="]
    lines += [line.format(**v) for keys, line in SUMMARY_LINES if all(k in s for k in keys)]
    lines.append(f"total time       {s.get('wall_minutes', 0):.1f} min")
    return "\n".join(lines)
