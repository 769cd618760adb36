"""What an export wrote: bytes per tensor and totals, next to the same model in fp32 and int8."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TensorBytes:
    name: str
    kind: str  # "quantized" | "float" | "tokenizer"
    count: int
    bits: int | None
    stored: int  # bytes in the file (indices + codebook for quantized tensors): sizes.quantized_bytes
    theory: int  # quantized: ceil(N * b / 8) + codebook (sizes.ideal_quantized_bytes); else stored
    fp32: int  # sizes.fp32_bytes (tokenizer: as stored)
    int8: int  # quantized: sizes.int8_twin_bytes; float tensors: fp32; tokenizer: as stored
    codebook: str = "-"  # quantized: "table" (4 * G * 2**b bytes) or "affine" (4 * G bytes)


@dataclass
class ExportSummary:
    """Bytes per tensor and totals, next to the same model in fp32 and in int8.

    "int8" = every quantized weight at one byte plus an fp32 scale per output channel, float
    tensors in fp32 (what an 8-bit per-channel export of the same model would hold); every
    count comes from :mod:`subbit.sizes`.
    """

    path: str
    file_bytes: int
    header_bytes: int
    tensors: list[TensorBytes] = field(default_factory=list)

    def total(self, column: str, kind: str | None = None) -> int:
        """Sum of one :class:`TensorBytes` column over the tensors (of one ``kind``, or all)."""
        return sum(getattr(t, column) for t in self.tensors if kind is None or t.kind == kind)

    @property
    def theory_bytes(self) -> int:
        """sum ceil(N * b / 8) + codebooks + float tensors + tokenizer + header."""
        return self.total("theory") + self.header_bytes

    @property
    def fp32_bytes(self) -> int:
        """The same model with every tensor in fp32 (the tokenizer as stored)."""
        return self.total("fp32")

    @property
    def int8_bytes(self) -> int:
        """The same model with its quantized weights at int8 per channel, floats in fp32."""
        return self.total("int8")

    @property
    def quantized_bytes(self) -> int:
        """Indices and codebooks of the quantized tensors, as stored."""
        return self.total("stored", "quantized")

    def __str__(self) -> str:
        rows = [f"{'tensor':<44} {'kind':<9} {'bits':>4} {'params':>10} {'bytes':>10} {'fp32':>10} {'int8':>10}"]
        for t in self.tensors:
            bits = "-" if t.bits is None else str(t.bits)
            rows.append(f"{t.name[:44]:<44} {t.kind:<9} {bits:>4} {t.count:>10} {t.stored:>10} {t.fp32:>10} {t.int8:>10}")
        params = sum(t.count for t in self.tensors if t.kind != "tokenizer")
        rows.append(f"{'total (tensors)':<44} {'':<9} {'':>4} {params:>10} {self.total('stored'):>10} "
                    f"{self.fp32_bytes:>10} {self.int8_bytes:>10}")  # fmt: skip
        rows.append(
            f"file {self.path}: {self.file_bytes} bytes (header {self.header_bytes}; theory {self.theory_bytes}, "
            f"{100.0 * (self.file_bytes / max(self.theory_bytes, 1) - 1):+.2f}%); "
            f"fp32 model / file = {self.fp32_bytes / max(self.file_bytes, 1):.2f}x, "
            f"int8 model / file = {self.int8_bytes / max(self.file_bytes, 1):.2f}x"
        )
        return "\n".join(rows)
