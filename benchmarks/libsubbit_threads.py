"""Thread scaling of libsubbit (subbit_session_set_threads) beside onnxruntime's int8 at the same
thread counts: per-chunk p50/p90 of one streaming session, 1 and N threads, in one run.

The variants alternate round by round (C 1 thread, C N threads, int8 1, int8 N, then again) so
that a change in machine load lands on all of them; each round is its own process. Speed-up is
the 1-thread time over the N-thread time of the same runtime, from the medians over rounds.

    .venv/bin/python benchmarks/libsubbit_threads.py --preset paper-rnnt --bits 4 --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from libsubbit_latency import run_c, write_wav  # noqa: E402  (the same subbit-stream runner)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-rnnt")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="the N compared with 1 (default 2)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2, help="passes over the audio per process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per variant, interleaved")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-int8", action="store_true", help="skip onnxruntime")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "out" / "libsubbit-work"))  # git-ignored
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/libsubbit_threads-PRESET-BITSbit.json)")
    args = ap.parse_args(argv)
    from subbit.runtime.native import MAX_THREADS

    if not 2 <= args.threads <= MAX_THREADS or not 1 <= args.bits <= 8 or args.rounds < 1:
        ap.error(f"--threads must be 2..{MAX_THREADS}, --bits 1..8, --rounds >= 1")

    from subbit.bench import build_float_model, export_gq, machine_info, quick_options
    from subbit.bench.int8_baselines import ort_available
    from subbit.bench.latency import VariantSpec, run_in_subprocess, synth_audio

    subprocess.run(["make", "-s", "-C", str(ROOT / "libsubbit")], check=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = build_float_model(quick_options(args.preset, seed=args.seed))
    packed = work / f"gq{args.bits}-seed{args.seed}-{args.preset}.subbit"
    if not packed.is_file():
        export_gq(model, args.bits, packed)
    ort_dir = work / f"ort-int8-seed{args.seed}-{args.preset}"
    use_ort = not args.no_int8 and ort_available()
    if use_ort and not (ort_dir / "meta.json").is_file():
        from subbit.bench.onnx_export import export_onnx_int8

        export_onnx_int8(model, ort_dir)
    del model
    wav_path = work / f"synth-{args.seconds:g}s-seed{args.seed}.wav"
    write_wav(wav_path, synth_audio(args.seconds, seed=args.seed))

    counts = (1, args.threads)
    samples: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for t in counts:
            row = run_c(packed, wav_path, args.repeats, t)
            assert row.get("threads", t) == t, row
            samples.setdefault(f"libsubbit-{args.bits}bit-{t}t", []).append(row)
        if use_ort:
            for t in counts:
                spec = VariantSpec(name=f"int8-onnxruntime-{t}t", method="ort-int8", bits=8, path=str(ort_dir), threads=t,
                                   seconds=args.seconds, seed=args.seed, repeats=args.repeats, extra={"token_every": 0})
                samples.setdefault(f"int8-onnxruntime-{t}t", []).append(run_in_subprocess(spec))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    rows = {k: {"p50_ms": statistics.median(r["p50_ms"] for r in v), "p90_ms": statistics.median(r["p90_ms"] for r in v),
                "p90_ms_rounds": [r["p90_ms"] for r in v], "tokens": v[0]["tokens"],
                "peak_rss_bytes": max(r["peak_rss_bytes"] for r in v)} for k, v in samples.items()}  # fmt: skip
    c1, cn = rows[f"libsubbit-{args.bits}bit-1t"], rows[f"libsubbit-{args.bits}bit-{args.threads}t"]
    scaling = {"libsubbit_p50_speedup": c1["p50_ms"] / cn["p50_ms"], "libsubbit_p90_speedup": c1["p90_ms"] / cn["p90_ms"],
               "libsubbit_tokens_equal": c1["tokens"] == cn["tokens"]}  # fmt: skip
    if use_ort:
        o1, on = rows["int8-onnxruntime-1t"], rows[f"int8-onnxruntime-{args.threads}t"]
        scaling |= {"int8_p50_speedup": o1["p50_ms"] / on["p50_ms"], "int8_p90_speedup": o1["p90_ms"] / on["p90_ms"],
                    "p90_libsubbit_over_int8_at_n": cn["p90_ms"] / on["p90_ms"]}  # fmt: skip
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"preset": args.preset, "bits": args.bits, "threads": args.threads, "seconds": args.seconds,
              "repeats": args.repeats, "rounds": args.rounds, "commit": commit, "machine": machine_info(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": rows, "scaling": scaling}  # fmt: skip
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"libsubbit_threads-{args.preset}-{args.bits}bit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, r in rows.items():
        print(f"{key:>24}: p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MB")
    print(json.dumps(scaling, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
