"""The safetensors framing of a ``.subbit`` file, shared by the writer and the reader.

A file is 8 bytes of header length, a JSON header (padded to 8 bytes) holding the tensor table
and ``__metadata__``, then the data section. Format 1.2 opens the header with
``header_sha256``, the digest of these bytes with its 64 digits written as ``0``. Here: the
dtype tables, writing the framing (:func:`safetensors_bytes`, :func:`seal_header`) and checking
it (:func:`header_digest`, :func:`check_entries`, :func:`strict_json`); what the manifest says
is checked in :mod:`subbit.export.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np

from subbit.export.manifest import HEADER_DIGEST_KEY, HEADER_PREFIX, SubbitFormatError

MAX_HEADER = 64 << 20
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "U8": np.dtype("u1"), "I64": np.dtype("<i8"),
          "I32": np.dtype("<i4"), "BOOL": np.dtype("?")}  # fmt: skip
# data section order keeps every tensor aligned to its item size (header is padded to 8)
ORDER = {"I64": 0, "F32": 1, "I32": 1, "F16": 2, "U8": 3, "BOOL": 3}


def safetensors_bytes(tensors: dict[str, tuple[str, np.ndarray]], metadata_for: Any,
                      digest: bool = True) -> tuple[bytes, int]:  # fmt: skip
    """Serialize ``{name: (dtype, array)}``; ``metadata_for(sha256_hex) -> dict[str, str]``.

    ``digest`` (format 1.2): the header opens with ``__metadata__["header_sha256"]``, the sha256
    of the 8 length bytes + header with those 64 digits written as ``0`` (``digest=False``
    writes the unprotected header of format 1.0/1.1, for tests of old files).
    """
    names = sorted(tensors, key=lambda n: (ORDER[tensors[n][0]], n))
    chunks, entries, offset = [], {}, 0
    for name in names:
        dtype, arr = tensors[name]
        raw = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
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


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity and objects with a key twice (ValueError)."""
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)


_HEX = frozenset(b"0123456789abcdef")


def header_digest(head: bytes) -> str | None:
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


def check_entries(header: dict[str, Any], data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """The tensor table (``__metadata__`` removed) -> ``{name: (dtype, shape, begin, end)}``: every
    entry well formed and inside the data section, the entries tiling it with no gap or overlap."""
    out = {}
    for name, e in header.items():
        where = f"header tensor {name!r:.80}"
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise SubbitFormatError(f"{where}: expected exactly dtype, shape, data_offsets")
        dtype = e["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SubbitFormatError(f"{where}: unsupported dtype {dtype!r:.20}")
        shape, offs = e["shape"], e["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= 2**40 for d in shape) or len(shape) > 8:
            raise SubbitFormatError(f"{where}: bad shape {shape!r:.80}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs):
            raise SubbitFormatError(f"{where}: bad data_offsets {offs!r:.80}")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise SubbitFormatError(f"{where}: data_offsets {offs} outside the data section ({data_len} bytes)")
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
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

