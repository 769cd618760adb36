"""GQ soft-assignment speed: tabulated function vs exact window path, ms per 1M weights.

One "call" = GQ's soft forward of a per-tensor group plus its backward (gradients to the
weights and the centroids), as in a training step. ``table`` = subbit.quant.soft_table
(grid chosen by ``choose_grid``, tabulation included in the time) with its PyTorch ops,
``native`` = the same with the per-weight lookup in the fused C kernels (subbit.quant.native;
absent when the library is not built), ``window`` = gq.SoftAssign
with the window GeneralQuantizer would use, ``matmul`` = the reference a training step pays
anyway: a ``[64, 1024] x [1024, 1024]`` fp32 matmul forward + backward, scaled to 1M weights.
Single thread by default; CPU time, median and min of the repeats (speedup = ratio of
medians); expect +-30% noise on a shared machine.

    python benchmarks/gq_soft_speed.py [--numel 1048576] [--repeats 5] [--taus 1,0.1,0.01]

Prints a table and writes benchmarks/out/gq_soft_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

OUT = Path(__file__).resolve().parent / "out" / "gq_soft_speed.json"
BITS = (1, 2, 4, 5, 8)


def _time(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(median, min) CPU time of ``fn`` in ms after two warm-up calls (CPU, not wall: on a
    machine shared with other jobs wall time doubles at random, CPU time much less; the min is
    the least disturbed run)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(1e3 * (time.process_time() - t0))
    return statistics.median(times), min(times)


@contextlib.contextmanager
def _native_enabled(on: bool) -> Iterator[None]:
    """Switch the C table lookup on or off (``SUBBIT_NATIVE``) for the enclosed calls."""
    old = os.environ.get("SUBBIT_NATIVE")
    os.environ["SUBBIT_NATIVE"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SUBBIT_NATIVE"]
        else:
            os.environ["SUBBIT_NATIVE"] = old


def bench(numel: int, bits: int, tau_rel: float, repeats: int) -> dict[str, Any]:
    """Forward+backward ms (scaled to 1M weights) of both paths for one bit depth and tau."""
    import torch

    from subbit.quant import native
    from subbit.quant.gq import GeneralQuantizer, soft_assign
    from subbit.quant.soft_table import choose_grid, table_soft

    g = torch.Generator().manual_seed(bits)
    w0 = torch.randn(1, numel, generator=g)
    q = GeneralQuantizer(w0, bits, window=8)
    q.set_tau(tau_rel)
    w = w0.clone().requires_grad_()
    s, mu = q.scale.reshape(1, 1), q.mu.reshape(1, 1)
    scale = (1 << 20) / numel
    row: dict[str, Any] = {"bits": bits, "tau_rel": tau_rel}

    def window_call() -> None:
        theta = q.centroids()
        y = soft_assign(w, s, mu, theta, q._cfg(theta))
        y.backward(torch.ones_like(y))
        w.grad = None
        q.theta.grad = None

    med, low = _time(window_call, repeats)
    row["window_ms"], row["window_ms_min"] = scale * med, scale * low
    row["window"] = q._cfg(q.centroids()).window
    size = choose_grid(q.centroids().detach(), q.abs_tau, numel, q.distance, mu)
    row["grid"] = size
    if size is not None:

        def table_call() -> None:
            y = table_soft(w, s, mu, q.centroids(), q.abs_tau, q.distance, q.domain, size)
            y.backward(torch.ones_like(y))
            w.grad = None
            q.theta.grad = None

        with _native_enabled(False):
            med, low = _time(table_call, repeats)
        row["table_ms"], row["table_ms_min"] = scale * med, scale * low
        row["speedup"] = row["window_ms"] / row["table_ms"]
        if native.available():
            med, low = _time(table_call, repeats)
            row["native_ms"], row["native_ms_min"] = scale * med, scale * low
    return row


def matmul_ms(repeats: int) -> float:
    """fp32 ``[64, 1024] @ [1024, 1024]`` forward + backward (to input and weight), ms."""
    import torch

    x = torch.randn(64, 1024, requires_grad=True)
    wt = torch.randn(1024, 1024, requires_grad=True)

    def call() -> None:
        y = x @ wt
        y.backward(torch.ones_like(y))
        x.grad = wt.grad = None

    return _time(call, repeats)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=1 << 20, help="weights per tensor (default 1M)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    p.add_argument("--taus", default="1,0.1,0.01", help="comma list of relative temperatures")
    p.add_argument("--bits", default=",".join(map(str, BITS)), help="comma list of bit depths")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.numel < 16 or args.repeats < 1:
        p.error("--numel must be >= 16 and --repeats >= 1")
    try:
        taus = [float(t) for t in args.taus.split(",") if t.strip()]
        bits = [int(b) for b in args.bits.split(",") if b.strip()]
    except ValueError as exc:
        p.error(f"--taus/--bits: {exc}")
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    ref = matmul_ms(args.repeats)
    rows = [bench(args.numel, b, t, args.repeats) for b, t in tqdm([(b, t) for b in bits for t in taus], desc="cells")]
    head = (f"{'bits':>4}{'tau_rel':>9}{'grid M':>9}{'W':>4}{'window ms':>11}{'(min)':>8}"
            f"{'table ms':>10}{'(min)':>8}{'speedup':>9}{'native ms':>11}{'(min)':>8}{'vs table':>9}")
    print(f"fp32 matmul 64x1024x1024 fwd+bwd: {ref:.1f} ms (per 1M weights); {args.threads} thread(s)")
    print(head)
    print("-" * len(head))
    for r in rows:
        table = (f"{r['table_ms']:>10.1f}{r['table_ms_min']:>8.1f}{r['speedup']:>8.1f}x" if "table_ms" in r
                 else f"{'(window)':>10}{'':>8}{'-':>9}")
        if "native_ms" in r:
            table += f"{r['native_ms']:>11.1f}{r['native_ms_min']:>8.1f}{r['table_ms'] / r['native_ms']:>8.1f}x"
        print(f"{r['bits']:>4}{r['tau_rel']:>9g}{str(r['grid']):>9}{r['window']:>4}{r['window_ms']:>11.1f}"
              f"{r['window_ms_min']:>8.1f}{table}")
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": args.threads, "numel": args.numel,
        "repeats": args.repeats, "matmul_ms": ref,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
