"""Paired intervals between arms of ``asr_baselines.py`` runs (e.g. a clean and an augmented corpus).

Why: one 15-minute run per arm and seed says little alone (a from-scratch seed moves a run by
several points); this pools each arm's seeds per utterance and prints the paired bootstrap
interval of its WER difference from the reference arm on every split both were scored on.

    python benchmarks/asr_baselines_compare.py --reference clean \
        --arm clean=OUT/open-rnnt/rnnt,OUT/open-rnnt-s1/rnnt \
        --arm pitch+telephone=OUT/pt-rnnt/rnnt,OUT/pt-rnnt-s1/rnnt --json benchmarks/results/X.json

Each RUN directory needs ``errors-SPLIT.jsonl`` (``asr_baselines.py`` writes them) and the
seed in its ``config.json`` (``train_args.seed``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from subbit.bench.record import provenance, write_record
from subbit.experiments.arms import paired_table, run_scores

SPLITS = ("test_seen", "test_heldout", "test_open")


def _seed(run: Path) -> int:
    return int(json.loads((run / "config.json").read_text())["train_args"]["seed"])


def load_arms(specs: list[str]) -> tuple[list[dict], list[str]]:
    """``NAME=RUN[,RUN...]`` specs -> results for ``paired_table`` and the splits every run has."""
    results, runs = [], []
    for spec in specs:
        name, sep, dirs = spec.partition("=")
        if not sep or not name or not dirs:
            raise SystemExit(f"--arm expects NAME=RUN[,RUN...], got {spec!r}")
        for d in filter(None, dirs.split(",")):
            run = Path(d)
            if not (run / "config.json").is_file():
                raise SystemExit(f"{run}: not a run directory (no config.json)")
            results.append({"arm": name, "seed": _seed(run), "run": str(run)})
            runs.append(run)
    splits = [s for s in SPLITS if all((r / f"errors-{s}.jsonl").is_file() for r in runs)]
    if not splits:
        raise SystemExit("no split was scored (errors-SPLIT.jsonl) in every run")
    for r, run in zip(results, runs):
        r["scores"] = {s: run_scores(run, s) for s in splits}
    return results, splits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", action="append", required=True, help="NAME=RUN[,RUN...] (one run per seed)")
    ap.add_argument("--reference", required=True, help="the arm the others are compared with")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results, splits = load_arms(args.arm)
    table = paired_table(results, splits, args.reference)
    for split, rows in table.items():
        for arm, row in rows.items():
            line = f"{split:13s} {arm:20s} seeds {row['seeds']} WER {100 * row['wer']:6.2f}%"
            if "delta" in row:
                lo, hi = row["delta_ci"]
                line += (f"  delta {100 * row['delta']:+6.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
                         + ("  (finding)" if row["significant"] else "  (no finding)"))
            print(line)
    if args.json:
        write_record(args.json, {**provenance(__file__), "reference": args.reference,
                                 "runs": [{k: r[k] for k in ("arm", "seed", "run")} for r in results], "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
