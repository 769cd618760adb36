"""Synthesis speed of each installed corpus TTS engine: audio seconds per CPU second, one thread.

Usage: OMP_NUM_THREADS=1 python benchmarks/tts_speed.py [--n 8] [--json OUT]
CPU time (not wall time: a busy shared machine distorts that), this process plus its children
(flite and festival run as subprocesses); each engine's model load is timed separately and left
out of the rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource

from subbit.asr.corpus import grammar, neural, tts
from subbit.asr.corpus.tts import Voice


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _voices() -> list[Voice]:
    out = [Voice("espeak", "en-us+m3", rate=170, pitch=50)] if tts.espeak_available() else []
    out += [Voice("flite", v) for v in tts.flite_voices()[:2]]
    out += [Voice("festival", v) for v in tts.festival_voices()[:1]]
    out += [Voice("kokoro", v) for v in [n for n in ("af_heart", "bm_george") if n in neural.kokoro_voices()]]
    out += [Voice("piper", v) for v in neural.piper_voices()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="sentences per voice")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    texts = [grammar.command_sentence(random.Random(i)) for i in range(args.n)]
    rows = []
    for v in _voices():
        t0 = _cpu()
        tts.synthesize("hello", v)  # loads the engine (model, session) once
        load = _cpu() - t0
        t0 = _cpu()
        audio_s = sum(tts.synthesize(t, v).size for t in texts) / tts.TARGET_RATE
        cpu = _cpu() - t0
        rows.append({"engine": v.engine, "voice": v.name, "sentences": len(texts), "audio_s": round(audio_s, 2),
                     "cpu_s": round(cpu, 2), "audio_s_per_cpu_s": round(audio_s / cpu, 1), "load_cpu_s": round(load, 2)})
        print(f"{v.engine:9s} {v.name:24s} {audio_s:6.1f} s audio in {cpu:6.2f} CPU s: "
              f"{audio_s / cpu:6.1f}x real time (load {load:.2f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
