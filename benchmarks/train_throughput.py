"""Training throughput in audio seconds per second, at 1 and 2 torch threads, fp32 and GQ 4-bit.

Why: a user planning a training budget needs the rate, and whether a second core buys anything on
the small presets (issue 9). Each configuration trains in its own fresh process for a few steps
with the study's recipe (char tokens, batch 8, no augmentation); the rate is the training loop's
own (mean over steps after the first two). All configurations run in one invocation, one after
the other, so compare ratios within a run, not absolute rates across machines.

    .venv/bin/python benchmarks/train_throughput.py --data data/full --steps 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUANTS = {"fp32": None, "gq4": {"default": {"bits": 4}}, "gq8": {"default": {"bits": 8}}}


def benchmark_config(tmp: str, arch: str, quant: str, threads: int, data: str, steps: int, preset: str):
    """The study's training recipe (char tokens, batch 8, no augmentation, no checkpoints) for
    ``steps`` steps in the folder ``tmp``, with the ``quant`` rules written there; shared with
    train_profile.py so both benchmarks time the same loop."""
    from subbit.asr.train import TrainConfig

    qpath = None
    if QUANTS[quant] is not None:
        qpath = Path(tmp) / "quant.json"
        qpath.write_text(json.dumps(QUANTS[quant]))
    return TrainConfig(data=data, out=str(Path(tmp) / "run"), model=arch, preset=preset, steps=steps,
                       quant=str(qpath) if qpath else None, threads=threads, tokenizer="char", batch_size=8,
                       augment=False, progress=False, ckpt_every=0, eval_every=0, warmup_steps=1)


def worker(arch: str, quant: str, threads: int, data: str, steps: int, preset: str) -> dict:
    """One configuration in this process: train ``steps`` steps, return the loop's figures."""
    import logging

    from subbit.asr.train import train

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(benchmark_config(tmp, arch, quant, threads, data, steps, preset))
    return {"arch": arch, "quant": quant, "threads": threads, "steps": res.steps, "seconds": res.elapsed,
            "audio_s_per_s": res.audio_sec_per_sec}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "full"), help="corpus directory (subbit corpus build)")
    ap.add_argument("--archs", default="rnnt,conformer", help="comma-separated architectures")
    ap.add_argument("--quants", default="fp32,gq4", help=f"comma-separated, of {','.join(QUANTS)}")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--steps", type=int, default=40, help="training steps per configuration (>= 5)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "train_throughput.json"))
    ap.add_argument("--worker", nargs=3, metavar=("ARCH", "QUANT", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 5:
        ap.error("--steps must be at least 5 (the first two steps are not counted)")
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], int(a.worker[2]), a.data, a.steps, a.preset)))
        return 0
    if not (Path(a.data) / "train.jsonl").is_file():
        ap.error(f"no corpus at {a.data} (build one: subbit corpus build --out {a.data})")
    quants = [q for q in a.quants.split(",") if q]
    if unknown := sorted(set(quants) - set(QUANTS)):
        ap.error(f"--quants: unknown {unknown}; expected some of {sorted(QUANTS)}")
    rows = []
    for arch in [x for x in a.archs.split(",") if x]:
        for quant in quants:
            for threads in [int(t) for t in a.threads.split(",") if t]:
                t0 = time.perf_counter()
                cmd = [sys.executable, __file__, "--data", a.data, "--steps", str(a.steps), "--preset", a.preset,
                       "--worker", arch, quant, str(threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                row = json.loads(out)
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{arch:10s} {quant:5s} {threads} thread(s): {row['audio_s_per_s']:7.1f} audio s/s", flush=True)
    by = {(r["arch"], r["quant"], r["threads"]): r["audio_s_per_s"] for r in rows}
    ratios = {f"{arch}/{q}: 2 vs 1 thread": by[(arch, q, 2)] / by[(arch, q, 1)]
              for arch, q, t in by if t == 1 and (arch, q, 2) in by and by[(arch, q, 1)]}
    ratios.update({f"{arch}/{t} thread(s): gq4 vs fp32": by[(arch, "gq4", t)] / by[(arch, "fp32", t)]
                   for arch, q, t in by if q == "fp32" and (arch, "gq4", t) in by and by[(arch, "fp32", t)]})
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    from subbit.experiments.study_plan import machine

    result = {"machine": machine(),
              "steps": a.steps, "preset": a.preset, "data": a.data, "rows": rows, "ratios": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
