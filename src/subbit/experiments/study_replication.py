"""Does a study's verdict survive a second fp32 base? Two study results side by side.

Why: the study's intervals cover fine-tuning seeds and the sampling of test utterances, not the fp32
base every cell starts from. A base retrained on another CPU differs in floating point (so its cells
are never pooled with the first base's), which makes it an independent replicate of the base: the
same recipes, tuned choices and seeds on a second base say whether a verdict depends on which base
it was measured on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from subbit.experiments import stats


def load(study_dir: str | Path) -> dict[str, Any]:
    """A study's results.json (written by ``subbit study``), with a clear error when it is missing."""
    path = Path(study_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no study results at {path} (run `subbit study --out {study_dir}` first)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("claims"), list):
        raise ValueError(f"{path}: not a study results file (expected 'rows' and 'claims' lists)")
    return data


def _bases(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["arch"]: r["fp32_base"] for r in rows if r.get("name") == "fp32" and r.get("fp32_base")}


def heldout_scores(study_dir: str | Path, row: dict[str, Any]) -> tuple[stats.Scored, list[str]] | None:
    """A row's held-out errors per utterance (pooled over its seeds) and utterance ids, from the cell files (only cells
    made from the row's fp32 base; None when any is missing)."""
    evs = []
    for seed in row.get("seeds") or []:
        path = Path(study_dir) / "cells" / row["arch"] / f"{row['name']}-s{seed}.json"
        if not path.is_file():
            return None
        cell = json.loads(path.read_text())
        ev = (cell.get("eval") or {}).get("test_heldout")
        if (cell.get("base") or {}).get("sha256") != row.get("fp32_base") or not ev or "utt_errors" not in ev:
            return None
        evs.append(ev)
    if not evs or any(e["utt_ids"] != evs[0]["utt_ids"] for e in evs):
        return None
    return stats.Scored.from_seeds([e["utt_errors"] for e in evs], evs[0]["utt_words"]), evs[0]["utt_ids"]


def _base_delta(this_dir: str | Path | None, other_dir: str | Path | None, a: dict[str, Any],
                b: dict[str, Any]) -> list[float] | None:
    """Paired interval of (this base's WER - the other base's) for one recipe, same utterances."""
    if this_dir is None or other_dir is None:
        return None
    x, y = heldout_scores(this_dir, a), heldout_scores(other_dir, b)
    if x is None or y is None or x[1] != y[1]:
        return None
    return list(stats.delta_ci(x[0], y[0]))


def compare(this: dict[str, Any], other: dict[str, Any], this_dir: str | Path | None = None,
            other_dir: str | Path | None = None) -> dict[str, Any]:
    """Rows both studies finished (same architecture and recipe) and claims both decided, each with
    both results and whether the lossless verdict or the claim's verdict agrees; with the study
    folders, also each recipe's WER difference between the two bases (``base_delta_ci``)."""
    def done(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["arch"], r["name"]): r for r in data["rows"] if r.get("seeds") and r.get("delta_vs_fp32_ci")}

    mine, theirs = done(this), done(other)
    rows = []
    for key in sorted(set(mine) & set(theirs)):
        a, b = mine[key], theirs[key]
        rows.append({"arch": key[0], "name": key[1],
                     "this": {k: a.get(k) for k in ("seeds", "wer_heldout", "delta_vs_fp32_ci", "lossless")},
                     "other": {k: b.get(k) for k in ("seeds", "wer_heldout", "delta_vs_fp32_ci", "lossless")},
                     "lossless_agrees": bool(a.get("lossless")) == bool(b.get("lossless")),
                     "base_delta_ci": _base_delta(this_dir, other_dir, a, b)})
    other_claims = {c["claim"]: c for c in other["claims"]}
    claims = [{"claim": c["claim"], "this": c["verdict"], "other": other_claims[c["claim"]]["verdict"],
               "agrees": c["verdict"] == other_claims[c["claim"]]["verdict"],
               "this_evidence": c["evidence"], "other_evidence": other_claims[c["claim"]]["evidence"]}
              for c in this["claims"] if c["claim"] in other_claims and _decided_in_both(c, other_claims[c["claim"]])]
    return {"bases": {"this": _bases(this["rows"]), "other": _bases(other["rows"])},
            "machines": {"this": this.get("meta", {}).get("machine"), "other": other.get("meta", {}).get("machine")},
            "rows": rows, "claims": claims}


def _decided_in_both(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["verdict"] != "not run" and b["verdict"] != "not run"


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def markdown(rep: dict[str, Any], this_name: str, other_name: str) -> str:
    """The comparison as report tables: one line per shared row, one per shared claim."""
    lines = [f"# Replication: {this_name} vs {other_name}", "",
             f"- fp32 bases: {this_name} {rep['bases']['this']} ({rep['machines']['this']}); "
             f"{other_name} {rep['bases']['other']} ({rep['machines']['other']})",
             "- delta = held-out WER minus the fp32 control's on the same base, in points, 95% paired-bootstrap "
             "interval; lossless = the interval's upper end within max(2% relative, 0.2 absolute); "
             f"{this_name} - {other_name} = the same recipe's held-out WER on the two bases, paired over utterances", "",
             f"| arch | recipe | seeds | {this_name} WER | {this_name} delta | lossless | {other_name} WER "
             f"| {other_name} delta | lossless | agrees | {this_name} - {other_name} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        a, b = r["this"], r["other"]
        lines.append(f"| {r['arch']} | {r['name']} | {len(a['seeds'])}/{len(b['seeds'])} | {100 * a['wer_heldout']:.2f} "
                     f"| {_ci(a['delta_vs_fp32_ci'])} | {'yes' if a['lossless'] else 'no'} | {100 * b['wer_heldout']:.2f} "
                     f"| {_ci(b['delta_vs_fp32_ci'])} | {'yes' if b['lossless'] else 'no'} "
                     f"| {'yes' if r['lossless_agrees'] else '**no**'} | {_ci(r['base_delta_ci'])} |")
    lines += ["", "| claim | " + this_name + " | " + other_name + " | agrees |", "|---|---|---|---|"]
    for c in rep["claims"]:
        lines.append(f"| {c['claim']} | {c['this']}: {c['this_evidence']} | {c['other']}: {c['other_evidence']} "
                     f"| {'yes' if c['agrees'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def write(this_dir: str | Path, other_dir: str | Path) -> tuple[Path, Path]:
    """``THIS/replication.json`` and ``THIS/replication.md`` comparing THIS study with OTHER."""
    rep = compare(load(this_dir), load(other_dir), this_dir, other_dir)
    out = Path(this_dir)
    (out / "replication.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / "replication.md").write_text(markdown(rep, out.name, Path(other_dir).name))
    return out / "replication.json", out / "replication.md"
