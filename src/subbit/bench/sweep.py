"""``subbit bench --sweep``: one architecture at widths whose int8 weights sit in L2, in L3 and
beyond L3 of this machine; libsubbit at each bit depth next to the int8 baselines, in one run.

The widths scale every width of a preset by one factor (depths, strides and chunking stay), on
multiples of 8 (the Conformer's ``d_model`` on multiples of ``8 * n_heads``). Their int8 bytes
are the torch.ao count (:func:`subbit.bench.torch_int8.torch_weight_bytes`) of the model built on
torch's ``meta`` device (no memory), and each band's width is the one closest (in log bytes) to
its target: ``L2 / 2``; the geometric mean of L2 and L3 (within ``[2 L2, L3 / 2]`` where that
range exists); ``4 L3``. Every target is capped at ``max_weight_mb``; a capped point that does
not leave L3 is reported as ``not beyond L3`` (never relabelled). Cache sizes come from sysfs at
run time (:mod:`subbit.bench.caches`).

Each point's models share the seed's random weights, with the blank's output bias raised by
``blank_bias``: greedy decoding then emits nothing in every variant, so each does the same work
per chunk (encoder + one joiner call per frame; the rows' ``tokens`` show it). libsubbit runs as
:class:`~subbit.bench.latency.VariantSpec` method ``libsubbit`` (the C session, no Python copy of
the weights); every variant is its own subprocess, ``rounds`` interleaved. Ratios are computed by
:func:`point_ratios` from the rows stored with them: time ratio = libsubbit / best int8 (by p90),
byte ratio = libsubbit's resident weight bytes / that int8 variant's.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from subbit.bench import PRESETS, machine_info, merge_rounds
from subbit.bench.caches import SYSFS_CACHE_DIR, format_bytes, read_cache_sizes

INT8_METHODS = ("torch-int8", "ort-int8")
INT8_NAMES = {"torch-int8": "int8-torch.ao", "ort-int8": "int8-onnxruntime"}
#: per architecture: the width every other width scales with, and the widths that scale
WIDTH_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rnnt": ("enc_hidden", ("enc_hidden", "enc_dim", "pred_embed", "pred_hidden", "joiner_dim")),
    "conformer": ("d_model", ("d_model", "pred_embed", "pred_hidden", "joiner_dim")),
}
BANDS = ("L2", "L3", "beyond L3")
SWEEP_BITS = (1, 2, 4, 8)
RATIO_TOLERANCE = 0.10  # the target: beyond L3, time ratio within 10% of the byte ratio


@dataclass
class SweepOptions:
    preset: str = "paper-rnnt"
    bits: tuple[int, ...] = SWEEP_BITS
    seconds: float = 10.0
    repeats: int = 2
    rounds: int = 3
    baselines: tuple[str, ...] = INT8_METHODS
    vocab_size: int = 256
    seed: int = 0
    max_weight_mb: float = 256.0  # cap on a point's int8 weight bytes (MB = 1e6 bytes)
    widths: tuple[int, ...] | None = None  # explicit widths instead of the three bands
    cache_dir: str = SYSFS_CACHE_DIR
    blank_bias: float = 30.0
    workdir: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS or PRESETS[self.preset][0] not in WIDTH_KEYS:
            ok = sorted(p for p, (a, _) in PRESETS.items() if a in WIDTH_KEYS)
            raise ValueError(f"sweep preset must be one of {ok}, got {self.preset!r}")
        if not self.bits:
            raise ValueError("bits: give at least one bit depth")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
                raise ValueError(f"bits: every entry must be an integer in 1..8, got {b!r}")
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"bits: repeated entries in {list(self.bits)}")
        if not (isinstance(self.max_weight_mb, (int, float)) and math.isfinite(self.max_weight_mb)
                and self.max_weight_mb > 0):
            raise ValueError(f"max_weight_mb must be a positive number, got {self.max_weight_mb!r}")
        if self.widths is not None:
            step = width_step(self.arch, self.preset)
            if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < step or w % step
                                      for w in self.widths):
                raise ValueError(f"widths: every entry must be a positive multiple of {step} "
                                 f"(the {WIDTH_KEYS[self.arch][0]} step), got {self.widths}")
        for name in ("repeats", "rounds", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "vocab_size" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds!r}")
        bad = [b for b in self.baselines if b not in INT8_METHODS]
        if bad or not self.baselines:
            raise ValueError(f"sweep baselines: one or more of {list(INT8_METHODS)} (the int8 reference), got "
                             f"{list(self.baselines)}")

    @property
    def arch(self) -> str:
        return PRESETS[self.preset][0]


# -- widths ------------------------------------------------------------------------------------
def _preset_config(preset: str, vocab_size: int) -> dict[str, Any]:
    # local: a torch-free import of this module (the CLI's --help) must stay possible
    from subbit.asr.models.presets import preset_config

    arch, size = PRESETS[preset]
    return preset_config(arch, size, vocab_size)


def width_step(arch: str, preset: str) -> int:
    """Widths are multiples of this: 8, or ``8 * n_heads`` for the Conformer's ``d_model``."""
    return 8 * int(_preset_config(preset, 2)["n_heads"]) if arch == "conformer" else 8


def scaled_overrides(preset: str, width: int, vocab_size: int = 256) -> dict[str, int]:
    """The model overrides that give ``preset`` the base width ``width``, the others scaled alike."""
    arch = PRESETS[preset][0]
    base_key, keys = WIDTH_KEYS[arch]
    cfg = _preset_config(preset, vocab_size)
    s = width / cfg[base_key]
    out = {k: max(8, 8 * round(cfg[k] * s / 8)) for k in keys}
    out[base_key] = int(width)
    return out


@lru_cache(maxsize=512)
def int8_weight_bytes(preset: str, width: int, vocab_size: int = 256) -> int:
    """torch.ao int8 weight bytes of ``preset`` at ``width``, from a model built on the meta device."""
    # local: torch only where models are built
    import torch

    from subbit.asr.models import build_model
    from subbit.bench.torch_int8 import torch_weight_bytes

    arch, size = PRESETS[preset]
    with torch.device("meta"):
        model = build_model(arch, size, vocab_size=vocab_size, **scaled_overrides(preset, width, vocab_size))
    return int(torch_weight_bytes(model, int8=True))


def band_of(nbytes: float, caches: dict[str, Any]) -> str:
    return "L2" if nbytes <= caches["L2"] else "L3" if nbytes <= caches["L3"] else "beyond L3"


def band_targets(caches: dict[str, Any]) -> dict[str, float]:
    """Target int8 bytes per band (module docstring)."""
    l2, l3 = float(caches["L2"]), float(caches["L3"])
    mid = math.sqrt(l2 * l3)
    if 2 * l2 <= l3 / 2:
        mid = min(max(mid, 2 * l2), l3 / 2)
    return {"L2": l2 / 2, "L3": mid, "beyond L3": 4 * l3}


def _candidate_widths(preset: str, target: float, vocab: int, step: int) -> tuple[int, int]:
    """The two multiples of ``step`` whose int8 bytes bracket ``target`` (both the smallest width
    when even that one is above it)."""
    size = lambda m: int8_weight_bytes(preset, m * step, vocab)  # noqa: E731
    lo, hi = 1, 2
    while size(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # size(lo) < target <= size(hi), or lo = 1 above target
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < target else (lo, mid)
    return lo * step, hi * step


def _pick_width(opts: SweepOptions, band: str, target: float, caches: dict[str, Any], cap: float, step: int) -> int:
    """Of the widths around ``min(target, cap)``: one inside ``band`` and the cap if any, nearest
    the target in log bytes; else the nearest under the cap; else the smallest width."""
    goal = min(target, cap)
    cands = sorted(set(_candidate_widths(opts.preset, goal, opts.vocab_size, step)))
    size = lambda w: int8_weight_bytes(opts.preset, w, opts.vocab_size)  # noqa: E731
    under = [w for w in cands if size(w) <= cap] or [cands[0]]
    inside = [w for w in under if band_of(size(w), caches) == band] or under
    return min(inside, key=lambda w: abs(math.log(size(w) / goal)))


def choose_points(opts: SweepOptions, caches: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per band (or per explicit width): width, int8 bytes, band, and notes."""
    cap = opts.max_weight_mb * 1e6
    step = width_step(opts.arch, opts.preset)
    points: list[dict[str, Any]] = []
    if opts.widths is not None:
        plan = [(None, None, w) for w in opts.widths]
    else:
        plan = []
        for band, target in band_targets(caches).items():
            plan.append((band, target, _pick_width(opts, band, target, caches, cap, step)))
    for band, target, width in plan:
        nbytes = int8_weight_bytes(opts.preset, width, opts.vocab_size)
        actual = band_of(nbytes, caches)
        notes = []
        if band is not None and actual != band:
            capped = target is not None and target > cap
            why = (f"capped by --max-weight-mb {opts.max_weight_mb:g}" if capped
                   else "no width of this architecture reaches it")
            notes.append(f"not {'beyond L3' if band == 'beyond L3' else 'in ' + band} ({why}): int8 weights "
                         f"{format_bytes(nbytes)}, L2 {format_bytes(caches['L2'])}, L3 {format_bytes(caches['L3'])}")
        same = [p for p in points if p["width"] == width]
        if same:  # two bands met at one width (small caches, or the cap): measured once
            same[0]["notes"].append(f"also the closest width for band {band or width}"
                                    + (f"; {'; '.join(notes)}" if notes else ""))
            continue
        points.append({"intended_band": band, "target_bytes": target, "width": width, "int8_bytes_estimate": nbytes,
                       "band": actual, "beyond_l3": actual == "beyond L3", "in_intended_band": band in (None, actual),
                       "overrides": scaled_overrides(opts.preset, width, opts.vocab_size), "notes": notes})
    if nbytes_max := max((p["int8_bytes_estimate"] for p in points), default=0):
        _check_memory(nbytes_max)
    return points


def _check_memory(int8_bytes: int) -> None:
    """Refuse a point whose fp32 model and its exports (about 12x its int8 bytes) exceed the
    memory available now."""
    try:
        text = Path("/proc/meminfo").read_text()
        avail = next(int(ln.split()[1]) * 1024 for ln in text.splitlines() if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    if 12 * int8_bytes > avail:
        raise ValueError(f"the largest point ({format_bytes(int8_bytes)} of int8 weights) needs about "
                         f"{format_bytes(12 * int8_bytes)} of memory, {format_bytes(avail)} available: "
                         f"lower --max-weight-mb")


# -- ratios ------------------------------------------------------------------------------------
def point_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per libsubbit row: time ratios (p50, p90) and byte ratio to the best int8 row (lowest p90),
    and to every int8 row; computed from the rows only."""
    int8 = [r for r in rows if r["method"] in INT8_METHODS]
    if not int8:
        raise ValueError("a sweep point needs an int8 row to compare with")
    best = min(int8, key=lambda r: r["p90_ms"])

    def ratios(r: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
        return {"time_ratio_p50": r["p50_ms"] / ref["p50_ms"], "time_ratio_p90": r["p90_ms"] / ref["p90_ms"],
                "byte_ratio": r["weight_bytes"] / ref["weight_bytes"]}

    out = []
    for r in sorted((r for r in rows if r["method"] == "libsubbit"), key=lambda r: r["bits"]):
        out.append({"bits": r["bits"], "name": r["name"], "best_int8": best["name"], **ratios(r, best),
                    "nominal_byte_ratio": r["bits"] / 8,
                    "per_baseline": {ref["name"]: ratios(r, ref) for ref in int8}})
    return out


def sweep_targets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Beyond L3: each bit depth's p90 time ratio within 10% of its byte ratio."""
    out = []
    for p in points:
        for q in p["ratios"]:
            rel = q["time_ratio_p90"] / q["byte_ratio"]
            out.append({"target": f"{q['bits']}-bit time ratio within {RATIO_TOLERANCE:.0%} of byte ratio",
                        "width": p["width"], "band": p["band"], "value": q["time_ratio_p90"],
                        "byte_ratio": q["byte_ratio"], "relative": rel, "met": abs(rel - 1) <= RATIO_TOLERANCE,
                        "applies": p["beyond_l3"]})
    return out


# -- the run -----------------------------------------------------------------------------------
def _point_specs(opts: SweepOptions, point: dict[str, Any], workdir: Path) -> list[Any]:
    """Write one point's artifacts (config JSON, int8 ONNX, one .subbit per bit depth); its variants."""
    # local: torch and the exporters only where the artifacts are written
    import json

    import torch

    from subbit.asr.models import build_model
    from subbit.bench import export_gq
    from subbit.bench.latency import VariantSpec, apply_blank_bias
    from subbit.bench.onnx_int8 import ort_available

    arch, size = PRESETS[opts.preset]
    torch.manual_seed(opts.seed)
    model = build_model(arch, size, vocab_size=opts.vocab_size, **point["overrides"]).eval()
    apply_blank_bias(model, opts.blank_bias)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "model-config.json"
    cfg_path.write_text(json.dumps(model.config))
    jobs: list[tuple[str, str, int, str]] = []
    if "torch-int8" in opts.baselines:
        jobs.append((INT8_NAMES["torch-int8"], "torch-int8", 8, str(cfg_path)))
    if "ort-int8" in opts.baselines:
        if ort_available():
            # local: onnx only when the ORT baseline runs
            from subbit.bench.onnx_export import export_onnx_int8

            export_onnx_int8(model, workdir / "ort-int8")
            jobs.append((INT8_NAMES["ort-int8"], "ort-int8", 8, str(workdir / "ort-int8")))
        else:
            point["notes"].append("onnxruntime/onnx not installed: no ort-int8 row")
    if not jobs:
        raise RuntimeError("no int8 baseline can run here (onnxruntime missing and torch-int8 not asked for)")
    for b in opts.bits:
        path = workdir / f"gq{b}.subbit"
        export_gq(model, int(b), path)
        jobs.append((f"libsubbit-{b}bit", "libsubbit", int(b), str(path)))
    del model
    extra = {"token_every": 0, "blank_bias": opts.blank_bias}
    return [VariantSpec(name=n, method=m, bits=b, threads=1, seconds=opts.seconds, path=p, seed=opts.seed,
                        repeats=opts.repeats, extra=dict(extra)) for n, m, b, p in jobs]


def run_sweep(opts: SweepOptions, progress: bool = True, caches: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep (module docstring); ``caches`` overrides what sysfs says (tests)."""
    # local: tqdm and the runtimes only when a sweep runs
    from tqdm import tqdm

    from subbit.bench.latency import run_in_subprocess
    from subbit.bench.record import provenance
    from subbit.runtime import native

    if not native.available():
        raise RuntimeError("libsubbit is not built: run `make runtime` (or `pip install -e .`) first")
    caches = dict(caches) if caches is not None else read_cache_sizes(opts.cache_dir)
    if caches.get("note"):
        print(f"note: {caches['note']}")
    points = choose_points(opts, caches)
    with tempfile.TemporaryDirectory(prefix="subbit-sweep-") as tmp:
        root = Path(opts.workdir) if opts.workdir else Path(tmp)
        bar = tqdm(points, desc="sweep points", unit="point", disable=not progress)
        for p in bar:
            bar.set_postfix_str(f"width {p['width']} ({p['band']}): export")
            specs = _point_specs(opts, p, root / f"w{p['width']}")
            runs: list[list[dict[str, Any]]] = [[] for _ in specs]
            for r in range(opts.rounds):  # interleaved: a change of load hits every variant alike
                for i, spec in enumerate(specs):
                    bar.set_postfix_str(f"width {p['width']} ({p['band']}): {spec.name} round {r + 1}/{opts.rounds}")
                    runs[i].append(run_in_subprocess(spec))
            p["rows"] = [merge_rounds(rs) for rs in runs]
            int8 = [r for r in p["rows"] if r["method"] in INT8_METHODS]
            p["int8_bytes"] = min(int8, key=lambda r: r["p90_ms"])["weight_bytes"]
            p["tokens"] = sorted({r["tokens"] for r in p["rows"]})
            if len(p["tokens"]) > 1:
                p["notes"].append(f"variants decoded different token counts {p['tokens']}: unequal decoding work")
            p["ratios"] = point_ratios(p["rows"])
    prov = provenance(__file__)
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()}
    return {"kind": "size-sweep", "arch": opts.arch, "machine": {**machine_info(), "cpu_name": prov["machine"]},
            "commit": prov["commit"], "command": prov["command"], "caches": caches, "options": options,
            "points": points, "targets": sweep_targets(points)}


def format_sweep(result: dict[str, Any]) -> str:
    """Aligned table: per point and bit depth, libsubbit and best int8 p50/p90, time and byte ratios."""
    c = result["caches"]
    lines = [f"caches ({c.get('source')}): L2 {format_bytes(c['L2'])}, L3 {format_bytes(c['L3'])}",
             f"{'width':>6} {'band':<9} {'int8 MB':>8} {'bits':>4} {'lib p50':>8} {'lib p90':>8} {'int8 p50':>8} "
             f"{'int8 p90':>8} {'t p50':>6} {'t p90':>6} {'bytes':>6}  best int8"]
    for p in result["points"]:
        rows = {r["name"]: r for r in p["rows"]}
        for q in p["ratios"]:
            r, ref = rows[q["name"]], rows[q["best_int8"]]
            lines.append(f"{p['width']:>6} {p['band']:<9} {p['int8_bytes'] / 1e6:>8.2f} {q['bits']:>4} "
                         f"{r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} {ref['p50_ms']:>8.3f} {ref['p90_ms']:>8.3f} "
                         f"{q['time_ratio_p50']:>6.3f} {q['time_ratio_p90']:>6.3f} {q['byte_ratio']:>6.3f}  "
                         f"{ref['name']}")
        for n in p["notes"]:
            lines.append(f"       note: {n}")
    for t in result["targets"]:
        if t["applies"]:
            lines.append(f"[{'met' if t['met'] else 'MISSED'}] width {t['width']}: {t['target']}: "
                         f"{t['value']:.3f} vs {t['byte_ratio']:.3f} (x{t['relative']:.2f})")
    if not any(t["applies"] for t in result["targets"]):
        lines.append("no point beyond L3: the beyond-L3 target is not measured by this run")
    return "\n".join(lines)


__all__ = ["BANDS", "SWEEP_BITS", "SweepOptions", "band_of", "band_targets", "choose_points", "format_sweep",
           "int8_weight_bytes", "point_ratios", "run_sweep", "scaled_overrides", "sweep_targets", "width_step"]
