"""A study row's paired interval against its control on a subset of seeds, from the cell files.

Why: a row promoted to every seed after its seed 0 looked good (``study_plan.FOLLOW_UP``) is
biased by that choice at seed 0; its later seeds alone are the unbiased evidence.

    python benchmarks/study_seed_subset.py --study results/study-epyc --arch conformer \
        --recipe gq4-mu25 --seeds 1,2 [--control fp32] [--split test_heldout]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from subbit.experiments import stats
from subbit.experiments.study_rows import _scored


def _cells(study: Path, arch: str, recipe: str, seeds: list[int]) -> list[dict]:
    paths = [study / "cells" / arch / f"{recipe}-s{s}.json" for s in seeds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"missing cells: {', '.join(missing)}")
    return [json.loads(p.read_text()) for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--seeds", required=True, help="comma list, e.g. 1,2")
    ap.add_argument("--control", default="fp32")
    ap.add_argument("--split", default="test_heldout")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    study = Path(args.study)
    row = _scored(_cells(study, args.arch, args.recipe, seeds), args.split)
    ctl = _scored(_cells(study, args.arch, args.control, seeds), args.split)
    if row is None or ctl is None:
        raise SystemExit("a cell has no per-utterance errors for " + args.split)
    lo, hi = stats.delta_ci(row, ctl)
    out = {"arch": args.arch, "recipe": args.recipe, "control": args.control, "seeds": seeds, "split": args.split,
           "wer": row.wer, "control_wer": ctl.wer, "delta_ci": [lo, hi],
           "lossless": stats.is_lossless((lo, hi), ctl.wer)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
