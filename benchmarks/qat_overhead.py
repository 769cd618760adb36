"""QAT overhead: training-step time and peak memory of GQ and the baselines, as ratios to fp32.

One training step = forward + loss (+ regularizer) + backward + optimizer step (+ GQ's
``constrain_``). Two models: a 4-layer LSTM-512 (80 input features) and a 4-block
Transformer-256 built here from nn.Linear / nn.LayerNorm; batch 8, 100 frames. Every
configuration runs twice, each time in a fresh subprocess: alone, for its peak RSS, and paired
with an fp32 twin stepped alternately in the same process, for a time ratio that load from
other processes on a shared machine affects alike. GQ is timed in its soft phase (relative tau held at 0.1),
its most expensive one; baselines ignore tau. Quantized runs call ``GQScheduler.step()`` after
each optimizer step (constrain + set_tau, no projection), as a training loop does.

    python benchmarks/qat_overhead.py [--quick] [--threads 1] [--steps 8] [--warmup 2]

Ratios depend on tokens per step (batch x frames): a quantizer costs a fixed amount per weight
per step, a matrix product costs per weight per token. Keep the shapes when comparing runs.
Prints a table and writes benchmarks/out/qat_overhead.json. Targets (issue 12 item 9): GQ step
time <= 1.3x fp32 at 1-5 bits and <= 2x at 8 bits, on both models; 8-bit GQ peak memory
<= 1.2x fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out" / "qat_overhead.json"

# (label, method, bits, granularity, options); "fp32" = no quantization
CONFIGS: list[tuple[str, str, int, str, dict[str, Any]]] = [
    ("fp32", "fp32", 32, "tensor", {}),
    ("gq-1", "gq", 1, "tensor", {}),
    ("gq-2", "gq", 2, "tensor", {}),
    ("gq-4", "gq", 4, "tensor", {}),
    ("gq-5", "gq", 5, "tensor", {}),
    ("gq-8", "gq", 8, "tensor", {}),
    ("uniform-8 (8-bit QAT)", "uniform", 8, "channel", {}),
    ("s8bqat-4", "s8bqat", 4, "tensor", {}),
    ("dkm-4", "dkm", 4, "tensor", {}),
    ("ptq-4", "ptq", 4, "channel", {}),
]
MODELS = ("lstm", "transformer")
GQ_TAU = 0.1
TIME_TARGET = {1: 1.3, 2: 1.3, 3: 1.3, 4: 1.3, 5: 1.3, 8: 2.0}  # GQ step time / fp32, by bits
PEAK_TARGET = {8: 1.2}  # GQ peak RSS / fp32


# -- models (worker side) ----------------------------------------------------------------
def build_model(name: str, feat: int = 80, out_dim: int = 512):
    """The two benchmark networks; only torch.nn building blocks, so prepare() sees them all."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class LSTMNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(feat, 512, num_layers=4, batch_first=True)
            self.head = nn.Linear(512, out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0])

    class Block(nn.Module):
        def __init__(self, d: int = 256, heads: int = 4, ff: int = 1024) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
            att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
            return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))

    class TransformerNet(nn.Module):
        def __init__(self, d: int = 256, blocks: int = 4) -> None:
            super().__init__()
            self.inp = nn.Linear(feat, d)
            self.blocks = nn.Sequential(*[Block(d) for _ in range(blocks)])
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.blocks(self.inp(x))))

    if name == "lstm":
        return LSTMNet()
    if name == "transformer":
        return TransformerNet()
    raise ValueError(f"--model: expected one of {MODELS}, got {name!r}")


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(spec: dict[str, Any], quantize: bool):
    """``(model, step)``: the model (fresh, seed 0) and a closure running one timed step."""
    import torch

    torch.manual_seed(0)
    model = build_model(spec["model"])
    reg = sched = None
    if quantize:
        from subbit.quant.api import prepare, quantized_tensors, regularization
        from subbit.quant.rules import LayerSpec, QuantConfig
        from subbit.quant.schedule import GQScheduler

        cfg = QuantConfig(default=LayerSpec(spec["method"], spec["bits"], spec["granularity"], spec["options"]))
        model = prepare(model, cfg)
        if not any(True for _ in quantized_tensors(model)):
            raise RuntimeError(f"prepare() attached no quantizer for {spec['method']}")
        # constant soft tau, no projection: the steady per-step cost of the soft phase
        sched = GQScheduler(model, 10**6, tau_start=GQ_TAU, tau_end=GQ_TAU, quant_every=0)
        if spec["method"] == "s8bqat":
            reg = regularization
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec["batch"], spec["frames"], 80, generator=g)
    y = torch.randn(spec["batch"], spec["frames"], 512, generator=g)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if reg is not None:
            loss = loss + reg(model)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        elapsed = time.perf_counter() - t0
        if not math.isfinite(float(loss)):
            raise RuntimeError(f"non-finite loss in {spec}")
        return elapsed

    return model, step


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process.

    ``mode="memory"``: only this configuration's model; peak RSS after ``warmup + 2`` steps.
    ``mode="time"``: this configuration and an fp32 twin, stepped alternately (q, f, q, f, ...)
    so that load from other processes hits both alike; the ratio is the median of per-pair
    ratios.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    quantize = spec["method"] != "fp32"
    if spec["mode"] == "memory":
        model, step = _build(spec, quantize)
        rss_before = _rss_mb()
        for _ in range(spec["warmup"] + 2):
            step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
        return {
            "peak_rss_mb": peak, "rss_before_mb": rss_before, "train_mem_mb": peak - rss_before,
            "params": sum(p.numel() for p in model.parameters()),
        }
    _, q_step = _build(spec, quantize)
    _, f_step = _build(spec, False)
    for _ in range(spec["warmup"]):
        q_step()
        f_step()
    tq, tf = [], []
    for i in range(spec["steps"]):  # alternate which goes first, so order effects cancel
        if i % 2:
            tf.append(f_step())
            tq.append(q_step())
        else:
            tq.append(q_step())
            tf.append(f_step())
    return {
        "step_ms": 1e3 * statistics.median(tq),
        "step_ms_min": 1e3 * min(tq),
        "fp32_ms": 1e3 * statistics.median(tf),
        "time_x": statistics.median(a / b for a, b in zip(tq, tf)),
    }


# -- driver ------------------------------------------------------------------------------
def _spawn(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_config(model: str, cfg: tuple, args: argparse.Namespace) -> dict[str, Any]:
    """A memory run and a paired timing run, each in its own subprocess."""
    label, method, bits, gran, opts = cfg
    spec = {
        "model": model, "method": method, "bits": bits, "granularity": gran, "options": opts,
        "threads": args.threads, "batch": args.batch, "frames": args.frames,
        "warmup": args.warmup, "steps": args.steps,
    }
    row: dict[str, Any] = {"label": label, "model": model, "method": method, "bits": bits, "granularity": gran}
    for mode in ("memory", "time"):
        result = _spawn({**spec, "mode": mode}, args.timeout)
        if "error" in result:
            row["error"] = f"{mode}: {result['error']}"
            return row
        row.update(result)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Memory ratios to the fp32 run of the same model (time ratios come paired from the worker)."""
    for model in MODELS:
        base = [r for r in rows if r["model"] == model and r.get("method") == "fp32" and "error" not in r]
        if not base:
            continue
        peak, train = base[0]["peak_rss_mb"], base[0]["train_mem_mb"]
        for r in rows:
            if r["model"] == model and "error" not in r:
                r["peak_x"] = r["peak_rss_mb"] / peak
                r["train_mem_x"] = r["train_mem_mb"] / train if train > 0 else float("nan")


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<12}{'config':<24}{'step ms':>9}{'fp32 ms':>9}{'time x':>8}"
            f"{'peak MB':>9}{'peak x':>8}{'train MB':>10}{'train x':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<12}{r['label']:<24}  ERROR {r['error'][:80]}")
            continue
        lines.append(
            f"{r['model']:<12}{r['label']:<24}{r['step_ms']:>9.1f}{r['fp32_ms']:>9.1f}{r['time_x']:>8.2f}"
            f"{r['peak_rss_mb']:>9.0f}{r.get('peak_x', float('nan')):>8.2f}"
            f"{r['train_mem_mb']:>10.0f}{r.get('train_mem_x', float('nan')):>9.2f}"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets (TIME_TARGET, PEAK_TARGET), checked per model."""
    out = []
    for r in rows:
        if "error" in r or r.get("method") != "gq":
            continue
        limit = TIME_TARGET.get(r["bits"])
        if limit is not None:
            ok = r["time_x"] <= limit
            out.append(f"{r['model']} {r['label']}: time {r['time_x']:.2f}x fp32 (target <= {limit}x) "
                       f"{'ok' if ok else 'MISS'}")
        if r["bits"] in PEAK_TARGET and "peak_x" in r:
            limit = PEAK_TARGET[r["bits"]]
            ok = r["peak_x"] <= limit
            out.append(f"{r['model']} {r['label']}: peak RSS {r['peak_x']:.2f}x fp32 (target <= {limit}x) "
                       f"{'ok' if ok else 'MISS'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up (shapes unchanged)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--steps", type=int, default=8, help="timed step pairs per config (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of lstm,transformer")
    p.add_argument("--only", default="", help="comma list of config labels (prefix match) to run")
    p.add_argument("--timeout", type=float, default=600, help="seconds per config")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.steps, args.warmup = 3, 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r}; expected some of {MODELS}")
    configs = CONFIGS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        configs = [c for c in CONFIGS if c[1] == "fp32" or any(c[0].startswith(w) for w in wanted)]
    from tqdm import tqdm

    rows = []
    jobs = [(m, c) for m in models for c in configs]
    for model, cfg in tqdm(jobs, desc="configs", unit="cfg"):
        rows.append(run_config(model, cfg, args))
    add_ratios(rows)
    print(table(rows))
    for line in verdicts(rows):
        print(line)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "threads": args.threads, "batch": args.batch, "frames": args.frames,
        "steps": args.steps, "warmup": args.warmup, "gq_tau_rel": GQ_TAU,
    }
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
