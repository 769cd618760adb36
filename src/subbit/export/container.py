"""Write and read ``.subbit`` files: a safetensors file with packed indices and a JSON manifest.

Writing: :func:`export_model` takes a model prepared with :mod:`subbit.quant` (or an explicit
list of quantized tensors) and writes, per quantized tensor, ``<name>.idx`` (U8, packed rows)
and ``<name>.codebook`` (F32 ``[G, 2**bits]``), or, when that table is bit for bit
``step[g] * (j - z)`` (uniform grids), only ``<name>.codebook_step`` (F32 ``[G]``) and ``z`` in
the manifest; every other state-dict tensor as it is (F32,
or F16 with ``fp16_float_tensors``); the tokenizer as a U8 tensor. The header is written by
hand (the safetensors format is 8 bytes of length + JSON + data) so that the sha256 of the data
section can go into the manifest; ``safetensors.safe_open`` reads the result.

Reading: :func:`read_container` parses the header itself with bounds checks, checks every size
against the file length, streams the data digest and maps the data section (copy-on-write)
instead of reading it; it never unpickles. :func:`load_dequantized` gives a float state dict,
:func:`load_packed` the packed tensors for the runtime. Anything wrong raises
:class:`SubbitFormatError`. The writer parses its own bytes with the same checks before it
writes, so it never writes a file its loader refuses.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subbit import sizes
from subbit.export.bitpack import (
    BLOCK,
    PackedTensor,
    int8_codebook,
    matrix_rows,
    padded_length,
    unpack_rows,
)
from subbit.export.manifest import (
    CODEBOOK_SUFFIX,
    IDX_SUFFIX,
    STEP_SUFFIX,
    TOKENIZER_TENSOR,
    DIGEST_MINOR,
    HEADER_DIGEST_KEY,
    HEADER_PREFIX,
    SCHEMA_VERSION,
    SubbitFormatError,
    build_manifest,
    codebook_kind,
    quant_entry,
    validate_manifest,
    warn_legacy,
)
from subbit.sizes import affine_table, find_affine

MAX_HEADER = 64 << 20
#: the largest file a loader reads (checked with stat before anything is read)
MAX_FILE = 16 << 30
_NP = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "U8": np.dtype("u1"), "I64": np.dtype("<i8"),
       "I32": np.dtype("<i4"), "BOOL": np.dtype("?")}  # fmt: skip
# data section order keeps every tensor aligned to its item size (header is padded to 8)
_ORDER = {"I64": 0, "F32": 1, "I32": 1, "F16": 2, "U8": 3, "BOOL": 3}


# -- summary -----------------------------------------------------------------------------------
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

    @property
    def theory_bytes(self) -> int:
        """sum ceil(N * b / 8) + codebooks + float tensors + tokenizer + header."""
        return sum(t.theory for t in self.tensors) + self.header_bytes

    @property
    def fp32_bytes(self) -> int:
        return sum(t.fp32 for t in self.tensors)

    @property
    def int8_bytes(self) -> int:
        return sum(t.int8 for t in self.tensors)

    @property
    def quantized_bytes(self) -> int:
        return sum(t.stored for t in self.tensors if t.kind == "quantized")

    def __str__(self) -> str:
        rows = [f"{'tensor':<44} {'kind':<9} {'bits':>4} {'params':>10} {'bytes':>10} {'fp32':>10} {'int8':>10}"]
        for t in self.tensors:
            bits = "-" if t.bits is None else str(t.bits)
            rows.append(f"{t.name[:44]:<44} {t.kind:<9} {bits:>4} {t.count:>10} {t.stored:>10} {t.fp32:>10} {t.int8:>10}")
        params = sum(t.count for t in self.tensors if t.kind != "tokenizer")
        rows.append(f"{'total (tensors)':<44} {'':<9} {'':>4} {params:>10} {sum(t.stored for t in self.tensors):>10} "
                    f"{self.fp32_bytes:>10} {self.int8_bytes:>10}")  # fmt: skip
        rows.append(
            f"file {self.path}: {self.file_bytes} bytes (header {self.header_bytes}; theory {self.theory_bytes}, "
            f"{100.0 * (self.file_bytes / max(self.theory_bytes, 1) - 1):+.2f}%); "
            f"fp32 model / file = {self.fp32_bytes / max(self.file_bytes, 1):.2f}x, "
            f"int8 model / file = {self.int8_bytes / max(self.file_bytes, 1):.2f}x"
        )
        return "\n".join(rows)


# -- writing -----------------------------------------------------------------------------------
def _safetensors_bytes(tensors: dict[str, tuple[str, np.ndarray]], metadata_for: Any,
                       digest: bool = True) -> tuple[bytes, int]:  # fmt: skip
    """Serialize ``{name: (dtype, array)}``; ``metadata_for(sha256_hex) -> dict[str, str]``.

    ``digest`` (format 1.2): the header opens with ``__metadata__["header_sha256"]``, the sha256
    of the 8 length bytes + header with those 64 digits written as ``0`` (``digest=False``
    writes the unprotected header of format 1.0/1.1, for tests of old files).
    """
    names = sorted(tensors, key=lambda n: (_ORDER[tensors[n][0]], n))
    chunks, entries, offset = [], {}, 0
    for name in names:
        dtype, arr = tensors[name]
        raw = np.ascontiguousarray(arr, dtype=_NP[dtype]).tobytes()
        entries[name] = {"dtype": dtype, "shape": [int(s) for s in arr.shape], "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    meta = dict(metadata_for(hashlib.sha256(data).hexdigest()))
    head = seal_header({"__metadata__": meta, **entries}, digest=digest)
    return head + data, len(head)


def seal_header(header: dict[str, Any], *, digest: bool = True) -> bytes:
    """The 8 length bytes + JSON header (padded to 8) of ``{"__metadata__": {...}, tensor: entry}``.

    With ``digest`` (format 1.2) ``__metadata__`` comes first and opens with ``header_sha256``:
    the sha256 of these very bytes with its 64 digits written as ``0``.
    """
    meta = {k: v for k, v in dict(header.get("__metadata__") or {}).items() if k != HEADER_DIGEST_KEY}
    if digest:
        meta = {HEADER_DIGEST_KEY: "0" * 64, **meta}
    body = {"__metadata__": meta, **{k: v for k, v in header.items() if k != "__metadata__"}}
    hjson = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    head = struct.pack("<Q", len(hjson)) + hjson
    if digest:
        assert hjson.startswith(HEADER_PREFIX)
        start = 8 + len(HEADER_PREFIX)
        head = head[:start] + hashlib.sha256(head).hexdigest().encode() + head[start + 64 :]
    return head


def _quantized_from_model(model: Any) -> list[Any]:
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
        if dtype not in _NP:
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

    blob, header_bytes = _safetensors_bytes(tensors, metadata_for)
    try:  # the writer never produces a file its own loader refuses
        _parse(_BytesSource(memoryview(blob)), copy=False)
    except SubbitFormatError as exc:
        raise ValueError(f"refusing to write {path}: the loader would refuse it: {exc}") from None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return ExportSummary(str(path), len(blob), header_bytes, rows)


# -- reading -----------------------------------------------------------------------------------
def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in header")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice are refused: readers disagree on which one wins."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"key {dup!r:.60} appears twice in one object")
    return out


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def read_container(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse and fully validate a ``.subbit`` file -> ``(manifest, {name: array})``.

    The file is stat-ed first: anything but a regular file (a FIFO, a directory, a device) is
    refused before it is opened, and so is a file over ``MAX_FILE`` bytes. Then only the 8
    length bytes and the header are read and checked (header digest, every size against the
    file length, manifest). The data section's sha256 is computed by reading it in
    ``HASH_CHUNK`` pieces, and the arrays are views of a copy-on-write memory map of the file:
    loading costs memory for the header and what the checks touch (codebooks, float tensors, the
    last block of each packed row), not for the whole file. The arrays are writable (a write
    changes this process's copy only); the file must not be truncated or rewritten in place
    while they are in use (``export_model`` writes a new file and renames it, which is safe).
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SubbitFormatError(f"{path}: cannot read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SubbitFormatError(f"{path}: {_kind_of(st.st_mode)}, not a regular .subbit file")
    if st.st_size > MAX_FILE:
        raise SubbitFormatError(f"{path}: {st.st_size} bytes, over the {MAX_FILE}-byte limit of a .subbit file")
    try:
        # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, open does not hang
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SubbitFormatError(f"{path}: cannot read: {exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SubbitFormatError(f"{path}: {_kind_of(st.st_mode)}, not a regular .subbit file")
        source = _FileSource(f, int(st.st_size))
        try:
            return _parse(source, copy=False, where=str(path))
        except SubbitFormatError as exc:
            raise SubbitFormatError(f"{path}: {exc}") from None
        except OSError as exc:
            raise SubbitFormatError(f"{path}: cannot read: {exc}") from None


#: bytes read at a time while hashing the data section of a file (bounds the memory of the check)
HASH_CHUNK = 1 << 20


class _FileSource:
    """An open regular file for :func:`_parse`: exact reads, a streamed sha256, a memory map."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.size = f, size

    def read(self, offset: int, n: int) -> bytes:
        buf = bytearray(n)
        self._fill(offset, memoryview(buf))
        return bytes(buf)

    def _fill(self, offset: int, view: memoryview) -> None:
        self.f.seek(offset)
        got, n = 0, len(view)
        while got < n:
            k = self.f.readinto(view[got:])
            if not k:
                raise SubbitFormatError(f"file shrank while being read ({offset + got} of {offset + n} bytes)")
            got += k

    def sha256(self, offset: int, n: int) -> str:
        h = hashlib.sha256()
        buf = memoryview(bytearray(min(n, HASH_CHUNK)))
        done = 0
        while done < n:
            k = min(len(buf), n - done)
            self._fill(offset + done, buf[:k])
            h.update(buf[:k])
            done += k
        return h.hexdigest()

    def data(self, offset: int, n: int) -> Any:
        """``n`` bytes from ``offset`` as a writable buffer backed by a copy-on-write map."""
        if n == 0:
            return bytearray()
        try:
            mm = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):  # no mmap for this file (e.g. some network file systems): read it
            buf = bytearray(n)
            self._fill(offset, memoryview(buf))
            return buf
        if len(mm) < offset + n:
            raise SubbitFormatError(f"file shrank while being read ({len(mm)} of {offset + n} bytes)")
        return memoryview(mm)[offset : offset + n]


class _BytesSource:
    """Bytes in memory for :func:`_parse` (:func:`parse_container`)."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.size = view, len(view)

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.view[offset : offset + n])

    def sha256(self, offset: int, n: int) -> str:
        return hashlib.sha256(self.view[offset : offset + n]).hexdigest()

    def data(self, offset: int, n: int) -> Any:
        return self.view[offset : offset + n]


def parse_container(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checks of :func:`read_container` on bytes in memory (arrays are copies)."""
    view = memoryview(bytes(blob) if not isinstance(blob, (bytes, bytearray)) else blob)
    return _parse(_BytesSource(view), copy=True)


_HEX = frozenset(b"0123456789abcdef")


def _header_digest(head: bytes) -> str | None:
    """The ``header_sha256`` opening a 1.2 header (``head`` = length bytes + header), checked
    against the header's bytes; None when the header does not open with one (format 1.0/1.1)."""
    hjson = head[8:]
    if not hjson.startswith(HEADER_PREFIX):
        return None
    start = 8 + len(HEADER_PREFIX)
    digest = bytes(head[start : start + 64])
    if len(digest) != 64 or not set(digest) <= _HEX or head[start + 64 : start + 65] != b'"':
        raise SubbitFormatError(f"__metadata__.{HEADER_DIGEST_KEY}: expected 64 lowercase hex digits")
    zeroed = bytes(head[:start]) + b"0" * 64 + bytes(head[start + 64 :])
    if hashlib.sha256(zeroed).hexdigest().encode() != digest:
        raise SubbitFormatError(f"__metadata__.{HEADER_DIGEST_KEY} does not match the header: manifest or tensor "
                                "table corrupted or tampered")  # fmt: skip
    return digest.decode()


def _parse(src: Any, *, copy: bool, where: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``src`` (:class:`_FileSource` or :class:`_BytesSource`): header first, every size checked
    against ``src.size``, then the data section's digest, then views of the data."""
    read, size = src.read, src.size
    if size < 8:
        raise SubbitFormatError(f"file is {size} bytes: too short for a safetensors header")
    (hlen,) = struct.unpack("<Q", bytes(read(0, 8)))
    if hlen > MAX_HEADER or hlen > size - 8:
        raise SubbitFormatError(f"header length {hlen} exceeds the file ({size} bytes) or the {MAX_HEADER}-byte "
                                "limit: truncated or not .subbit")  # fmt: skip
    head = bytes(read(0, 8 + hlen))
    digest = _header_digest(head)
    try:
        header = json.loads(head[8:].decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SubbitFormatError(f"header is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(header, dict):
        raise SubbitFormatError("header is not a JSON object")
    data_len = size - 8 - hlen
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("subbit"), str):
        raise SubbitFormatError("header has no __metadata__['subbit'] manifest: not a .subbit file")
    if digest is None and HEADER_DIGEST_KEY in meta:
        raise SubbitFormatError(f"__metadata__.{HEADER_DIGEST_KEY} must open the header (see docs/format.md)")
    unknown = set(meta) - {"subbit", HEADER_DIGEST_KEY}
    if unknown:
        raise SubbitFormatError(f"__metadata__: unknown field(s) {sorted(unknown)[:5]}")
    entries = _check_entries(header, data_len)
    try:
        manifest = json.loads(meta["subbit"], parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SubbitFormatError(f"manifest is not valid JSON: {str(exc)[:120]}") from None
    manifest = validate_manifest(manifest, {n: (e[0], e[1]) for n, e in entries.items()})
    minor = manifest.get("schema_minor", 0)
    if digest is None:
        if minor >= DIGEST_MINOR:
            raise SubbitFormatError(f"format {SCHEMA_VERSION}.{minor} file without __metadata__.{HEADER_DIGEST_KEY} "
                                    "(stripped or corrupted header)")  # fmt: skip
        warn_legacy(minor, where)
    if src.sha256(8 + hlen, data_len) != manifest["data_sha256"]:
        raise SubbitFormatError("data section sha256 does not match the manifest: file corrupted or tampered")
    data = src.data(8 + hlen, data_len)
    arrays = {}
    for name, (dtype, shape, begin, end) in entries.items():
        nt = _NP[dtype]
        if end == begin:
            arr = np.zeros(shape, dtype=nt)
        else:
            arr = np.frombuffer(data, dtype=nt, count=(end - begin) // nt.itemsize, offset=begin).reshape(shape)
        if copy or not arr.flags.aligned:
            arr = arr.copy()
        if dtype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
            raise SubbitFormatError(f"tensor {name!r}: BOOL values other than 0/1")
        arrays[name] = arr
    _check_payload(manifest, arrays)
    return manifest, arrays


def _check_entries(header: dict[str, Any], data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    out = {}
    for name, e in header.items():
        where = f"header tensor {name!r:.80}"
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise SubbitFormatError(f"{where}: expected exactly dtype, shape, data_offsets")
        dtype = e["dtype"]
        if not isinstance(dtype, str) or dtype not in _NP:
            raise SubbitFormatError(f"{where}: unsupported dtype {dtype!r:.20}")
        shape, offs = e["shape"], e["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= 2**40 for d in shape) or len(shape) > 8:
            raise SubbitFormatError(f"{where}: bad shape {shape!r:.80}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs):
            raise SubbitFormatError(f"{where}: bad data_offsets {offs!r:.80}")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise SubbitFormatError(f"{where}: data_offsets {offs} outside the data section ({data_len} bytes)")
        if end - begin != math.prod(shape) * _NP[dtype].itemsize:
            raise SubbitFormatError(f"{where}: {end - begin} bytes do not hold {dtype} {shape}")
        out[name] = (dtype, tuple(shape), begin, end)
    pos = 0
    for name, (_, _, begin, end) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            raise SubbitFormatError(f"header tensor {name!r:.80}: data not contiguous (starts at {begin}, expected {pos})")
        pos = end
    if pos != data_len:
        raise SubbitFormatError(f"data section has {data_len} bytes, tensors cover {pos}: truncated or padded file")
    return out


def codebook_table(manifest_entry: dict[str, Any], arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The ``[G, 2**bits]`` float32 codebook of quantized tensor ``name`` of a validated file,
    rebuilt from ``<name>.codebook_step`` when the entry is affine."""
    if codebook_kind(manifest_entry) == "affine":
        step = arrays[name + STEP_SUFFIX]
        return affine_table(step, manifest_entry["zero_index"], 1 << manifest_entry["bits"])
    return arrays[name + CODEBOOK_SUFFIX]


def _check_payload(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    for name, q in manifest["quantized"].items():
        if codebook_kind(q) == "affine":
            step = arrays[name + STEP_SUFFIX]
            if not np.all(np.isfinite(step)):
                raise SubbitFormatError(f"tensor {name!r}: codebook_step has non-finite values")
            if not np.all(step > 0):
                raise SubbitFormatError(f"tensor {name!r}: codebook_step must be > 0 in every group")
        cb = codebook_table(q, arrays, name)
        if not np.all(np.isfinite(cb)):
            raise SubbitFormatError(f"tensor {name!r}: codebook has non-finite values")
        _, k = matrix_rows(tuple(q["shape"]))
        if not _padding_is_zero(arrays[name + IDX_SUFFIX], q["bits"], k):
            raise SubbitFormatError(f"tensor {name!r}: non-zero padding indices")
    for name, f in manifest["float"].items():
        if f["dtype"] in ("F32", "F16") and not _all_finite(arrays[name]):
            raise SubbitFormatError(f"tensor {name!r}: non-finite values")


#: elements checked at a time by :func:`_all_finite` (bounds the temporary it allocates)
_FINITE_CHUNK = 1 << 20


def _all_finite(arr: np.ndarray) -> bool:
    flat = arr.reshape(-1)
    return all(bool(np.isfinite(flat[i : i + _FINITE_CHUNK]).all()) for i in range(0, flat.size, _FINITE_CHUNK))


def _padding_is_zero(packed: np.ndarray, bits: int, count: int) -> bool:
    """:func:`subbit.export.bitpack.padding_is_zero` decoding only the last block of each row (padding is shorter
    than 8 indices, so it lies in that block): memory and time in the row count, not the size."""
    kp = padded_length(count)
    if kp == count:
        return True
    start = (kp - 1) // BLOCK * BLOCK  # first index of the last block (full or short)
    tail = unpack_rows(packed[:, start * bits // 8 :], bits, kp - start)
    return not bool(tail[:, count - start :].any())


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

