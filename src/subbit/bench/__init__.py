"""subbit.bench: streaming latency and memory of the packed runtime against fp32 and int8.

:func:`run_benchmark` is what ``subbit bench`` runs: it builds a preset with random weights
(speed does not depend on training), writes every variant's artifact (a model config for the
PyTorch variants, int8 ONNX graphs, one ``.subbit`` file per bit depth), runs each variant in
its own subprocess (:mod:`subbit.bench.latency`) at each thread count, and adds a single
large matvec per bit depth. Result rows keep the keys ``name, method, bits, threads, p50_ms,
p90_ms, upl_ms, rtf, weight_bytes, peak_rss_bytes`` (plus extras).

The sub-8-bit files are made exactly as ``subbit.quant.prepare`` (default rule: every Linear,
Conv1d, Embedding and LSTM weight, GQ at ``bits``) followed by ``convert`` would make them,
but without prepare's soft forward over all weights (tens of seconds for the paper presets):
each weight gets a fresh :class:`~subbit.quant.gq.GeneralQuantizer` whose hard ``encode`` is
packed directly. tests/bench/test_bench.py checks that both routes give identical files.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS: dict[str, tuple[str, str]] = {
    "paper-rnnt": ("rnnt", "paper"),
    "paper-conformer": ("conformer", "paper"),
    "small-rnnt": ("rnnt", "small"),
    "small-conformer": ("conformer", "small"),
    "tiny-rnnt": ("rnnt", "tiny"),
    "tiny-conformer": ("conformer", "tiny"),
}
ROW_KEYS = ("name", "method", "bits", "threads", "p50_ms", "p90_ms", "upl_ms", "rtf", "weight_bytes",
            "peak_rss_bytes")
ALL_BITS = (8, 5, 4, 3, 2, 1)
ARTIFACT_VERSION = 2  # bump when the artifacts' format changes: --workdir caches are then rebuilt
QUICK_BITS = (8, 4, 2)


@dataclass
class BenchOptions:
    preset: str = "paper-rnnt"
    bits: tuple[int, ...] = ALL_BITS
    threads: tuple[int, ...] = (1, 2)
    seconds: float = 10.0
    repeats: int = 2
    vocab_size: int = 256
    seed: int = 0
    baselines: tuple[str, ...] = ("fp32", "torch-int8", "ort-int8")
    matvec: bool = True
    matvec_size: int = 4096
    token_every: int = 3
    rounds: int = 1
    libsubbit: bool = False  # also rows "libsubbit-Nbit": the C session alone (its own threads), greedy
    workdir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for b in self.bits:
            if not isinstance(b, int) or not 1 <= b <= 8:
                raise ValueError(f"bits: every entry must be an integer in 1..8, got {b!r}")
        for t in self.threads:
            if not isinstance(t, int) or t < 1:
                raise ValueError(f"threads: every entry must be a positive integer, got {t!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {self.rounds!r}")
        if not isinstance(self.token_every, int) or self.token_every < 0:
            raise ValueError(f"token_every must be an integer >= 0, got {self.token_every!r}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds!r}")
        unknown = set(self.baselines) - {"fp32", "torch-int8", "ort-int8"}
        if unknown:
            raise ValueError(f"baselines: unknown {sorted(unknown)}; known: fp32, torch-int8, ort-int8")


def quick_options(preset: str, **over: Any) -> BenchOptions:
    """The ``--quick`` set: 1 thread, bits 8/4/2, 3 s of audio, one timed pass."""
    base: dict[str, Any] = {"preset": preset, "bits": QUICK_BITS, "threads": (1,), "seconds": 3.0, "repeats": 1,
                            "matvec_size": 4096}
    base.update({k: v for k, v in over.items() if v is not None})
    return BenchOptions(**base)


# -- artifacts ---------------------------------------------------------------------------------
def build_float_model(opts: BenchOptions) -> Any:
    """The preset with the seed's random weights; every variant starts from these weights."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    import torch

    from subbit.asr.models import build_model

    arch, preset = PRESETS[opts.preset]
    torch.manual_seed(opts.seed)
    model = build_model(arch, preset, vocab_size=opts.vocab_size).eval()
    return model


def gq_quantized_tensors(model: Any, bits: int) -> list[Any]:
    """QuantizedTensor records for every weight ``prepare`` quantizes under a default GQ rule."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    from subbit.quant import QuantizedTensor
    from subbit.quant.gq import GeneralQuantizer
    from subbit.quant.modules import quantizable_params

    out = []
    for mod_name, mod in model.named_modules():
        for pname in quantizable_params(mod):
            w = getattr(mod, pname)
            name = f"{mod_name}.{pname}" if mod_name else pname
            out.append(QuantizedTensor(name, mod, pname, GeneralQuantizer(w.detach(), bits), w))
    return out


def export_gq(model: Any, bits: int, path: str | os.PathLike[str]) -> Any:
    """Write ``model`` GQ-quantized at ``bits`` (no training) to a ``.subbit`` file."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    from subbit.export.container import export_model

    return export_model(model, path, arch=model.config, quantized=gq_quantized_tensors(model, bits))


def _specs(opts: BenchOptions, workdir: Path, progress: bool) -> list[Any]:
    """Write every artifact to ``workdir``; return the variant specs (one per variant x threads)."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    from tqdm import tqdm

    from subbit.bench.onnx_export import export_onnx_int8
    from subbit.bench.onnx_int8 import ort_available
    from subbit.bench.latency import VariantSpec

    model = build_float_model(opts)
    cfg_path = workdir / "model-config.json"
    # artifacts of an earlier run in the same --workdir are reused when they came from the same
    # weights (same preset config, seed and library versions)
    import torch

    stamp = json.dumps({"config": model.config, "seed": opts.seed, "torch": torch.__version__,
                        "artifacts": ARTIFACT_VERSION}, sort_keys=True)
    stamp_path = workdir / "stamp.json"
    reuse = stamp_path.is_file() and stamp_path.read_text() == stamp
    if not reuse:
        for old in list(workdir.glob("gq*.subbit")) + list(workdir.glob("ort-int8/*.onnx")):
            old.unlink()
        stamp_path.write_text(stamp)
    cfg_path.write_text(json.dumps(model.config))
    jobs: list[tuple[str, str, int, str]] = []  # name, method, bits, path
    if "fp32" in opts.baselines:
        jobs.append(("fp32-torch", "fp32", 32, str(cfg_path)))
    if "torch-int8" in opts.baselines:
        jobs.append(("int8-torch.ao", "torch-int8", 8, str(cfg_path)))
    steps = [("ort", None)] if "ort-int8" in opts.baselines and ort_available() else []
    steps += [("subbit", b) for b in opts.bits]
    for kind, bits in tqdm(steps, desc="artifacts", disable=not progress):
        if kind == "ort":
            if not (reuse and (workdir / "ort-int8" / "meta.json").is_file()):
                export_onnx_int8(model, workdir / "ort-int8")
            jobs.append(("int8-onnxruntime", "ort-int8", 8, str(workdir / "ort-int8")))
        else:
            path = workdir / f"gq{bits}.subbit"
            if not (reuse and path.is_file()):
                export_gq(model, int(bits), path)
            jobs.append((f"subbit-{bits}bit", "subbit", int(bits), str(path)))
            if opts.libsubbit:
                jobs.append((f"libsubbit-{bits}bit", "libsubbit", int(bits), str(path)))
    specs = []
    for threads in opts.threads:
        for name, method, bits, path in jobs:
            extra = {"token_every": opts.token_every, **opts.extra}
            if method == "libsubbit":
                extra["token_every"] = 0  # the library decodes greedily
            specs.append(VariantSpec(name=name, method=method, bits=bits, threads=threads, seconds=opts.seconds,
                                     path=path, seed=opts.seed, repeats=opts.repeats, extra=extra))
    return specs


# -- the run -----------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, the SIMD flags the kernels care about, core count and library versions."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    import numpy as np

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count(), "numpy": np.__version__}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = sorted(flags & {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512vbmi",
                                                "avx_vnni", "amx_int8", "f16c"})
                break
    except OSError:
        info["cpu"] = platform.processor()
    for mod in ("torch", "onnxruntime", "onnx"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    from subbit.runtime import kernels

    info["kernels"] = kernels.describe()
    return info


def run_benchmark(opts: BenchOptions, progress: bool = True) -> dict[str, Any]:
    """Artifacts, then one subprocess per variant; returns ``{"machine", "options", "rows", ...}``."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    from tqdm import tqdm

    from subbit.bench.latency import matvec_rows, run_in_subprocess

    with tempfile.TemporaryDirectory(prefix="subbit-bench-") as tmp:
        workdir = Path(opts.workdir) if opts.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        specs = _specs(opts, workdir, progress)
        runs: list[list[dict[str, Any]]] = [[] for _ in specs]
        # rounds interleave the variants, so a change of load on a shared machine hits all of them
        bar = tqdm([(r, i) for r in range(opts.rounds) for i in range(len(specs))], desc="variants",
                   disable=not progress)
        for _, i in bar:
            bar.set_postfix_str(f"{specs[i].name} x{specs[i].threads}")
            runs[i].append(run_in_subprocess(specs[i]))
        rows = [merge_rounds(r) for r in runs]
    result: dict[str, Any] = {
        "machine": machine_info(),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "rows": rows,
    }
    if opts.matvec:
        n = opts.matvec_size
        result["matvec"] = matvec_rows(sorted(set(opts.bits) | {8, 4}), n=n, k=n)
    result["targets"] = check_targets(rows, opts.preset)
    return result


def merge_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of a variant: median latencies and RTF, largest peak RSS."""
    # local: variant subprocesses import this package; the ORT and packed ones must not load torch
    import numpy as np

    out = dict(rows[0])
    if len(rows) > 1:
        for key in ("p50_ms", "p90_ms", "upl_ms", "rtf"):
            out[key] = float(np.median([r[key] for r in rows]))
            out[f"{key}_rounds"] = [r[key] for r in rows]
        for key in ("peak_rss_bytes", "stream_peak_rss_bytes"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            out[key] = max(vals) if vals else None
    out["rounds"] = len(rows)
    return out


def check_targets(rows: list[dict[str, Any]], preset: str) -> list[dict[str, Any]]:
    """The issue's targets, measured: weight bytes at b bits <= (b/8 + 0.03) x int8, and (paper-rnnt)
    4-bit p90 chunk latency <= 0.5 x the best int8 baseline's."""
    out: list[dict[str, Any]] = []
    for threads in sorted({r["threads"] for r in rows}):
        rs = [r for r in rows if r["threads"] == threads]
        int8 = {r["method"]: r for r in rs if r["method"] in ("torch-int8", "ort-int8")}
        sub = {r["bits"]: r for r in rs if r["method"] == "subbit"}
        refs = {"torch-int8": int8.get("torch-int8"), "subbit-8bit": sub.get(8)}
        for b, r in sorted(sub.items()):
            for ref_name, ref in refs.items():
                if ref is None or (ref_name == "subbit-8bit" and b == 8):
                    continue
                limit = (b / 8 + 0.03) * ref["weight_bytes"]
                out.append({"target": f"weight_bytes {b}-bit <= ({b}/8 + 0.03) x {ref_name}", "threads": threads,
                            "value": r["weight_bytes"], "limit": limit, "ratio": r["weight_bytes"] / ref["weight_bytes"],
                            "met": r["weight_bytes"] <= limit})
        if 4 in sub and int8:
            best = min(int8.values(), key=lambda r: r["p90_ms"])
            limit = 0.5 * best["p90_ms"]
            out.append({"target": f"p90 4-bit <= 0.5 x best int8 ({best['name']})", "threads": threads,
                        "value": sub[4]["p90_ms"], "limit": limit, "ratio": sub[4]["p90_ms"] / best["p90_ms"],
                        "met": sub[4]["p90_ms"] <= limit, "applies": preset == "paper-rnnt"})
    return out


def format_table(result: dict[str, Any]) -> str:
    """Aligned text table of the rows, the matvec figures and the targets."""
    lines = [f"{'variant':<18} {'bits':>4} {'thr':>3} {'p50 ms':>8} {'p90 ms':>8} {'UPL ms':>8} {'RTF':>6} "
             f"{'weights MB':>10} {'peak RSS MB':>11} {'stream RSS MB':>13}"]
    for r in result["rows"]:
        srss = r.get("stream_peak_rss_bytes")
        lines.append(
            f"{r['name']:<18} {r['bits']:>4} {r['threads']:>3} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
            f"{r['upl_ms']:>8.2f} {r['rtf']:>6.3f} {r['weight_bytes'] / 1e6:>10.2f} {r['peak_rss_bytes'] / 1e6:>11.1f} "
            f"{'-' if srss is None else f'{srss / 1e6:.1f}':>13}"
        )
    if result.get("matvec"):
        lines.append("")
        lines.append(f"{'matvec':<18} {'bits':>4} {'us':>9} {'GB/s':>7} {'read GB/s':>9} {'of read':>7}")
        for m in result["matvec"]:
            lines.append(f"{str(m['n']) + 'x' + str(m['k']):<18} {m['bits']:>4} {m['us']:>9.1f} {m['gbps']:>7.2f} "
                         f"{m['read_gbps']:>9.2f} {m['fraction_of_read']:>7.0%}")
    if result.get("targets"):
        lines.append("")
        for t in result["targets"]:
            flag = "met" if t["met"] else "MISSED"
            note = "" if t.get("applies", True) else " (target stated for paper-rnnt)"
            lines.append(f"[{flag}] thr={t['threads']} {t['target']}: {t['value']:.4g} vs limit {t['limit']:.4g} "
                         f"(ratio {t['ratio']:.3f}){note}")
    return "\n".join(lines)


__all__ = ["ALL_BITS", "BenchOptions", "PRESETS", "QUICK_BITS", "ROW_KEYS", "build_float_model", "check_targets",
           "export_gq", "format_table", "gq_quantized_tensors", "machine_info", "quick_options", "run_benchmark"]
