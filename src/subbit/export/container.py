"""Write ``.subbit`` files: a safetensors file with packed indices and a JSON manifest.

:func:`export_model` takes a model prepared with :mod:`subbit.quant` (or an explicit list of
quantized tensors) and writes, per quantized tensor, ``<name>.idx`` (U8, packed rows) and
``<name>.codebook`` (F32 ``[G, 2**bits]``), or, when that table is bit for bit
``step[g] * (j - z)`` (uniform grids), only ``<name>.codebook_step`` (F32 ``[G]``) and ``z`` in
the manifest; every other state-dict tensor as it is (F32, or F16 with ``fp16_float_tensors``);
the tokenizer as a U8 tensor. The header is written by hand (:mod:`subbit.export.framing`) so
that the sha256 of the data section can go into the manifest; ``safetensors.safe_open`` reads
the result. The writer parses its own bytes with the loader's checks before it writes, so it
never writes a file its loader refuses.

The rest of the container lives next to this module and is re-exported here, so
``from subbit.export.container import X`` keeps working: :mod:`~subbit.export.reader`
(``read_container``, ``parse_container``, ``codebook_table``), :mod:`~subbit.export.loading`
(``load_packed``, ``load_dequantized``, ``PackedModel``), :mod:`~subbit.export.summary`
(``ExportSummary``, ``TensorBytes``) and :mod:`~subbit.export.framing` (``seal_header``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from subbit import sizes
from subbit.export.bitpack import PackedTensor, matrix_rows
from subbit.export.framing import DTYPES, safetensors_bytes, seal_header
from subbit.export.loading import PackedModel, load_dequantized, load_packed
from subbit.export.manifest import (
    CODEBOOK_SUFFIX,
    IDX_SUFFIX,
    STEP_SUFFIX,
    TOKENIZER_TENSOR,
    SubbitFormatError,
    build_manifest,
    quant_entry,
)
from subbit.export.reader import codebook_table, parse_container, read_container
from subbit.export.summary import ExportSummary, TensorBytes
from subbit.sizes import find_affine

#: the old private name, kept for the tests and the fuzz harness that build raw files with it
_safetensors_bytes = safetensors_bytes

__all__ = [
    "ExportSummary", "PackedModel", "TensorBytes", "codebook_table", "encode_quantized", "export_model",
    "load_dequantized", "load_packed", "parse_container", "read_container", "seal_header", "write_packed",
]  # fmt: skip


def _quantized_from_model(model: Any) -> list[Any]:
    # local: the runtime loads files through subbit.export, which must not import torch
    from subbit.quant import quantized_tensors

    return list(quantized_tensors(model))


def _mu_of(quantizer: Any) -> float | list[float] | None:
    mu = getattr(quantizer, "mu", None)
    if mu is None:
        return None
    arr = np.asarray(mu.detach().cpu().numpy() if hasattr(mu, "detach") else mu, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return None
    return float(arr[0]) if arr.size == 1 else [float(v) for v in arr]


def encode_quantized(qt: Any) -> PackedTensor:
    """Pack one ``QuantizedTensor`` (name, module, param_name, quantizer, latent) via ``encode``."""
    # local: the runtime loads files through subbit.export, which must not import torch
    import torch

    q = qt.quantizer
    with torch.no_grad():
        idx, cb = q.encode(qt.latent)
    idx_np = idx.detach().cpu().numpy()
    cb_np = cb.detach().to(torch.float32).cpu().numpy()
    if tuple(idx_np.shape) != tuple(qt.latent.shape):
        raise ValueError(f"{qt.name}: encode returned indices of shape {idx_np.shape}, weight is {tuple(qt.latent.shape)}")
    try:
        pt = PackedTensor.from_indices(idx_np, cb_np, int(q.bits), granularity=str(q.granularity),
                                       method=str(getattr(q, "method", "")), mu=None)  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"{qt.name}: {exc}") from None
    if not np.all(np.isfinite(cb_np)):
        raise ValueError(f"{qt.name}: codebook has non-finite values")
    expected_groups = idx_np.shape[0] if pt.granularity == "channel" else 1
    if pt.groups != expected_groups:
        raise ValueError(f"{qt.name}: {pt.granularity} granularity needs {expected_groups} codebooks, got {pt.groups}")
    pt.mu = _mu_of(q)
    return pt


def _float_state(model: Any, quantized: list[Any]) -> dict[str, Any]:
    """State-dict tensors that are not quantized weights nor quantizer internals, by original name.

    A tied kernel's quantizer sits under every owner in ``state_dict()`` (which does not drop
    shared modules), so every path to it is skipped, not only the first one ``named_modules`` gives.
    """
    # local: the runtime loads files through subbit.export, which must not import torch
    from subbit.quant.base import WeightQuantizer

    qnames = {qt.name for qt in quantized}
    latent_ptrs = {qt.latent.data_ptr() for qt in quantized}
    owners = [name + "." for name, mod in model.named_modules(remove_duplicate=False)
              if isinstance(mod, WeightQuantizer) and name]  # fmt: skip
    out: dict[str, Any] = {}
    for key, t in model.state_dict().items():
        if any(key.startswith(p) for p in owners) or (t.numel() and t.data_ptr() in latent_ptrs):
            continue
        name = _original_name(key)
        if name in qnames or name in out:
            continue
        out[name] = t
    return out


def _original_name(key: str) -> str:
    """``a.parametrizations.weight.original`` (torch parametrize) -> ``a.weight``."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] in ("original", "original0") and parts[-3] == "parametrizations":
        return ".".join(parts[:-3] + [parts[-2]])
    return key


def _float_record(t: Any, fp16: bool) -> tuple[str, np.ndarray]:
    # local: the runtime loads files through subbit.export, which must not import torch
    import torch

    t = t.detach().cpu()
    if t.is_floating_point():
        if fp16:
            return "F16", t.to(torch.float16).numpy()
        return "F32", t.to(torch.float32).numpy()
    if t.dtype == torch.bool:
        return "BOOL", t.numpy()
    if t.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        return "I32", t.to(torch.int32).numpy()
    if t.dtype == torch.int64:
        return "I64", t.numpy()
    raise ValueError(f"cannot export a tensor of dtype {t.dtype}")


def export_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    arch: dict[str, Any],
    tokenizer_bytes: bytes | None = None,
    fp16_float_tensors: bool = False,
    extra: dict[str, Any] | None = None,
    quantized: Iterable[Any] | None = None,
    tokenizer_kind: str = "bytes",
    compact_codebooks: bool = True,
) -> ExportSummary:
    """Write ``model`` (prepared/converted with :mod:`subbit.quant`) to a ``.subbit`` file.

    ``quantized`` defaults to ``subbit.quant.quantized_tensors(model)``. ``arch`` (the model
    config) and ``extra`` must be JSON-serialisable. The file is written to a temporary name
    and renamed, so a failed export leaves no half file. ``compact_codebooks=False`` writes
    every codebook as a full table; the file is still of the current format, 1.2.
    """
    if not isinstance(arch, dict):
        raise ValueError(f"arch must be a dict (the model config), got {type(arch).__name__}")
    qts = _quantized_from_model(model) if quantized is None else list(quantized)
    packed = {qt.name: encode_quantized(qt) for qt in qts}
    floats = {name: _float_record(t, fp16_float_tensors) for name, t in _float_state(model, qts).items()}
    return write_packed(path, packed, floats, arch=arch, tokenizer_bytes=tokenizer_bytes, extra=extra,
                        tokenizer_kind=tokenizer_kind, compact_codebooks=compact_codebooks)  # fmt: skip


def write_packed(
    path: str | os.PathLike[str],
    packed: dict[str, PackedTensor],
    floats: dict[str, tuple[str, np.ndarray]],
    *,
    arch: dict[str, Any],
    tokenizer_bytes: bytes | None = None,
    extra: dict[str, Any] | None = None,
    tokenizer_kind: str = "bytes",
    compact_codebooks: bool = True,
) -> ExportSummary:
    """Write already packed tensors and ``{name: (dtype, array)}`` float tensors.

    ``compact_codebooks``: store a codebook that :func:`subbit.sizes.find_affine`
    proves bit-exact as one step per group (False: always the full table; the file is still of
    the current format version, 1.2, with ``codebook: "table"`` entries).

    Refused (ValueError), before anything is written: a quantized tensor with shape ``[]`` or a
    zero dimension, ``channel`` granularity on a 1-D tensor, a ``mu`` list whose length is not
    the group count, and anything else the loader would refuse (the finished bytes are parsed
    with the loader's checks before they are written).
    """
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    rows: list[TensorBytes] = []
    for name, pt in packed.items():
        if any(name + sfx in floats for sfx in ("", IDX_SUFFIX, CODEBOOK_SUFFIX, STEP_SUFFIX)):
            raise ValueError(f"tensor name {name!r} collides with a float tensor")
        if not pt.shape or 0 in tuple(pt.shape):
            raise ValueError(f"{name}: a quantized tensor needs a non-empty shape without zero dimensions, "
                             f"got {list(pt.shape)}")  # fmt: skip
        if pt.granularity == "channel" and len(pt.shape) < 2:
            raise ValueError(f"{name}: 'channel' granularity needs a weight of 2 or more dimensions, got shape "
                             f"{list(pt.shape)}: use 'tensor'")  # fmt: skip
        if isinstance(pt.mu, list) and len(pt.mu) != pt.groups:
            raise ValueError(f"{name}: mu has {len(pt.mu)} values for {pt.groups} groups")
        n, _ = matrix_rows(pt.shape)
        tensors[name + IDX_SUFFIX] = ("U8", np.asarray(pt.packed, dtype=np.uint8).reshape(n, -1))
        cb = np.asarray(pt.codebook, dtype=np.float32)
        affine = find_affine(cb) if compact_codebooks else None
        if affine is None:
            tensors[name + CODEBOOK_SUFFIX] = ("F32", cb)
            qmeta[name] = quant_entry(pt.bits, pt.shape, pt.groups, pt.granularity, pt.method, pt.mu)
        else:
            tensors[name + STEP_SUFFIX] = ("F32", affine[0])
            qmeta[name] = quant_entry(pt.bits, pt.shape, pt.groups, pt.granularity, pt.method, pt.mu,
                                      zero_index=affine[1])  # fmt: skip
        kind = qmeta[name]["codebook"]
        rows.append(TensorBytes(name, "quantized", pt.count, pt.bits,
                                sizes.quantized_bytes(pt.shape, pt.bits, pt.groups, kind),
                                sizes.ideal_quantized_bytes(pt.count, pt.bits, pt.groups, kind),
                                sizes.fp32_bytes(pt.count), sizes.int8_twin_bytes(pt.shape), kind))  # fmt: skip
    fmeta: dict[str, dict[str, Any]] = {}
    for name, (dtype, arr) in floats.items():
        if dtype not in DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
        tensors[name] = (dtype, arr)
        fmeta[name] = {"dtype": dtype, "shape": [int(s) for s in arr.shape]}
        nbytes = sizes.float_bytes(int(arr.size), dtype)
        fp32 = sizes.fp32_bytes(int(arr.size))
        rows.append(TensorBytes(name, "float", int(arr.size), None, nbytes, nbytes, fp32, fp32))
    tok = None
    if tokenizer_bytes is not None:
        tb = np.frombuffer(bytes(tokenizer_bytes), dtype=np.uint8)
        tensors[TOKENIZER_TENSOR] = ("U8", tb)
        tok = {"kind": str(tokenizer_kind), "nbytes": int(tb.size)}
        rows.append(TensorBytes(TOKENIZER_TENSOR, "tokenizer", int(tb.size), None, tb.size, tb.size, tb.size, tb.size))

    def metadata_for(sha: str) -> dict[str, str]:
        m = build_manifest(arch=arch, quantized=qmeta, floats=fmeta, tokenizer=tok, data_sha256=sha, extra=extra)
        try:
            return {"subbit": json.dumps(m, sort_keys=True, allow_nan=False, separators=(",", ":"))}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arch/extra must be JSON-serialisable (finite numbers): {exc}") from None

    blob, header_bytes = safetensors_bytes(tensors, metadata_for)
    try:  # the writer never produces a file its own loader refuses
        parse_container(blob, copy=False)
    except SubbitFormatError as exc:
        raise ValueError(f"refusing to write {path}: the loader would refuse it: {exc}") from None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return ExportSummary(str(path), len(blob), header_bytes, rows)
