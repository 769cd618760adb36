"""Batch-1 matvec with bit-packed weights: time per call and effective weight bandwidth.

For each size and bit depth 1..8: ``subbit.runtime.kernels.packed_linear`` (x [1, K] @ W^T with
W [N, K] packed), next to fp32 NumPy (BLAS), torch int8 dynamic linear (fbgemm, deprecated
torch.ao API), onnxruntime MatMulNBits 4-bit, and the machine's plain read bandwidth for a
buffer as large as the packed weight (a wide-load C read loop, and NumPy's sum for reference).
Effective bandwidth = packed weight bytes / time. Single thread. Medians of --reps calls; the
plain read of a buffer as large as the weight is timed alternately with each kernel, so both see
the same machine load, and "%read" is their ratio (median) and "%best" the ratio of minima.

    .venv/bin/python benchmarks/matvec_bandwidth.py            # 1024^2 and 4096^2, bits 1..8
    .venv/bin/python benchmarks/matvec_bandwidth.py --sizes 4096x4096,8192x4096 --paths all
    .venv/bin/python benchmarks/matvec_bandwidth.py --sizes 4096x1024,4096x240 --m 2 --bits 4,8

"cold" columns: streaming inference reads each weight once per frame, so a weight is not in L1/L2
when its call starts. They cycle through copies of the weight (--cold-mib in all, beyond the
L2 cache) and compare with a plain read cycling through as many buffers.

Prints a table and writes benchmarks/out/matvec.json. Never a timed test: numbers vary with
the machine and its load (this one is shared), so read them with their spread (p10/p90).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from subbit.export.bitpack import PackedTensor, row_bytes  # noqa: E402
from subbit.runtime import kernels  # noqa: E402


def timeit(fn: Callable[[], Any], reps: int, min_time: float = 0.0) -> dict[str, float]:
    """Median / p10 / p90 microseconds per call after two warm-up calls."""
    fn()
    fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return _stats(ts)


def timeit_pair(fa: Callable[[], Any], fb: Callable[[], Any], reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Time two calls alternately, so both see the same machine load (this machine is shared)."""
    for f in (fa, fb, fa, fb):
        f()
    ta, tb = [], []
    for i in range(reps):
        for f, ts in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return _stats(ta), _stats(tb)


def _stats(ts: list[float]) -> dict[str, float]:
    us = np.array(ts) * 1e6
    return {"median_us": float(np.median(us)), "min_us": float(us.min()), "p10_us": float(np.percentile(us, 10)),
            "p90_us": float(np.percentile(us, 90)), "calls": len(ts)}  # fmt: skip


def random_packed(rng: np.random.Generator, n: int, k: int, bits: int) -> PackedTensor:
    """Random packed bytes are valid indices when K is a multiple of 8 (no padding bits)."""
    packed = rng.integers(0, 256, (n, row_bytes(k, bits)), dtype=np.uint8)
    codebook = np.sort(rng.normal(size=(1, 1 << bits)), axis=1).astype(np.float32) * 0.05
    return PackedTensor(bits=bits, shape=(n, k), packed=packed, codebook=codebook, groups=1)


def torch_int8(n: int, k: int, x: np.ndarray, reps: int) -> dict[str, float] | None:
    """fbgemm dynamic int8 linear (torch.ops.quantized.linear_dynamic); None if unavailable."""
    try:
        import torch

        torch.set_num_threads(1)
        w = torch.randn(n, k) * 0.05
        qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        params = torch.ops.quantized.linear_prepack(qw, None)
        xt = torch.from_numpy(x)
        torch.ops.quantized.linear_dynamic(xt, params)
        with torch.no_grad():
            return timeit(lambda: torch.ops.quantized.linear_dynamic(xt, params), reps)
    except Exception as exc:  # deprecated API: report, don't fail
        print(f"  torch int8 unavailable: {type(exc).__name__}: {exc}")
        return None


def ort_matmulnbits(n: int, k: int, x: np.ndarray, reps: int, bits: int = 4, block: int = 32) -> dict[str, float] | None:
    """onnxruntime com.microsoft MatMulNBits (affine 4-bit, block 32, accuracy_level 4)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        rng = np.random.default_rng(0)
        nblk = k // block
        b = rng.integers(0, 256, (n, nblk, block * bits // 8), dtype=np.uint8)
        scales = (rng.random(n * nblk).astype(np.float32) + 0.5) * 0.01
        node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                                K=k, N=n, bits=bits, block_size=block, accuracy_level=4)  # fmt: skip
        graph = helper.make_graph(
            [node], "mnb",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
            initializer=[helper.make_tensor("B", TensorProto.UINT8, b.shape, b.tobytes(), raw=True),
                         helper.make_tensor("scales", TensorProto.FLOAT, scales.shape, scales.tobytes(), raw=True)],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {"A": x}
        sess.run(None, feed)
        return timeit(lambda: sess.run(None, feed), reps)
    except Exception as exc:
        print(f"  onnxruntime MatMulNBits unavailable: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def cold_pair(weights: list[PackedTensor], bufs: list[np.ndarray], x: np.ndarray, path: str,
              reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Kernel and plain read, each call on the next copy (cycling), timed alternately."""
    state = {"w": 0, "b": 0}

    def kern() -> None:
        kernels.packed_linear(x, weights[state["w"] % len(weights)], path=path)
        state["w"] += 1

    def read() -> None:
        kernels.read_sum(bufs[state["b"] % len(bufs)])
        state["b"] += 1

    return timeit_pair(kern, read, max(reps, 2 * len(weights)))


def read_bandwidth(nbytes: int, reps: int) -> dict[str, Any]:
    buf = np.ones(nbytes, dtype=np.uint8)
    c = timeit(lambda: kernels.read_sum(buf), reps)
    npy = timeit(lambda: buf.sum(dtype=np.uint64), max(3, reps // 5))
    return {"c_read": c, "numpy_sum": npy}


def gbps(nbytes: int, t: dict[str, float] | None) -> float | None:
    return None if t is None else nbytes / (t["median_us"] * 1e-6) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024x1024,4096x4096", help="comma-separated NxK")
    ap.add_argument("--bits", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--paths", default="best", help="'best', 'all' or a comma list of c,avx2,avx512")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--m", type=int, default=1, help="input rows per call (2 = two frames of a chunk)")
    ap.add_argument("--cold-mib", type=float, default=64.0, help="bytes of weight copies cycled for 'cold' (0: skip)")
    ap.add_argument("--out", default="benchmarks/out/matvec.json")
    args = ap.parse_args()

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    bit_list = [int(b) for b in args.bits.split(",")]
    avail = [p for p in kernels.available_paths() if p != "ref"]
    if args.paths == "best":
        paths = avail[-1:] or ["ref"]
    elif args.paths == "all":
        paths = avail
    else:
        paths = [p.strip() for p in args.paths.split(",")]
        for p in paths:
            if p not in kernels.available_paths():
                raise SystemExit(f"--paths: {p!r} not available here ({kernels.available_paths()})")
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "machine": {"cpu": _cpu_name(), "python": platform.python_version(), "numpy": np.__version__,
                    "threads": 1, "kernels": kernels.describe()},  # fmt: skip
        "sizes": [],
    }
    for n, k in sizes:
        if k % 8:
            raise SystemExit(f"--sizes: K={k} must be a multiple of 8 (random packed bytes are then valid)")
        if args.m < 1:
            raise SystemExit(f"--m must be >= 1, got {args.m}")
        x = rng.normal(size=(args.m, k)).astype(np.float32)
        entry: dict[str, Any] = {"n": n, "k": k, "m": args.m, "packed": [], "baselines": {}}
        w32 = (rng.normal(size=(n, k)) * 0.05).astype(np.float32)
        w32t = np.ascontiguousarray(w32.T)
        t = timeit(lambda: x @ w32t, max(5, args.reps // 2))
        entry["baselines"]["numpy_fp32"] = {**t, "weight_bytes": w32.nbytes, "GBps": gbps(w32.nbytes, t)}
        del w32, w32t
        t = torch_int8(n, k, x, args.reps)
        entry["baselines"]["torch_int8_dynamic"] = None if t is None else {**t, "weight_bytes": n * k, "GBps": gbps(n * k, t)}
        t = ort_matmulnbits(n, k, x, args.reps) if args.m == 1 and k % 32 == 0 else None  # [1, K] graph, blocks of 32
        ort_bytes = n * k // 2 + n * (k // 32) * 4
        entry["baselines"]["ort_matmulnbits_4bit"] = None if t is None else {**t, "weight_bytes": ort_bytes,
                                                                              "GBps": gbps(ort_bytes, t)}  # fmt: skip
        for bits in tqdm(bit_list, desc=f"{n}x{k}", leave=False):
            w = random_packed(rng, n, k, bits)
            kernels.prepare(w)
            nbytes = w.packed.nbytes
            read = read_bandwidth(nbytes, args.reps)
            row: dict[str, Any] = {"bits": bits, "weight_bytes": nbytes, "read": read,
                                   "read_GBps": gbps(nbytes, read["c_read"]),
                                   "numpy_sum_GBps": gbps(nbytes, read["numpy_sum"]), "paths": {}}  # fmt: skip
            buf = np.ones(nbytes, dtype=np.uint8)
            copies = min(256, int(args.cold_mib * (1 << 20) // nbytes) + 1) if args.cold_mib > 0 else 0
            cold_w = [random_packed(rng, n, k, bits) for _ in range(copies)]
            for cw in cold_w:  # tables and placement once, outside the timing
                kernels.prepare(cw)
            cold_b = [np.ones(nbytes, dtype=np.uint8) for _ in range(copies)]
            for path in paths:
                reps = args.reps if path != "ref" else 3
                t, tr = timeit_pair(lambda: kernels.packed_linear(x, w, path=path), lambda: kernels.read_sum(buf), reps)
                row["paths"][path] = {**t, "GBps": gbps(nbytes, t), "read_alongside": tr,
                                      "of_read": tr["median_us"] / t["median_us"],
                                      "of_read_best": tr["min_us"] / t["min_us"]}  # fmt: skip
                if copies and path != "ref":
                    tc, trc = cold_pair(cold_w, cold_b, x, path, reps)
                    row["paths"][path]["cold"] = {**tc, "GBps": gbps(nbytes, tc), "copies": copies,
                                                  "read": trc, "read_GBps": gbps(nbytes, trc)}  # fmt: skip
            del cold_w, cold_b
            entry["packed"].append(row)
        results["sizes"].append(entry)
        _print_size(entry, paths)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _print_size(entry: dict[str, Any], paths: list[str]) -> None:
    n, k = entry["n"], entry["k"]
    print(f"\n{n}x{k} matvec, M={entry.get('m', 1)} input rows, 1 thread (median us; GB/s = packed weight bytes / "
          f"time; %read = time of a plain read of as many bytes, timed alternately / kernel time, medians; %best = "
          f"same with minima; cold = cycling through copies: kernel us, GB/s, plain-read GB/s)")
    head = f"{'weights':<22} {'bytes':>10} " + " ".join(
        f"{p + ' us':>11} {'GB/s':>6} {'%read':>6} {'%best':>6} {'cold us':>8} {'GB/s':>6} {'read':>6}" for p in paths
    )
    print(head + f" {'read GB/s':>10} {'np.sum GB/s':>11}")
    for r in entry["packed"]:
        cells = " ".join(
            f"{r['paths'][p]['median_us']:>11.1f} {r['paths'][p]['GBps']:>6.1f} {100 * r['paths'][p]['of_read']:>5.0f}%"
            f" {100 * r['paths'][p]['of_read_best']:>5.0f}% {_cold_cells(r['paths'][p].get('cold'))}"
            for p in paths
        )
        print(f"{'subbit ' + str(r['bits']) + '-bit':<22} {r['weight_bytes']:>10} {cells} {r['read_GBps']:>10.1f} "
              f"{r['numpy_sum_GBps']:>11.1f}")  # fmt: skip
    for name, b in entry["baselines"].items():
        if b is None:
            print(f"{name:<22} {'n/a':>10}")
        else:
            print(f"{name:<22} {b['weight_bytes']:>10} {b['median_us']:>11.1f} {b['GBps']:>6.1f}")


def _cold_cells(c: dict[str, Any] | None) -> str:
    if c is None:
        return f"{'-':>8} {'-':>6} {'-':>6}"
    return f"{c['median_us']:>8.1f} {c['GBps']:>6.1f} {c['read_GBps']:>6.1f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
