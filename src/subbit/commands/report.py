"""``subbit report``: what each tensor of a run or a ``.subbit`` file costs, in bits and bytes.

For a run directory the numbers come from :func:`subbit.quant.report` (method, bits, groups, tau,
hardness, weight RMSE, packed bytes per quantized tensor); for a ``.subbit`` file from its
validated manifest and payload (bits, shape, bytes actually stored). Totals are set against the
same model in fp32 (4 bytes per parameter) and int8 (1 byte per quantized weight + one fp32
scale per output channel; other tensors in fp32, the tokenizer as stored); both twins are
counted by :mod:`subbit.sizes`, as in ``subbit export``'s summary.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from subbit.commands._options import add_json_out, add_which, verb_parser


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "report", run,
        help="per-tensor bits, bytes and quantization state of a run or a .subbit file",
        description="""TARGET is a run directory (quantization report of its model) or a .subbit file (its
        manifest); prints every tensor and the totals vs fp32 and int8.""",
    )
    p.add_argument("target", metavar="TARGET", help="run directory or .subbit file")
    add_which(p, "run weights: final.pt (default; falls back to last) or a training checkpoint")
    add_json_out(p, "write the report as JSON here")
    p.add_argument("--plot", help="write a PNG of bits and bytes per tensor here")


def _totals(tensors: list[dict[str, Any]], stored_total: int) -> dict[str, Any]:
    """Sums over the rows; fp32 and int8 twins from :mod:`subbit.sizes` (float tensors in fp32 in
    both), the non-weight bytes (tokenizer) kept as they are."""
    from subbit import sizes

    q = [t for t in tensors if t["kind"] == "quantized"]
    weights = [t for t in tensors if t["kind"] != "tokenizer"]
    qn = sum(t["numel"] for t in q)
    floats = sum(t["bytes"] for t in tensors if t["kind"] == "float")
    other = sum(t["bytes"] for t in tensors if t["kind"] == "tokenizer")
    fp32 = sum(sizes.fp32_bytes(t["numel"]) for t in weights) + other
    int8 = (sum(sizes.int8_bytes(t["numel"], t["rows"]) for t in q)
            + sum(sizes.fp32_bytes(t["numel"]) for t in weights if t["kind"] == "float") + other)  # fmt: skip
    return {
        "tensors": len(weights), "quantized_tensors": len(q), "params": sum(t["numel"] for t in weights),
        "quantized_params": qn, "mean_bits": (sum(t["bits"] * t["numel"] for t in q) / qn) if qn else None,
        "quantized_bytes": sum(t["bytes"] for t in q), "float_bytes": floats, "other_bytes": other,
        "total_bytes": stored_total, "fp32_bytes": fp32, "int8_bytes": int8,
        "vs_fp32": stored_total / fp32 if fp32 else None, "vs_int8": stored_total / int8 if int8 else None,
    }  # fmt: skip


def report_run(run_dir: str | Path, which: str = "final") -> dict[str, Any]:
    """Per-tensor rows of a run's model (quantized or fp32) and totals."""
    import subbit.quant as sq
    from subbit import sizes
    from subbit.asr.checkpoint import RunPaths
    from subbit.runs import load_run

    paths = RunPaths(Path(run_dir))
    if which == "final" and not paths.final.is_file() and paths.last.is_file():
        which = "last"
    loaded = load_run(run_dir, which=which)
    model = loaded.model
    tensors: list[dict[str, Any]] = []
    if loaded.quantized:
        rep = sq.report(model)
        rows_of = {qt.name: sizes.rows_of(qt.latent.shape) for qt in sq.quantized_tensors(model)}
        for r in rep.rows:
            tensors.append({"name": r.name, "kind": "quantized", "method": r.method, "bits": r.bits,
                            "groups": r.groups, "numel": r.numel, "rows": rows_of.get(r.name, 1), "tau": r.tau,
                            "hardness": r.hardness, "rmse": r.rmse, "bytes": r.packed_bytes})
    for name, p in model.named_parameters():
        if ".subbit_quant." in f".{name}":
            continue
        tensors.append({"name": name, "kind": "float", "method": "float", "bits": None, "groups": None,
                        "numel": p.numel(), "rows": int(p.shape[0]) if p.dim() else 1, "tau": None,
                        "hardness": None, "rmse": None, "bytes": p.numel() * p.element_size()})
    total = sum(t["bytes"] for t in tensors)
    return {"kind": "run", "target": str(run_dir), "which": which, "quantized": loaded.quantized,
            "converted": loaded.converted, "tensors": tensors, "totals": _totals(tensors, total)}


def report_subbit(path: str | Path) -> dict[str, Any]:
    """Per-tensor rows of a ``.subbit`` file from its validated manifest and payload."""
    from subbit import sizes
    from subbit.export.container import read_container
    from subbit.export.manifest import CODEBOOK_SUFFIX, IDX_SUFFIX, STEP_SUFFIX, TOKENIZER_TENSOR

    manifest, arrays = read_container(path)
    tensors: list[dict[str, Any]] = []
    for name, q in manifest["quantized"].items():
        # a codebook is stored either as a table or, when evenly spaced, as one step per group
        parts = (IDX_SUFFIX, CODEBOOK_SUFFIX, STEP_SUFFIX)
        nbytes = sum(int(arrays[name + sfx].nbytes) for sfx in parts if name + sfx in arrays)
        tensors.append({"name": name, "kind": "quantized", "method": q["method"], "bits": q["bits"],
                        "groups": q["groups"], "shape": list(q["shape"]), "numel": q["count"],
                        "rows": sizes.rows_of(q["shape"]), "mu": q.get("mu"), "bytes": nbytes})
    for name, f in manifest["float"].items():
        arr = arrays[name]
        tensors.append({"name": name, "kind": "float", "method": f["dtype"], "bits": None, "groups": None,
                        "shape": list(f["shape"]), "numel": int(arr.size),
                        "rows": int(f["shape"][0]) if f["shape"] else 1, "bytes": int(arr.nbytes)})
    if manifest.get("tokenizer") is not None and TOKENIZER_TENSOR in arrays:
        tb = arrays[TOKENIZER_TENSOR]
        tensors.append({"name": TOKENIZER_TENSOR, "kind": "tokenizer", "method": "bytes", "bits": None,
                        "groups": None, "shape": [int(tb.size)], "numel": int(tb.size), "rows": 1,
                        "bytes": int(tb.nbytes)})
    file_bytes = Path(path).stat().st_size
    totals = _totals(tensors, file_bytes)
    totals["payload_bytes"] = sum(t["bytes"] for t in tensors)
    return {"kind": "subbit", "target": str(path), "arch": manifest.get("arch"), "tensors": tensors,
            "totals": totals}


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec) if spec else str(v)


def format_report(rep: dict[str, Any]) -> str:
    """An aligned table with one line per tensor, then the totals."""
    if rep["kind"] == "run":
        head = ["tensor", "method", "bits", "groups", "numel", "tau", "hardness", "rmse", "bytes"]
        body = [[t["name"], t["method"], _fmt(t["bits"]), _fmt(t["groups"]), str(t["numel"]), _fmt(t["tau"], ".3g"),
                 _fmt(t["hardness"], ".4f"), _fmt(t["rmse"], ".3g"), str(t["bytes"])] for t in rep["tensors"]]
    else:
        head = ["tensor", "kind", "method", "bits", "shape", "groups", "bytes"]
        body = [[t["name"], t["kind"], t["method"], _fmt(t["bits"]), "x".join(map(str, t["shape"])),
                 _fmt(t["groups"]), str(t["bytes"])] for t in rep["tensors"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    t = rep["totals"]
    what = "file" if rep["kind"] == "subbit" else "model"
    state = "" if rep["kind"] == "subbit" else (
        " (fp32 run)" if not rep["quantized"] else ("" if rep["converted"] else " (not converted: soft weights)"))
    out.append(
        f"{rep['target']}{state}: {t['params']} params, {t['quantized_params']} quantized in "
        f"{t['quantized_tensors']} tensors (mean {_fmt(t['mean_bits'], '.2f')} bits)"
    )
    out.append(
        f"{what}: {t['total_bytes']} B (quantized {t['quantized_bytes']} B, float {t['float_bytes']} B"
        + (f", tokenizer {t['other_bytes']} B" if t["other_bytes"] else "")
        + (f", header {t['total_bytes'] - t['payload_bytes']} B" if "payload_bytes" in t else "") + "); "
        f"fp32 {t['fp32_bytes']} B -> {_fmt(t['vs_fp32'], '.3f')} of fp32 "
        f"({_fmt(t['fp32_bytes'] / t['total_bytes'] if t['total_bytes'] else None, '.2f')}x smaller); "
        f"int8 {t['int8_bytes']} B -> {_fmt(t['vs_int8'], '.3f')} of int8"
    )
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.is_dir():
        rep = report_run(target, args.which)
    elif target.is_file():
        rep = report_subbit(target)
    else:
        raise FileNotFoundError(f"TARGET: {target} is neither a run directory nor a .subbit file")
    print(format_report(rep))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=2) + "\n")
    if args.plot:
        from subbit.experiments.plots import plot_layers

        ts = [t for t in rep["tensors"] if t["kind"] != "tokenizer"]
        path = plot_layers([t["name"] for t in ts], [t["bits"] for t in ts], [t["bytes"] for t in ts], args.plot,
                           title=f"{Path(rep['target']).name}: bits and bytes per tensor")
        print(f"plot: {path}")
    return 0
