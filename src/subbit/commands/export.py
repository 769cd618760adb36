"""``subbit export``: write a trained run as a bit-packed ``.subbit`` file and print what it cost."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run as a bit-packed .subbit file",
        description="Pack a run's quantized weights (indices at their bit depth + codebooks), keep the other "
        "tensors in float, add the tokenizer and the model config; print bytes per tensor vs fp32 and int8.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (made by `subbit train` / `subbit quantize`)")
    p.add_argument("--out", required=True, help="output file, e.g. model.subbit")
    p.add_argument("--fp16", action="store_true", help="store the unquantized float tensors in fp16")
    p.add_argument("--which", choices=("final", "last", "best"), default="final",
                   help="weights to export: final.pt (default, converted) or a training checkpoint")  # fmt: skip
    p.add_argument("--json", dest="json_out", help="also write the size summary as JSON here")
    p.set_defaults(func=run)


def export_run(run: str | Path, out: str | Path, which: str = "final", fp16: bool = False) -> Any:
    """Export a run's model to ``out`` and read it back through the validating loader.

    Returns the exporter's summary; shared by ``subbit export`` and ``subbit demo``.
    """
    from subbit.asr.checkpoint import load_run
    from subbit.export import export_model, load_packed

    loaded = load_run(run, which=which)
    if not loaded.quantized:
        log.warning("%s is an fp32 run: every tensor is stored in float (nothing to pack)", run)
    elif not loaded.converted:
        log.warning("%s (%s) is not converted: exporting the hard assignment of a soft model", run, which)
    model = loaded.model
    arch = getattr(model, "config", None)
    arch = dict(arch) if isinstance(arch, dict) else dict(loaded.config.get("model", {}))
    extra = {
        "features": loaded.config.get("features"),
        "quant": loaded.config.get("quant"),
        "source": {"run": str(Path(run).resolve()), "which": which},
    }
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    summary = export_model(
        model, out, arch=arch, tokenizer_bytes=loaded.tokenizer.to_bytes(), fp16_float_tensors=fp16,
        extra=extra, tokenizer_kind=str(getattr(loaded.tokenizer, "kind", "bytes")),
    )  # fmt: skip
    load_packed(out)  # read it back before saying it is done
    return summary


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    summary = export_run(args.run, out, which=args.which, fp16=args.fp16)
    print(summary)
    if args.json_out:
        data = {
            "file": str(out), "file_bytes": summary.file_bytes, "header_bytes": summary.header_bytes,
            "theory_bytes": summary.theory_bytes, "fp32_bytes": summary.fp32_bytes, "int8_bytes": summary.int8_bytes,
            "tensors": [vars(t) for t in summary.tensors],
        }  # fmt: skip
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n")
    return 0
