"""libsubbit's vector tanh / sigmoid / SiLU / GLU / exp (libsubbit/src/vmath.h) against libm.

``build/libsubbit/vmath-check`` (libsubbit/test/vmath_check.c) evaluates each function on every
kernel path this CPU runs, over every 97th float of |x| in [2**-24, 20] (exp: [-86, 88]) and a
uniform grid of step 1e-4, against double-precision libm, and reports the worst errors and
whether each SIMD path is bit-identical to the portable one.

Why these bounds are enough: the runtime quantizes every activation row to int8 before a packed
matmul, one step being max|x| / 127 (>= 1e-3 for any row it sees). An error of 1e-7 in a gate
or a SiLU output moves an activation across a rounding boundary only when it lies within 1e-7 of
one, which is also what libm's tanhf against NumPy's already does; the parity tests in
test_libsubbit.py bound the effect on the logits (LOGIT_TOL) and require the same transcript.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from subbit.runtime import kernels

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "build" / "libsubbit" / "vmath-check"
PATHS = {"c": 1, "avx2": 2, "avx512": 3}
# guaranteed bounds (measured: tanh 8.4e-8 / 2.4 ulp, sigmoid 6.5e-8, SiLU 1.0e-7 of max(1, |x|),
# GLU 7.3e-8 with a = 0.75, exp 1.0 ulp)
TANH_ABS, TANH_ULP, SIGMOID_ABS, SILU_SCALED, EXP_ULP = 1.2e-7, 3.0, 1.2e-7, 1.5e-7, 2.0


@pytest.fixture(scope="module")
def report() -> list[dict]:
    if not (ROOT / "libsubbit" / "Makefile").is_file():
        pytest.skip("libsubbit sources not present")
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "libsubbit"), "checks"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = subprocess.run([str(CHECK)], capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _rows(report: list[dict], key: str) -> dict[tuple[str, int], dict]:
    return {(r[key], r["path"]): r for r in report if key in r}


def test_every_path_the_cpu_runs_is_checked(report: list[dict]) -> None:
    want = {PATHS[p] for p in kernels.available_paths() if p in PATHS}
    got = {p for (_, p) in _rows(report, "fn")}
    assert want <= got and 1 in got


def test_accuracy_against_libm(report: list[dict]) -> None:
    for (fn, path), r in _rows(report, "fn").items():
        assert r["n"] > 4_000_000, r
        where = f"{fn} on path {path}: {r}"
        if fn == "tanh":
            assert r["max_abs"] <= TANH_ABS and r["max_ulp"] <= TANH_ULP, where
        elif fn in ("sigmoid", "glu"):
            assert r["max_abs"] <= SIGMOID_ABS, where
        elif fn == "silu":
            assert r["max_scaled"] <= SILU_SCALED, where
        else:
            assert r["max_ulp"] <= EXP_ULP, where


def test_simd_paths_are_bit_identical_to_the_portable_one(report: list[dict]) -> None:
    """(so test_libsubbit's every-kernel-path test can require equal logits)"""
    rows = _rows(report, "fn")
    assert all(r["same_as_portable"] for r in rows.values()), [k for k, r in rows.items() if not r["same_as_portable"]]
    tails = _rows(report, "tails")
    assert tails and all(r["ok"] for r in tails.values()), tails  # lengths 1..40: no lane past n is read or written


def test_special_values(report: list[dict]) -> None:
    # inputs: 0, -0, inf, -inf, nan, 1e-40, -1e-40, 9.1, 0.3, 100, -100, 88.5, -87
    for (fn, _), r in _rows(report, "special").items():
        v = [float.fromhex(s) if s not in ("nan", "-nan") else math.nan for s in r["out"]]
        if fn == "tanh":
            assert v[:4] == [0.0, -0.0, 1.0, -1.0] and math.copysign(1, v[1]) < 0 and math.isnan(v[4])
            assert v[5] == pytest.approx(1e-40, rel=1e-6) and v[6] == -v[5] and v[9:11] == [1.0, -1.0]
        elif fn == "sigmoid":
            assert v[:4] == [0.5, 0.5, 1.0, 0.0] and math.isnan(v[4]) and v[9:11] == [1.0, 0.0]
        elif fn == "exp":
            assert v[:4] == [1.0, 1.0, math.inf, 0.0] and math.isnan(v[4]) and v[11:] == [math.inf, 0.0]
            assert v[7] == pytest.approx(math.exp(float(np.float32(9.1))), rel=2.5e-7)  # 2 ulp
        elif fn == "glu":
            assert v[2:4] == [0.75, 0.0] and math.isnan(v[4])
