"""Resident weight memory of exported models in both runtimes, against the file's own bytes.

Each recipe is applied to one fp32 run without training (prepare + convert: memory does not
depend on what the weights learned), exported, then loaded in a fresh process per runtime, which
streams one second of audio and reports the runtime's own count of resident weight bytes and the
process's resident-set growth since before the load. A benchmark, not a test; the ratios compare
files measured in one run.

    python benchmarks/runtime_memory.py --run RUN --recipes fp32,qat8,gq8,gq5,gq4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, sys
import numpy as np
from subbit.runtime import PackedTransducer, StreamingSession, native

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

path, backend = sys.argv[1], sys.argv[2]
before = rss_kib()
noise = (np.random.default_rng(0).normal(size=16000) * 0.01).astype(np.float32)  # 1 s: every layer runs
if backend == "numpy":
    model = PackedTransducer.from_file(path, backend="numpy")
    session = StreamingSession(model, backend="numpy")
    session.accept_audio(noise)
    session.finalize()
    weight_bytes = model.weight_bytes
else:
    model = native.NativeModel(path, 1)
    with model.session() as session:
        session.accept(noise)
        session.finalize()
    weight_bytes = model.info.weight_bytes
print(json.dumps({"weight_bytes": int(weight_bytes), "rss_growth_kib": rss_kib() - before}))
"""


def probe(path: Path, backend: str) -> dict:
    """Load ``path`` in a fresh interpreter and stream one second through it: the runtime's weight
    count and the resident growth left behind (imports done first)."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), backend], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    return json.loads(out.strip().splitlines()[-1])


def export(run: Path, recipe: str, work: Path) -> Path:
    """``recipe`` applied to ``run`` without training, written as ``work/recipe.subbit``."""
    from subbit.experiments.compare import _run_ptq
    from subbit.experiments.recipes import RECIPES

    target = work / recipe
    if recipe == "fp32":
        target = run
    else:
        _run_ptq(RECIPES[recipe], run, target)
    out = work / f"{recipe}.subbit"
    subprocess.run([sys.executable, "-c", "from subbit.cli import main; raise SystemExit(main())", "export",
                    str(target), "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="an fp32 run directory (subbit train)")
    ap.add_argument("--recipes", default="fp32,qat8,gq8,gq5,gq4")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    from subbit.runtime import native

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            f = export(Path(args.run), recipe, Path(tmp))
            row = {"recipe": recipe, "file_bytes": f.stat().st_size, "python": probe(f, "numpy")}
            if native.available():
                row["libsubbit"] = probe(f, "c")
            rows.append(row)
            cells = [f"{recipe:6s} file {row['file_bytes']:>10,d} B"]
            for rt in ("python", "libsubbit"):
                if rt in row:
                    wb = row[rt]["weight_bytes"]
                    cells.append(f"{rt} weights {wb:>10,d} B ({wb / row['file_bytes']:.2f}x the file), "
                                 f"RSS +{row[rt]['rss_growth_kib'] / 1024:.1f} MiB")
            print(" | ".join(cells), flush=True)
    from subbit.runtime import kernels

    from subbit.experiments.study_plan import machine

    meta = {"machine": machine(), "python": platform.python_version(),
            "kernel_path": kernels.default_path(), "run": str(args.run)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
