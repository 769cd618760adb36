"""Exported models served side by side: the same utterances streamed through the packed Python
runtime in 100 ms chunks, the files interleaved round by round, medians over rounds.

Why: the study times each cell while it runs, so its latency ratios carry the machine's load of
that moment. This decides a latency claim (the Bifocal gq5 vs qat8 one) in one run, on one
machine, with the ratio to the first file.

    .venv/bin/python benchmarks/served_latency.py --data data/full --split test_heldout \
        --utts 100 --rounds 5 qat8=RUN/qat8/model.subbit gq5=RUN/gq5/model.subbit
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from subbit.asr.data import read_manifest
from subbit.bench.record import provenance, write_record
from subbit.experiments.study import stream_utterances


def _named(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {spec!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    return name, Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=_named, help="NAME=FILE.subbit; the first is the reference")
    ap.add_argument("--data", required=True, help="corpus directory")
    ap.add_argument("--split", default="test_heldout")
    ap.add_argument("--utts", type=int, default=100, help="utterances per pass")
    ap.add_argument("--rounds", type=int, default=5, help="passes per file, interleaved")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/out/served_latency.json")
    args = ap.parse_args()
    if args.utts < 1 or args.rounds < 1:
        ap.error("--utts and --rounds must be positive")
    torch.set_num_threads(args.threads)
    utts = read_manifest(Path(args.data) / f"{args.split}.jsonl")[: args.utts]
    per: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p90": []} for n, _ in args.files}
    weights: dict[str, int] = {}
    for r in range(args.rounds):
        for name, path in args.files if r % 2 == 0 else reversed(args.files):  # alternate the order
            _, chunk_ms, _, weight_bytes = stream_utterances(path, utts)
            per[name]["p50"].append(float(np.percentile(chunk_ms, 50)))
            per[name]["p90"].append(float(np.percentile(chunk_ms, 90)))
            weights[name] = weight_bytes
    ref = args.files[0][0]
    rows = {}
    for name, path in args.files:
        p50, p90 = statistics.median(per[name]["p50"]), statistics.median(per[name]["p90"])
        rows[name] = {"file": str(path), "file_bytes": path.stat().st_size, "resident_weight_bytes": weights[name],
                      "p50_ms": p50, "p90_ms": p90, "p90_rounds": per[name]["p90"]}
    for name, row in rows.items():
        row["p90_vs_ref"] = row["p90_ms"] / rows[ref]["p90_ms"]
        row["file_bytes_vs_ref"] = row["file_bytes"] / rows[ref]["file_bytes"]
        print(f"{name:>8}: file {row['file_bytes']:>9,} B ({row['file_bytes_vs_ref']:.3f}x), resident weights "
              f"{row['resident_weight_bytes']:>10,} B, p50 {row['p50_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms "
              f"({row['p90_vs_ref']:.3f}x {ref})")
    write_record(args.json, {**provenance(__file__), "split": args.split, "utterances": len(utts),
                             "rounds": args.rounds, "threads": args.threads, "reference": ref, "rows": rows})


if __name__ == "__main__":
    main()
