"""Trained .subbit files streamed by libsubbit (build/subbit-stream), side by side on real utterances.

The C counterpart of ``served_latency.py``: each utterance of ``--split`` is streamed by every
model in turn (rounds interleaved, so machine load hits them alike), one process per call, and
the per-utterance p50 / p90 chunk latencies of ``subbit-stream --json`` are summarised by their
medians over utterances and rounds. Ratios are against ``--reference``. A benchmark, not a test.

    python benchmarks/libsubbit_served.py --data data/full --utts 50 --rounds 3 \
        qat8=runs/qat8/model.subbit gq5=runs/gq5/model.subbit --reference qat8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "build" / "subbit-stream"


def stream(model: Path, wav: Path) -> dict:
    out = subprocess.run([str(CLI), "--json", "--warmup", "1", "--repeats", "1", str(model), str(wav)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=FILE.subbit")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test_heldout")
    ap.add_argument("--utts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reference", default=None, help="NAME the ratios are against (default: the first)")
    ap.add_argument("--json", dest="json_out", default=None)
    a = ap.parse_args(argv)
    if not CLI.is_file():
        sys.exit(f"{CLI} is missing: run `make runtime` first")
    models = dict(m.split("=", 1) for m in a.models)
    ref = a.reference or next(iter(models))
    if ref not in models:
        sys.exit(f"--reference {ref!r} is not one of {sorted(models)}")
    data = Path(a.data)
    rows = [json.loads(line) for line in (data / f"{a.split}.jsonl").open()][: a.utts]
    got: dict[str, dict[str, list[float]]] = {n: {"p50_ms": [], "p90_ms": []} for n in models}
    info: dict[str, dict] = {}
    for _ in range(a.rounds):
        for row in rows:
            for name, path in models.items():
                r = stream(Path(path), data / row["audio"])
                got[name]["p50_ms"].append(r["p50_ms"])
                got[name]["p90_ms"].append(r["p90_ms"])
                info[name] = {k: r[k] for k in ("weight_bytes", "peak_rss_bytes", "kernel_path")}
    out_rows = {n: {**info[n], "p50_ms": statistics.median(v["p50_ms"]), "p90_ms": statistics.median(v["p90_ms"]),
                    "file_bytes": Path(models[n]).stat().st_size} for n, v in got.items()}
    for n, r in out_rows.items():
        b = out_rows[ref]
        r["p90_over_ref"] = r["p90_ms"] / b["p90_ms"]
        r["weight_bytes_over_ref"] = r["weight_bytes"] / b["weight_bytes"]
        r["peak_rss_over_ref"] = r["peak_rss_bytes"] / b["peak_rss_bytes"]
        print(f"{n:>6}: p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms ({r['p90_over_ref']:.3f}x)  "
              f"weights {r['weight_bytes']:,} B ({r['weight_bytes_over_ref']:.3f}x)  peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MB")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    result = {"command": " ".join(["python", "benchmarks/libsubbit_served.py"] + (argv or sys.argv[1:])), "commit": commit,
              "machine": platform.processor() or platform.machine(), "split": a.split, "utterances": len(rows),
              "rounds": a.rounds, "reference": ref, "rows": out_rows}
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(result, indent=1))
        print("wrote", a.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
