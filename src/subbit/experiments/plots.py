"""PNG figures for comparisons, ablations and per-layer reports (matplotlib, Agg backend).

Figures are drawn headless (no display here or in CI) and closed after saving so a long
comparison does not accumulate open figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_wer_vs_size(rows: Sequence[dict[str, Any]], split: str, path: str | Path, title: str = "") -> Path:
    """WER (%) against deployed size (KiB, log scale; ``size_deploy_bytes``, else ``size_bytes``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    def size(r: dict[str, Any]) -> Any:
        return r.get("size_deploy_bytes") or r.get("size_bytes")

    pts = [(size(r) / 1024, 100 * r["wer"][split], r["recipe"], r.get("method", ""))
           for r in rows if size(r) and r.get("wer", {}).get(split) is not None]
    methods = sorted({m for *_, m in pts})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for i, (x, y, name, method) in enumerate(pts):
        ax.scatter([x], [y], color=colors[method], label=method, zorder=3)
        # alternate label offsets so recipes at the same point stay readable
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4 - 11 * (i % 3)), fontsize=8,
                    color=colors[method])
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, title="method")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no finished recipe yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("deployed model size (KiB, log scale)")
    ax.set_ylabel(f"WER on {split} (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"WER vs size ({split})")
    return _save(fig, path)


def plot_ablation(rows: Sequence[dict[str, Any]], splits: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Grouped bars: WER (%) per variant, one bar per split; mean bits in the tick labels."""
    plt = _pyplot()
    names = [r["recipe"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(splits))
    for j, split in enumerate(splits):
        ys = [100 * r["wer"][split] if r["wer"].get(split) is not None else 0.0 for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], ys, width, label=split)
    ticks = [f"{n}\n{r['bits']:.2f} b" if r.get("bits") is not None else n for n, r in zip(names, rows)]
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels(ticks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("WER (%)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def plot_layers(names: Sequence[str], bits: Sequence[float | None], nbytes: Sequence[int], path: str | Path,
                title: str = "") -> Path:
    """Two horizontal bar charts sharing the tensor axis: bits per weight and bytes per tensor."""
    if not (len(names) == len(bits) == len(nbytes)):
        raise ValueError(f"names, bits and bytes differ in length: {len(names)}, {len(bits)}, {len(nbytes)}")
    plt = _pyplot()
    h = max(3.0, 0.28 * len(names) + 1.5)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, h), sharey=True)
    ys = list(range(len(names)))
    a1.barh(ys, [b if b is not None else 32 for b in bits],
            color=["C0" if b is not None else "C7" for b in bits])
    a1.set_yticks(ys)
    a1.set_yticklabels(names, fontsize=7)
    a1.invert_yaxis()
    a1.set_xscale("log", base=2)
    a1.set_xticks([1, 2, 4, 8, 16, 32])
    a1.set_xticklabels(["1", "2", "4", "8", "16", "32"])
    a1.set_xlim(0.5, 48)
    a1.set_xlabel("bits per weight (log scale; grey: float)")
    a2.barh(ys, [n / 1024 for n in nbytes], color="C1")
    a2.set_xlabel("KiB")
    for a in (a1, a2):
        a.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
