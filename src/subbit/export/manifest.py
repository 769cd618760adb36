"""The JSON manifest of a ``.subbit`` file: what it says, and strict validation of what it says.

The manifest lives in the safetensors header (``__metadata__["subbit"]``). Loaders trust nothing
in it: every field is type- and range-checked here before any tensor is interpreted, and any
problem raises :class:`SubbitFormatError` naming the field.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from subbit.export.bitpack import PACKING, matrix_rows, row_bytes
# affine codebooks: detection and rebuild live with the byte counts (below quant and export)
from subbit.sizes import CODEBOOK_KINDS, affine_table, find_affine  # noqa: F401 (re-exported)

FORMAT = "subbit"
SCHEMA_VERSION = 1
# minor versions add optional fields a reader of the same major version can default:
# 1 = per-tensor "codebook" ("table" | "affine") and "zero_index" (absent: "table")
# 2 = the header (tensor table + manifest) is covered by ``header_sha256``, which opens the header
SCHEMA_MINOR = 2
#: first minor version whose files must carry ``__metadata__["header_sha256"]``
DIGEST_MINOR = 2
HEADER_DIGEST_KEY = "header_sha256"
#: a 1.2 header starts with exactly these bytes, then 64 lowercase hex digits, then ``"``
HEADER_PREFIX = b'{"__metadata__":{"' + HEADER_DIGEST_KEY.encode() + b'":"'
TOKENIZER_TENSOR = "__tokenizer__"
IDX_SUFFIX = ".idx"
CODEBOOK_SUFFIX = ".codebook"
STEP_SUFFIX = ".codebook_step"
FLOAT_DTYPES = ("F32", "F16")
OTHER_DTYPES = ("I64", "I32", "BOOL")
RUNTIME_NUMERICS = {
    "codebook": "int8 per group: s = max|c| / 127, lut = rint(c / s) (round half to even)",
    "activations": "int8 per row and call: sx = max|x| / 127, xq = rint(x * (127 / max|x|))",
    "accumulate": "int32; y = float32(acc) * (sx * s) + bias",
}


class SubbitFormatError(ValueError):
    """A ``.subbit`` file is truncated, tampered with, of another version, or not one at all."""


class SubbitLegacyWarning(UserWarning):
    """A ``.subbit`` file of format 1.0/1.1 was loaded: its manifest is not covered by a checksum."""


def warn_legacy(minor: int, where: str = "") -> None:
    warnings.warn(SubbitLegacyWarning(
        f"{where + ': ' if where else ''}format {SCHEMA_VERSION}.{minor} file: its manifest and tensor table are not "
        f"covered by a checksum (only the data section is), so a corrupted manifest cannot be detected; "
        f"re-export it to get format {SCHEMA_VERSION}.{SCHEMA_MINOR}"), stacklevel=3)


def _fail(where: str, msg: str) -> SubbitFormatError:
    return SubbitFormatError(f"{where}: {msg}")


def _int(v: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"expected an integer, got {v!r:.80}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _fail(where, f"{v} outside [{lo}, {hi}]")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _fail(where, f"expected a string, got {type(v).__name__}")
    return v


def _dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"expected an object, got {type(v).__name__}")
    return v


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 8:
        raise _fail(where, f"expected a list of at most 8 dimensions, got {v!r:.80}")
    return tuple(_int(d, f"{where}[{i}]", 0, 2**40) for i, d in enumerate(v))


def _keys(d: dict[str, Any], required: set[str], optional: set[str], where: str) -> None:
    missing = required - d.keys()
    unknown = d.keys() - required - optional
    if missing:
        raise _fail(where, f"missing field(s) {sorted(missing)}")
    if unknown:
        raise _fail(where, f"unknown field(s) {sorted(unknown)}")


QUANT_FIELDS = {"bits", "shape", "groups", "granularity", "method", "packing", "mu", "count", "codebook_dtype"}
TOP_REQUIRED = {"format", "schema_version", "arch", "quantized", "float", "tokenizer", "data_sha256", "runtime"}
QUANT_OPTIONAL = {"codebook", "zero_index"}
TOP_OPTIONAL = {"extra", "created_by", "schema_minor"}


def quant_entry(bits: int, shape: tuple[int, ...], groups: int, granularity: str, method: str,
                mu: float | list[float] | None, zero_index: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Manifest record of one quantized tensor; ``zero_index`` given = affine codebook."""
    count = math.prod(shape) if shape else 1
    entry: dict[str, Any] = {
        "bits": int(bits), "shape": [int(s) for s in shape], "groups": int(groups),
        "granularity": granularity, "method": method, "packing": PACKING, "mu": mu,
        "count": int(count), "codebook_dtype": "F32", "codebook": "table",
    }  # fmt: skip
    if zero_index is not None:
        entry["codebook"] = "affine"
        entry["zero_index"] = int(zero_index)
    return entry


def build_manifest(*, arch: dict[str, Any], quantized: dict[str, dict[str, Any]],
                   floats: dict[str, dict[str, Any]], tokenizer: dict[str, Any] | None,
                   data_sha256: str, extra: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    m: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "schema_minor": SCHEMA_MINOR,
        "arch": arch,
        "quantized": quantized,
        "float": floats,
        "tokenizer": tokenizer,
        "runtime": dict(RUNTIME_NUMERICS),
        "data_sha256": data_sha256,
        "created_by": "subbit",
    }
    if extra:
        m["extra"] = extra
    return m


def validate_manifest(m: Any, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """Check the manifest against itself and the header's ``{name: (dtype, shape)}``.

    Returns the manifest; raises :class:`SubbitFormatError` on the first problem.
    """
    m = _dict(m, "manifest")
    if m.get("format") != FORMAT:
        raise _fail("manifest.format", f"expected {FORMAT!r}, got {m.get('format')!r:.40}: not a .subbit file")
    version = m.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise _fail("manifest.schema_version", f"unsupported version {version!r:.40} (this reader knows {SCHEMA_VERSION})")
    _keys(m, TOP_REQUIRED, TOP_OPTIONAL, "manifest")
    minor = _int(m.get("schema_minor", 0), "manifest.schema_minor", 0)
    if minor > SCHEMA_MINOR:
        raise _fail("manifest.schema_minor", f"file is {SCHEMA_VERSION}.{minor}, this reader knows up to "
                                             f"{SCHEMA_VERSION}.{SCHEMA_MINOR}: upgrade subbit")  # fmt: skip
    _dict(m["arch"], "manifest.arch")
    if "created_by" in m:
        _str(m["created_by"], "manifest.created_by")
    if "extra" in m:
        _dict(m["extra"], "manifest.extra")
    _dict(m["runtime"], "manifest.runtime")
    sha = _str(m["data_sha256"], "manifest.data_sha256")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail("manifest.data_sha256", "expected 64 lowercase hex digits")

    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, q in _dict(m["quantized"], "manifest.quantized").items():
        where = f"manifest.quantized[{name!r:.80}]"
        q = _dict(q, where)
        _keys(q, QUANT_FIELDS, QUANT_OPTIONAL, where)
        bits = _int(q["bits"], f"{where}.bits", 1, 8)
        shape = _shape(q["shape"], f"{where}.shape")
        if not shape or 0 in shape:
            raise _fail(f"{where}.shape", f"a quantized tensor needs a non-empty shape, got {list(shape)}")
        count = _int(q["count"], f"{where}.count", 1)
        if count != math.prod(shape):
            raise _fail(f"{where}.count", f"{count} != product of shape {list(shape)}")
        gran = _str(q["granularity"], f"{where}.granularity")
        groups = _int(q["groups"], f"{where}.groups", 1)
        if gran == "tensor" and groups != 1:
            raise _fail(f"{where}.groups", f"granularity 'tensor' needs 1 group, got {groups}")
        if gran == "channel" and len(shape) < 2:
            raise _fail(f"{where}.granularity", f"'channel' needs a weight of 2 or more dimensions (one codebook "
                                                f"per packed row), got shape {list(shape)}: use 'tensor'")  # fmt: skip
        if gran == "channel" and groups != shape[0]:
            raise _fail(f"{where}.groups", f"granularity 'channel' needs shape[0]={shape[0]} groups, got {groups}")
        if gran not in ("tensor", "channel"):
            raise _fail(f"{where}.granularity", f"expected 'tensor' or 'channel', got {gran!r:.40}")
        _str(q["method"], f"{where}.method")
        if not isinstance(q["packing"], str) or q["packing"] != PACKING:
            raise _fail(f"{where}.packing", f"unsupported packing {q['packing']!r:.40} (this reader knows {PACKING!r})")
        if not isinstance(q["codebook_dtype"], str) or q["codebook_dtype"] != "F32":
            raise _fail(f"{where}.codebook_dtype", f"expected 'F32', got {q['codebook_dtype']!r:.40}")
        _mu(q["mu"], f"{where}.mu", groups)
        n, k = matrix_rows(shape)
        expected[name + IDX_SUFFIX] = ("U8", (n, row_bytes(k, bits)))
        if codebook_kind(q, where) == "affine":
            if minor < 1:
                raise _fail(f"{where}.codebook", "an 'affine' codebook needs schema 1.1 or later, the file says 1.0 "
                                                 "(no schema_minor)")  # fmt: skip
            zero_index(q, where)
            expected[name + STEP_SUFFIX] = ("F32", (groups,))
        else:
            if "zero_index" in q:
                raise _fail(f"{where}.zero_index", "only an 'affine' codebook has a zero_index")
            expected[name + CODEBOOK_SUFFIX] = ("F32", (groups, 1 << bits))

    for name, f in _dict(m["float"], "manifest.float").items():
        where = f"manifest.float[{name!r:.80}]"
        f = _dict(f, where)
        _keys(f, {"dtype", "shape"}, set(), where)
        dtype = _str(f["dtype"], f"{where}.dtype")
        if dtype not in FLOAT_DTYPES + OTHER_DTYPES:
            raise _fail(f"{where}.dtype", f"unsupported dtype {dtype!r:.20}")
        if name in expected or name in m["quantized"]:
            raise _fail(where, "name used twice")
        expected[name] = (dtype, _shape(f["shape"], f"{where}.shape"))

    tok = m["tokenizer"]
    if tok is not None:
        tok = _dict(tok, "manifest.tokenizer")
        _keys(tok, {"kind", "nbytes"}, set(), "manifest.tokenizer")
        _str(tok["kind"], "manifest.tokenizer.kind")
        if TOKENIZER_TENSOR in expected:
            raise _fail("manifest.tokenizer", f"tensor name {TOKENIZER_TENSOR!r} used twice")
        expected[TOKENIZER_TENSOR] = ("U8", (_int(tok["nbytes"], "manifest.tokenizer.nbytes", 0),))

    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:5]
        stray = sorted(set(tensors) - set(expected))[:5]
        raise _fail("header", f"tensors do not match the manifest (missing {missing}, not in manifest {stray})")
    for name, (dtype, shape) in expected.items():
        got = tensors[name]
        if got != (dtype, shape):
            raise _fail(f"tensor {name!r:.80}", f"expected {dtype} {list(shape)}, header says {got[0]} {list(got[1])}")
    return m


def _mu(v: Any, where: str, groups: int) -> None:
    vals = v if isinstance(v, list) else [v]
    if v is None:
        return
    if isinstance(v, list) and len(v) != groups:
        raise _fail(where, f"a list of mu needs one value per group ({groups}), got {len(v)}")
    for x in vals:
        if not is_finite_number(x):
            raise _fail(where, f"expected null, a finite number or a list of them, got {x!r:.40}")


def is_finite_number(x: Any) -> bool:
    """A JSON number (int or float, not bool) that is finite as a float: an integer too large
    for a float counts as not finite (``math.isfinite`` would raise OverflowError on it)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def codebook_kind(q: dict[str, Any], where: str = "quantized tensor") -> str:
    """``"table"`` (the default: files of minor version 0 have no field) or ``"affine"``."""
    kind = q.get("codebook", "table")
    if not isinstance(kind, str) or kind not in CODEBOOK_KINDS:
        raise _fail(f"{where}.codebook", f"expected one of {list(CODEBOOK_KINDS)}, got {kind!r:.40}")
    return kind


def zero_index(q: dict[str, Any], where: str = "quantized tensor") -> int:
    """The validated ``zero_index`` of an affine entry: an integer in [0, 2**bits - 1]."""
    if "zero_index" not in q:
        raise _fail(where, "missing field(s) ['zero_index'] (needed by an 'affine' codebook)")
    return _int(q["zero_index"], f"{where}.zero_index", 0, (1 << q["bits"]) - 1)
