"""A validated ``.subbit`` file as what its users want: packed tensors for the runtime
(:func:`load_packed`) or a float state dict under the original names (:func:`load_dequantized`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from subbit.export.bitpack import PackedTensor, int8_codebook
from subbit.export.manifest import IDX_SUFFIX, TOKENIZER_TENSOR
from subbit.export.reader import codebook_table, read_container


@dataclass
class PackedModel:
    """A loaded ``.subbit`` file for the runtime: quantized tensors stay packed."""

    manifest: dict[str, Any]
    packed: dict[str, PackedTensor]
    floats: dict[str, np.ndarray]
    tokenizer_bytes: bytes | None

    @property
    def arch(self) -> dict[str, Any]:
        return self.manifest["arch"]


def load_packed(path: str | os.PathLike[str]) -> PackedModel:
    """Validated packed tensors, float tensors (float32) and tokenizer bytes of a ``.subbit`` file."""
    manifest, arrays = read_container(path)
    packed = {}
    for name, q in manifest["quantized"].items():
        packed[name] = PackedTensor(
            bits=q["bits"], shape=tuple(q["shape"]), packed=arrays[name + IDX_SUFFIX],
            codebook=codebook_table(q, arrays, name), groups=q["groups"], granularity=q["granularity"],
            method=q["method"], mu=q["mu"],
        )  # fmt: skip
    floats = {n: (arrays[n].astype(np.float32) if manifest["float"][n]["dtype"] == "F16" else arrays[n])
              for n in manifest["float"]}  # fmt: skip
    tok = bytes(arrays[TOKENIZER_TENSOR].tobytes()) if manifest["tokenizer"] is not None else None
    return PackedModel(manifest, packed, floats, tok)


def load_dequantized(path: str | os.PathLike[str], *, codebook: str = "float") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(manifest, state_dict)`` of plain torch tensors under the original parameter names.

    ``codebook="float"`` gives the converted training model's weights exactly;
    ``codebook="int8"`` gives the deployed weights the kernels compute with (int8-rounded table).
    """
    # local: the runtime loads files through subbit.export (load_packed), which must not import torch
    import torch

    if codebook not in ("float", "int8"):
        raise ValueError(f"codebook must be 'float' or 'int8', got {codebook!r}")
    pm = load_packed(path)
    state: dict[str, Any] = {}
    for name, pt in pm.packed.items():
        if codebook == "float":
            w = pt.dequantize()
        else:
            lut, scales = int8_codebook(pt)
            flat = pt.indices().reshape(pt.groups, -1)
            w = (np.take_along_axis(lut.astype(np.float32), flat, axis=1) * scales[:, None]).reshape(pt.shape)
        state[name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    for name, arr in pm.floats.items():  # (np.ascontiguousarray would make a 0-d tensor 1-D)
        state[name] = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy())
    return pm.manifest, state
