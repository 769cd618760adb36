"""Per-chunk latency and peak RSS: libsubbit (C) vs the Python packed runtime vs int8 baselines.

All variants stream the same model (``--preset``, random weights of ``--seed``; GQ at ``--bits``
for the two packed runtimes, dynamic int8 for torch.ao and, when installed, onnxruntime) in
chunks of the encoder chunk, one process each, in one run, so machine load hits them alike. Every variant decodes greedily
(``token_every = 0``); the two packed runtimes compute the same tokens, the int8 model's count
is reported next to its times. libsubbit runs through ``build/subbit-stream --json`` on a 16-bit
WAV of the benchmark's synthetic audio (the Python variants see the same signal in float).

    .venv/bin/python benchmarks/libsubbit_latency.py --preset paper-rnnt --bits 4 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def run_c(model: Path, wav_path: Path, repeats: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [str(ROOT / "build" / "subbit-stream"), "--json", "--warmup", "1", "--repeats", str(repeats),
           "--threads", str(threads), str(model), str(wav_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.pop("text", None)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-rnnt")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "out" / "libsubbit-work"))  # git-ignored
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/libsubbit_latency-PRESET-BITSbit.json)")
    args = ap.parse_args(argv)
    threads = 1

    from subbit.bench import build_float_model, export_gq, machine_info, quick_options
    from subbit.bench.int8_baselines import ort_available
    from subbit.bench.latency import VariantSpec, run_in_subprocess, synth_audio

    subprocess.run(["make", "-s", "-C", str(ROOT / "libsubbit")], check=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    opts = quick_options(args.preset, seed=args.seed)
    model = build_float_model(opts)
    cfg_path = work / "model-config.json"
    cfg_path.write_text(json.dumps(model.config))
    packed = work / f"gq{args.bits}-seed{args.seed}-{args.preset}.subbit"
    if not packed.is_file():
        t0 = time.perf_counter()
        export_gq(model, args.bits, packed)
        print(f"exported {packed.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    ort_dir = work / f"ort-int8-seed{args.seed}-{args.preset}"
    if ort_available() and not (ort_dir / "meta.json").is_file():
        from subbit.bench.onnx_export import export_onnx_int8

        export_onnx_int8(model, ort_dir)
    del model
    wav_path = work / f"synth-{args.seconds:g}s-seed{args.seed}.wav"
    write_wav(wav_path, synth_audio(args.seconds, seed=args.seed))

    common = {"threads": threads, "seconds": args.seconds, "seed": args.seed, "repeats": args.repeats,
              "extra": {"token_every": 0}}  # fmt: skip
    rows = {
        "libsubbit": {"name": f"libsubbit-{args.bits}bit", "bits": args.bits, **run_c(packed, wav_path, args.repeats, threads)},
        "python": run_in_subprocess(VariantSpec(name=f"subbit-{args.bits}bit-python", method="subbit", bits=args.bits,
                                                path=str(packed), **common)),
        "int8-torch": run_in_subprocess(VariantSpec(name="int8-torch.ao", method="torch-int8", bits=8, path=str(cfg_path),
                                              **common)),
    }  # fmt: skip
    if (ort_dir / "meta.json").is_file():
        rows["int8-ort"] = run_in_subprocess(VariantSpec(name="int8-onnxruntime", method="ort-int8", bits=8,
                                                         path=str(ort_dir), **common))  # fmt: skip
    c, py = rows["libsubbit"], rows["python"]
    i8 = min((r for k, r in rows.items() if k.startswith("int8")), key=lambda r: r["p90_ms"])  # the best int8
    ratios = {"best_int8": i8["name"],
        "p50_c_over_python": c["p50_ms"] / py["p50_ms"], "p90_c_over_python": c["p90_ms"] / py["p90_ms"],
        "p50_c_over_int8": c["p50_ms"] / i8["p50_ms"], "p90_c_over_int8": c["p90_ms"] / i8["p90_ms"],
        "peak_rss_c_over_python": c["peak_rss_bytes"] / py["peak_rss_bytes"],
        "peak_rss_c_over_int8": c["peak_rss_bytes"] / i8["peak_rss_bytes"],
    }  # fmt: skip
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"preset": args.preset, "bits": args.bits, "threads": threads, "seconds": args.seconds,
              "repeats": args.repeats, "decode": "greedy", "commit": commit, "machine": machine_info(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": rows, "ratios": ratios}  # fmt: skip
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"libsubbit_latency-{args.preset}-{args.bits}bit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, r in rows.items():
        print(f"{key:>10}: p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MB  "
              f"tokens {r['tokens']}")  # fmt: skip
    print(json.dumps(ratios, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
