"""Paired comparisons of training arms (runs that differ in one choice), pooled over seeds.

Why: a benchmark that trains one run per arm and seed (corpus augmentation, recipes) must say
whether an arm beats the reference by the interval, not by the point estimate; every such
script reads the same per-utterance error files and pairs them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .stats import Scored, delta_ci, significantly_different, wer_ci


def run_scores(run: Path, split: str) -> dict[str, list]:
    """``{"ids", "errors", "words"}`` of ``RUN/errors-SPLIT.jsonl`` (``subbit eval --errors``), by id."""
    path = Path(run) / f"errors-{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run 'subbit eval {run} --split {split} --errors {path}' first")
    rows = sorted((json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()), key=lambda r: r["id"])
    return {"ids": [r["id"] for r in rows], "errors": [r["errors"] for r in rows],
            "words": [r["ref_words"] for r in rows]}


def paired_table(results: Sequence[dict[str, Any]], splits: Sequence[str], reference: str) -> dict:
    """WER per arm and the paired interval of its difference from ``reference``, per split.

    ``results``: ``{"arm", "seed", "scores": {split: run_scores(...)}}`` per run; an arm's seeds
    are pooled (mean errors per utterance), so arms need the same utterances."""
    arms: dict[str, list[dict]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)
    if reference not in arms:
        raise ValueError(f"no runs of the reference arm {reference!r} (arms: {sorted(arms)})")
    table: dict = {}
    for split in splits:
        def scored(rs: list[dict]) -> Scored:
            ids = rs[0]["scores"][split]["ids"]
            if any(r["scores"][split]["ids"] != ids for r in rs):
                raise ValueError(f"{split}: seeds were scored on different utterances")
            return Scored.from_seeds([r["scores"][split]["errors"] for r in rs], rs[0]["scores"][split]["words"])

        ref = scored(arms[reference])
        rows = {}
        for arm, rs in arms.items():
            s = scored(rs)
            row = {"seeds": sorted(r["seed"] for r in rs), "wer": s.wer, "wer_ci": wer_ci(s)}
            if arm != reference:
                d = delta_ci(s, ref)
                row.update(delta=s.wer - ref.wer, delta_ci=d, significant=significantly_different(d))
            rows[arm] = row
        table[split] = rows
    return table
