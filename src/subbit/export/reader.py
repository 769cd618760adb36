"""Read and validate ``.subbit`` files without trusting them.

:func:`read_container` stats the path (regular files only, at most ``MAX_FILE`` bytes), reads
the length bytes and the header, checks the framing (:mod:`subbit.export.framing`) and the
manifest (:mod:`subbit.export.manifest`), streams the data section's sha256 and maps the data
copy-on-write instead of reading it; it never unpickles. :func:`parse_container` runs the same
checks on bytes in memory (the writer runs them on its own bytes). Anything wrong raises
:class:`SubbitFormatError`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import struct
from typing import Any

import numpy as np

from subbit.export.bitpack import BLOCK, matrix_rows, padded_length, unpack_rows
from subbit.export.framing import DTYPES, MAX_HEADER, check_entries, header_digest, strict_json
from subbit.export.manifest import (
    CODEBOOK_SUFFIX,
    DIGEST_MINOR,
    HEADER_DIGEST_KEY,
    IDX_SUFFIX,
    SCHEMA_VERSION,
    STEP_SUFFIX,
    SubbitFormatError,
    codebook_kind,
    validate_manifest,
    warn_legacy,
)
from subbit.sizes import affine_table

#: the largest file a loader reads (checked with stat before anything is read)
MAX_FILE = 16 << 30


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


def parse_container(blob: bytes, *, copy: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checks of :func:`read_container` on bytes in memory (arrays are copies unless
    ``copy=False``, then views of ``blob`` where aligned)."""
    view = memoryview(bytes(blob) if not isinstance(blob, (bytes, bytearray)) else blob)
    return _parse(_BytesSource(view), copy=copy)




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
    digest = header_digest(head)
    try:
        header = strict_json(head[8:].decode("utf-8"))
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
    entries = check_entries(header, data_len)
    try:
        manifest = strict_json(meta["subbit"])
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
        nt = DTYPES[dtype]
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
