"""Where a training step's time goes: cProfile over a few steps, the quantizer's share.

Why: GQ training gains little from a second thread on the Conformer (RESULTS.md E.3); this says
whether the time is in the model's matmuls or in the quantizer's per-tensor glue. The settings are
those of ``train_throughput.py`` (char tokens, batch 8, no augmentation). cProfile slows Python
code more than C, so read the shares, not the absolute seconds.

    .venv/bin/python benchmarks/train_profile.py --arch conformer --quant gq4 --steps 20
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
from pathlib import Path

from train_throughput import QUANTS, benchmark_config  # the same recipe (this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
#: (label, file name, function name): the entries whose cumulative time is reported
WATCH = [("train_step", "loop.py", "train_step"), ("quantizer forward", "gq.py", "forward"),
         ("window backward", "soft_window.py", "backward"), ("table backward", "soft_table.py", "backward"),
         ("autograd backward", "~", "<method 'run_backward' of 'torch._C._EngineBase' objects>")]


def profile(arch: str, quant: str, threads: int, steps: int, data: str, preset: str) -> dict:
    """Train ``steps`` steps under cProfile; the watched functions and the 40 largest by cumulative time."""
    from subbit.asr.train import train

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = benchmark_config(tmp, arch, quant, threads, data, steps, preset)
        prof = cProfile.Profile()
        prof.enable()
        res = train(cfg)
        prof.disable()
    # pstats: {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
    entries = [(Path(f).name, line, name, nc, ct) for (f, line, name), (_, nc, _, ct, _) in pstats.Stats(prof).stats.items()]
    entries.sort(key=lambda e: -e[4])
    watched = {}
    for label, fname, func in WATCH:
        hit = next((e for e in entries if e[0] == fname and e[2] == func), None)
        if hit is not None:
            watched[label] = {"function": f"{hit[0]}:{hit[1]}({hit[2]})", "calls": hit[3], "cum_s": hit[4]}
    return {"arch": arch, "quant": quant, "threads": threads, "steps": res.steps, "audio_s_per_s": res.audio_sec_per_sec,
            "watched": watched, "top": [{"function": f"{e[0]}:{e[1]}({e[2]})", "calls": e[3], "cum_s": e[4]}
                                        for e in entries[:40]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "full"), help="corpus directory (subbit corpus build)")
    ap.add_argument("--arch", default="conformer", choices=["rnnt", "conformer", "bifocal"])
    ap.add_argument("--quant", default="gq4", choices=sorted(QUANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "train_profile.json"))
    a = ap.parse_args()
    if a.steps < 3:
        ap.error("--steps must be at least 3")
    if not (Path(a.data) / "train.jsonl").is_file():
        ap.error(f"no corpus at {a.data} (build one: subbit corpus build --out {a.data})")
    from subbit.bench.record import provenance, write_record

    result = {**provenance(__file__), **profile(a.arch, a.quant, a.threads, a.steps, a.data, a.preset)}
    step = result["watched"].get("train_step", {}).get("cum_s")
    for label, row in result["watched"].items():
        share = f" ({row['cum_s'] / step:.0%} of train_step)" if step and label != "train_step" else ""
        print(f"{label:18s} {row['cum_s']:7.2f} s in {row['calls']:6d} calls{share}  {row['function']}")
    write_record(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
