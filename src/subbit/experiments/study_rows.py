"""From cell files to rows: seeds pooled per utterance, intervals, the delta to the fp32 control,
lossless by the interval, one fp32 base per row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from subbit.experiments import stats
from subbit.experiments.study_plan import (
    OPEN_SPLIT, SPLITS, Cell, StudyConfig, _cell_path, _read, cell_fingerprint,
)  # fmt: skip


# -- from cells to rows ---------------------------------------------------------------------------
def still_improving(curve: Sequence[Sequence[float]]) -> bool | None:
    """Was the last dev WER better than every earlier one by more than the lossless margin?
    (True: the step cap stopped a fine-tune that had not converged.)"""
    if len(curve) < 2:
        return None
    last, before = curve[-1][1], min(w for _, w in curve[:-1])
    return last < before - max(0.02 * before, 0.002)


def _scored(cells: list[dict[str, Any]], split: str) -> stats.Scored | None:
    evs = [(c.get("eval") or {}).get(split) for c in cells]
    if not evs or any(e is None or "utt_errors" not in e for e in evs):
        return None
    ids = evs[0]["utt_ids"]
    if any(e["utt_ids"] != ids for e in evs):
        raise ValueError(f"cells of one row were scored on different {split} utterances")
    return stats.Scored.from_seeds([e["utt_errors"] for e in evs], evs[0]["utt_words"])


def _pair(a: stats.Scored | None, b: stats.Scored | None) -> tuple[stats.Scored, stats.Scored] | None:
    if a is None or b is None or a.words.shape != b.words.shape:
        return None
    return a, b


def build_rows(cfg: StudyConfig, arch: str, cells: list[Cell], corpus: str,
               heldout: dict[tuple[str, str], stats.Scored] | None = None) -> list[dict[str, Any]]:
    """One row per recipe of ``arch``: means over seeds, intervals, delta to fp32, lossless.
    Only cell files made with exactly these settings count (a stale cell is never mixed in);
    each row's held-out scores go into ``heldout[(arch, name)]`` for the claims' paired tests."""
    loaded: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        got = []
        for s in cell.seeds:
            c = _read(_cell_path(cfg, arch, cell.recipe.name, s))
            if c is not None and c.get("fingerprint") == cell_fingerprint(cfg, arch, cell.recipe, s, corpus, cell.lr):
                got.append(c)
        loaded[cell.recipe.name] = got
    active = active_base(loaded)
    other_base = {name: sum(_base_key(c) != active for c in cs) for name, cs in loaded.items()}
    loaded = {name: [c for c in cs if _base_key(c) == active] for name, cs in loaded.items()}
    ctrl = {s: _scored(loaded.get("fp32", []), s) for s in SPLITS}
    has_open = any((c.get("eval") or {}).get(OPEN_SPLIT) for cs in loaded.values() for c in cs)
    rows = []
    for cell in cells:
        cs = loaded[cell.recipe.name]
        name = cell.recipe.name
        row: dict[str, Any] = {"name": name, "arch": arch, "method": cell.recipe.method, "sections": list(cell.sections),
                               "description": cell.recipe.description, "seeds": [c["fingerprint"]["seed"] for c in cs],
                               "seeds_planned": list(cell.seeds),
                               "lr": cfg.lr if cell.lr is None else cell.lr, "fp32_base": active,
                               "cells_on_other_bases": other_base.get(name, 0)}
        if not cs:
            row.update({"status": "not run", "bits_avg": None, "size_bytes": None, "wer_seen": None, "wer_heldout": None,
                        "wer_heldout_ci": None, "delta_vs_fp32_ci": None, "lossless": None,
                        "delta_seen_vs_fp32_ci": None, "lossless_seen": None})
            rows.append(row)
            continue
        first = cs[0]["row"]
        row["status"] = "diverged" if any(c["row"].get("status") == "diverged" for c in cs) else "done"
        row["bits_avg"] = 32.0 if cell.recipe.method == "fp32" else first.get("bits")
        row["size_bytes"] = first.get("size_bytes")
        row["fp32_bytes"] = first.get("fp32_bytes")
        row["size_vs_fp32"] = first.get("size_vs_fp32")
        # equal bytes, not equal bits: every stored byte (indices, codebooks, float tensors) per weight
        row["bits_per_weight"] = None if not row["size_vs_fp32"] else 32.0 * row["size_vs_fp32"]
        curve = next((c.get("curve") for c in cs if c.get("curve")), None)  # the first seed that has one
        row["dev_curve"] = curve
        row["still_improving"] = None if not curve else still_improving(curve)
        row["steps"] = first.get("steps")
        row["train_minutes"] = round(sum(float(c["row"].get("train_minutes") or 0) for c in cs), 2)
        if has_open:  # reported apart: no claim rests on sentences the training text cannot teach
            so = _scored(cs, OPEN_SPLIT)
            row["wer_open"] = None if so is None else so.wer
            row["wer_open_ci"] = None if so is None else list(stats.wer_ci(so))
        for split, key in (("test_seen", "seen"), ("test_heldout", "heldout")):
            sc = _scored(cs, split)
            if split == "test_heldout" and sc is not None and heldout is not None:
                heldout[(arch, name)] = sc
            row[f"wer_{key}"] = None if sc is None else sc.wer
            row[f"wer_{key}_ci"] = None if sc is None else list(stats.wer_ci(sc))
            pair = _pair(sc, ctrl[split])
            if pair is None:
                row[f"delta_{key}_vs_fp32_ci"] = None
            else:
                row[f"delta_{key}_vs_fp32_ci"] = list(stats.delta_ci(*pair))
        row["delta_vs_fp32_ci"] = row.pop("delta_heldout_vs_fp32_ci")
        ref = ctrl["test_heldout"]
        row["lossless"] = (None if row["delta_vs_fp32_ci"] is None or ref is None
                           else stats.is_lossless(tuple(row["delta_vs_fp32_ci"]), ref.wer))
        # the same rule on seen voices, where the fp32 model is good: a second, stricter reading
        ref_seen = ctrl["test_seen"]
        row["lossless_seen"] = (None if row["delta_seen_vs_fp32_ci"] is None or ref_seen is None
                                else stats.is_lossless(tuple(row["delta_seen_vs_fp32_ci"]), ref_seen.wer))
        serves = [c.get("serve") for c in cs if c.get("serve")]
        if serves:
            for key in ("weight_bytes", "p90_ms"):
                vals = [s[key] for s in serves if s.get(key) is not None]
                row[f"runtime_{key}"] = (sum(vals) / len(vals)) if vals else None
            row["runtime_wer_heldout"] = sum(s["wer"] for s in serves) / len(serves)
            row["runtime_utterances"] = serves[0]["utterances"]
            # the same model in PyTorch on the same utterances
            evs = [(c.get("eval") or {}).get("test_heldout") or {} for c in cs]
            n = serves[0]["utterances"]
            torch_errors = [sum(e.get("utt_errors", [])[:n]) for e in evs]
            words = sum((evs[0].get("utt_words") or [])[:n])
            row["torch_wer_heldout_same_utts"] = (sum(torch_errors) / len(torch_errors) / words) if words else None
        rows.append(row)
    return rows


def _base_key(cell: dict[str, Any]) -> str:
    """Cells written before bases were recorded came from one base (the one study run that made them)."""
    return (cell.get("base") or {}).get("sha256") or "unrecorded"


def active_base(loaded: dict[str, list[dict[str, Any]]]) -> str | None:
    """The fp32 base the rows are built on: the one with the most fp32-control cells (then the most
    cells of any recipe); cells from other bases are counted in the row, never pooled."""
    from collections import Counter

    ctrl = Counter(_base_key(c) for c in loaded.get("fp32", []))
    every = Counter(_base_key(c) for cs in loaded.values() for c in cs)
    if not every:
        return None
    return max(every, key=lambda b: (ctrl.get(b, 0), every[b], b))


