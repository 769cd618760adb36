"""libsubbit under valgrind: a tiny exported RNN-T streamed by build/subbit-stream, then the same
file truncated, with a flipped header byte and with a flipped payload byte. Each run must end
with no memory error and no leak (valgrind --error-exitcode), refused files with exit 1.

The checked runs use the portable kernel path (SUBBIT_KERNEL=portable): valgrind has no AVX-512.
The AVX2 run is printed for information, not counted; it used to report uninitialised bytes (the
tail load of the last activation row read the buffer's slack, times zero weights), which
libsubbit's linear.c and the Python runtime's run_linear now zero.

    .venv/bin/python benchmarks/libsubbit_valgrind.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))


def main() -> int:
    if not shutil.which("valgrind"):
        print("valgrind not installed: nothing run")
        return 0
    from test_session import audio, export_tiny  # the tests' tiny model and audio

    subprocess.run(["make", "-s", "-C", str(ROOT / "libsubbit")], check=True)
    cli = ROOT / "build" / "subbit-stream"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = export_tiny(tmp, "rnnt")
        wav_path = tmp / "a.wav"
        with wave.open(str(wav_path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((audio(1.0) * 32767).astype("<i2").tobytes())
        blob = model.read_bytes()
        cases = {"intact": (blob, 0), "truncated": (blob[:-9], 1)}
        env = {**__import__("os").environ, "SUBBIT_KERNEL": "portable"}
        for name, pos in (("header byte", 200), ("payload byte", len(blob) - 50)):
            b = bytearray(blob)
            b[pos] ^= 1
            cases[name] = (bytes(b), 1)
        failed = 0
        for name, (data, want) in cases.items():
            path = tmp / "m.subbit"
            path.write_bytes(data)
            cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                   str(cli), "--chunk", "333", str(path), str(wav_path)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            ok = out.returncode == want
            failed += not ok
            print(f"{name:>13}: exit {out.returncode} (want {want}) {'ok' if ok else 'FAIL'}  {out.stderr.strip()[-160:]}")
        path = tmp / "m.subbit"
        path.write_bytes(blob)
        info = subprocess.run(["valgrind", "-q", str(cli), "--chunk", "333", str(path), str(wav_path)], capture_output=True,
                              text=True, env={**env, "SUBBIT_KERNEL": "avx2"})  # fmt: skip
        n_err = info.stderr.count("uninitialised")
        print(f"(information) avx2 path: {n_err} uninitialised-value reports from valgrind")
        return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
