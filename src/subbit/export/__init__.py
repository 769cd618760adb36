"""subbit.export: the ``.subbit`` container (packed indices + codebooks + JSON manifest).

Write with :func:`export_model`; read with :func:`load_dequantized` (float state dict) or
:func:`load_packed` (packed tensors for :mod:`subbit.runtime`). docs/format.md is the spec.
"""

from subbit.export.bitpack import PACKING, PackedTensor, int8_codebook, pack, pack_rows, unpack, unpack_rows
from subbit.export.container import (
    ExportSummary,
    PackedModel,
    TensorBytes,
    codebook_table,
    export_model,
    load_dequantized,
    load_packed,
    read_container,
    write_packed,
)
from subbit.export.manifest import (
    FORMAT,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    SubbitFormatError,
    affine_table,
    find_affine,
)

__all__ = [
    "FORMAT", "PACKING", "SCHEMA_MINOR", "SCHEMA_VERSION", "ExportSummary", "PackedModel", "PackedTensor",
    "SubbitFormatError", "TensorBytes", "affine_table", "codebook_table", "export_model", "find_affine",
    "int8_codebook", "load_dequantized", "load_packed", "pack", "pack_rows", "read_container", "unpack",
    "unpack_rows", "write_packed",
]  # fmt: skip
