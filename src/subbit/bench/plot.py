"""One PNG of a benchmark result: chunk latency (p50, p90, UPL) and resident weight bytes per variant."""

from __future__ import annotations

import os
from typing import Any


def plot_result(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Two panels per thread count: latency bars (p50/p90/UPL, ms) and weight bytes (MB)."""
    # local: matplotlib is optional and slow to import; only plotting needs it
    import matplotlib

    matplotlib.use("Agg")
    # local: matplotlib is optional and slow to import; only plotting needs it
    import matplotlib.pyplot as plt

    rows = result.get("rows") or []
    if not rows:
        raise ValueError("benchmark result has no rows to plot")
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(len(threads), 2, figsize=(13, 4.2 * len(threads)), squeeze=False)
    for i, t in enumerate(threads):
        rs = [r for r in rows if r["threads"] == t]
        names = [r["name"] for r in rs]
        x = range(len(rs))
        ax = axes[i][0]
        w = 0.27
        for j, (key, label) in enumerate((("p50_ms", "p50 chunk"), ("p90_ms", "p90 chunk"), ("upl_ms", "UPL"))):
            ax.bar([k + (j - 1) * w for k in x], [r[key] for r in rs], w, label=label)
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("ms")
        ax.set_title(f"latency, {t} thread(s), chunk {rs[0].get('chunk_ms', 0):.0f} ms")
        ax.legend()
        ax = axes[i][1]
        ax.bar(list(x), [r["weight_bytes"] / 1e6 for r in rs], color="tab:gray")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("MB")
        ax.set_title("resident weight bytes")
    preset = (result.get("options") or {}).get("preset", "")
    fig.suptitle(f"subbit bench {preset} - {(result.get('machine') or {}).get('cpu', '')}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)


def plot_sweep(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """The size sweep: x = int8 weight bytes (log), y = time ratio to the best int8 (p50 and p90
    panels), one line per bit depth; dashed, in the same colour, its measured byte ratio; dotted
    verticals at L2 and L3."""
    # local: matplotlib is optional and slow to import; only plotting needs it
    import matplotlib

    matplotlib.use("Agg")
    # local: matplotlib is optional and slow to import; only plotting needs it
    import matplotlib.pyplot as plt

    points = sorted(result.get("points") or [], key=lambda p: p["int8_bytes"])
    if not points:
        raise ValueError("sweep result has no points to plot")
    bits = sorted({q["bits"] for p in points for q in p["ratios"]})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, stat in zip(axes, ("p50", "p90")):
        for i, b in enumerate(bits):
            pts = [(p["int8_bytes"], q) for p in points for q in p["ratios"] if q["bits"] == b]
            xs = [x for x, _ in pts]
            color = f"C{i}"
            ax.plot(xs, [q[f"time_ratio_{stat}"] for _, q in pts], "o-", color=color, label=f"{b}-bit time")
            ax.plot(xs, [q["byte_ratio"] for _, q in pts], "--", color=color, alpha=0.7, label=f"{b}-bit bytes")
        caches = result.get("caches") or {}
        for level in ("L2", "L3"):
            if level in caches:
                ax.axvline(caches[level], color="gray", linestyle=":")
                ax.annotate(level, (caches[level], 1.0), xycoords=("data", "axes fraction"), ha="right", va="top",
                            color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("int8 weight bytes")
        ax.set_title(f"{stat} chunk latency / best int8")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ratio to int8")
    axes[1].legend(fontsize=8, ncol=2)
    cpu = (result.get("machine") or {}).get("cpu", "")
    fig.suptitle(f"subbit bench --sweep {result.get('arch', '')} ({result.get('commit', '')}) - {cpu}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
