"""The three sizes of a comparison row: theoretical, deployed, and the written ``.subbit`` file.

Every byte count comes from :mod:`subbit.sizes`; the file size is the exporter's, read back
through the validating loader (:func:`subbit.runs.export_with_extra`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

import subbit.quant as sq
from subbit import sizes
from subbit.runs import LoadedRun, export_with_extra

log = logging.getLogger(__name__)


def theory_sizes(model: torch.nn.Module) -> tuple[float, int, list[dict[str, Any]]]:
    """(mean bits per quantized weight, theoretical packed bytes, per-tensor report rows).

    Theoretical: :func:`subbit.quant.report` bytes (``ceil(N * b / 8)`` indices + the codebooks the
    file stores, :mod:`subbit.sizes`) + float parameters."""
    if not sq.is_prepared(model):
        return 32.0, sizes.fp32_bytes(sum(p.numel() for p in model.parameters())), []
    rep = sq.report(model)
    n = sum(r.numel for r in rep.rows)
    bits = sum(r.bits * r.numel for r in rep.rows) / n if n else 32.0
    return bits, rep.quantized_bytes + rep.float_bytes, rep.to_dict()["rows"]


def deploy_bytes(model: torch.nn.Module) -> int:
    """Packed indices + codebooks + float parameters, as a ``.subbit`` file stores them.

    Every count is :mod:`subbit.sizes`: indices in the file's row layout
    (:func:`~subbit.sizes.index_bytes`), a codebook that is bit-exactly evenly spaced
    (:func:`~subbit.sizes.find_affine`: uniform QAT and PTQ grids) as one fp32 step per group,
    any other as its ``2**bits`` fp32 entries per group. This is what an int8/intN deployment of a
    uniform method costs, which a table of fp32 codebooks overstates (256 fp32 entries per output
    channel at 8 bits). Header and tokenizer are not counted.
    """
    if not sq.is_prepared(model):
        return sizes.fp32_bytes(sum(p.numel() for p in model.parameters()))
    total = sq.report(model).float_bytes
    with torch.no_grad():
        for qt in sq.quantized_tensors(model):
            q = qt.quantizer
            _, cb = q.encode(qt.latent.detach())
            cb_np = cb.detach().to(torch.float32).cpu().numpy()
            total += sizes.quantized_bytes(tuple(qt.latent.shape), q.bits, cb_np.shape[0], sizes.codebook_kind(cb_np))
    return total


def export_size(loaded: LoadedRun, path: Path, recipe: str) -> int | None:
    """Write the loaded model (moved to the CPU) as a .subbit file; its size in bytes, or None
    when the exporter refuses it (the row then falls back to the theoretical size)."""
    loaded.model.cpu()
    try:
        summary = export_with_extra(loaded, path, extra={"recipe": recipe, "features": loaded.config.get("features")})
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        log.warning("%s: export failed (%s); using the theoretical size", recipe, exc)
        return None
    return int(summary.file_bytes)
