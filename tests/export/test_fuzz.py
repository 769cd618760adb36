"""Fuzzing the loader: whatever happens to a .subbit file, loading either succeeds or raises
SubbitFormatError -- never another exception, never a crash."""

from __future__ import annotations

import functools
import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subbit.export.bitpack import PackedTensor
from subbit.export.container import _safetensors_bytes, parse_container, seal_header, write_packed
from subbit.export.manifest import SubbitFormatError, affine_table


@functools.lru_cache(maxsize=1)
def small_file() -> bytes:
    """A few tensors of every kind: 3-bit per tensor, 5-bit per channel, 4-bit per channel on an
    affine grid (stored as steps), floats, tokenizer."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(0)
    a = PackedTensor.from_indices(rng.integers(0, 8, (4, 12)), rng.normal(size=(1, 8)), 3)
    b = PackedTensor.from_indices(rng.integers(0, 32, (3, 9)), rng.normal(size=(3, 32)), 5, granularity="channel")
    grid = affine_table(np.array([0.5, 0.25], np.float32), 8, 16)
    u = PackedTensor.from_indices(rng.integers(0, 16, (2, 10)), grid, 4, granularity="channel", method="uniform")
    floats = {"bias": ("F32", rng.normal(size=4).astype(np.float32)), "half": ("F16", np.ones(3, np.float16)),
              "count": ("I64", np.array([7]))}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.subbit"
        write_packed(path, {"a": a, "b": b, "u": u}, floats, arch={"arch": "fuzz"}, tokenizer_bytes=b"tok")
        return path.read_bytes()


def header_end() -> int:
    return 8 + struct.unpack("<Q", small_file()[:8])[0]


def must_load_or_refuse(data: bytes) -> None:
    try:
        parse_container(data)
    except SubbitFormatError:
        pass


def test_intact_file_loads() -> None:
    manifest, arrays = parse_container(small_file())
    assert set(manifest["quantized"]) == {"a", "b", "u"}
    assert manifest["quantized"]["u"]["codebook"] == "affine" and "u.codebook_step" in arrays


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_byte_flips_anywhere(data: st.DataObject) -> None:
    blob = bytearray(small_file())
    for _ in range(data.draw(st.integers(1, 4))):
        # half the time aim at the header, where parsing happens
        hi = header_end() if data.draw(st.booleans()) else len(blob)
        pos = data.draw(st.integers(0, hi - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    must_load_or_refuse(bytes(blob))


@FAST
@given(st.data())
def test_truncation_and_insertion(data: st.DataObject) -> None:
    blob = small_file()
    cut = data.draw(st.integers(0, len(blob)))
    must_load_or_refuse(blob[:cut])
    pos = data.draw(st.integers(0, len(blob)))
    must_load_or_refuse(blob[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + blob[pos:])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@FAST
@given(st.data())
def test_structured_header_and_manifest_edits(data: st.DataObject) -> None:
    """Replace any value of the header or the manifest by random JSON, keep the file consistent
    otherwise (right header length, real data, and half the time a recomputed header_sha256, as
    a forger would write): the validators behind the digest must catch what matters."""
    blob = small_file()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["subbit"])
    target = manifest if data.draw(st.booleans()) else header
    paths = [p for p in _paths(target) if p]
    path = data.draw(st.sampled_from(paths))
    node = target
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()):
        node[path[-1]] = data.draw(JSON)
    elif isinstance(node, dict):
        del node[path[-1]]
    meta = header.get("__metadata__")
    if target is manifest and isinstance(meta, dict):
        meta["subbit"] = json.dumps(manifest)
    if data.draw(st.booleans()) and isinstance(meta, dict):
        try:
            sealed = seal_header(header)
        except ValueError:  # an infinite float drawn into the header: no JSON for it
            sealed = None
        if sealed is not None:
            must_load_or_refuse(sealed + blob[8 + n :])
            return
    h = json.dumps(header).encode()
    must_load_or_refuse(struct.pack("<Q", len(h)) + h + blob[8 + n :])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_garbage_and_huge_lengths(tail: bytes, length: int) -> None:
    must_load_or_refuse(tail)
    must_load_or_refuse(struct.pack("<Q", length) + tail)


def test_data_section_rebuilt_with_consistent_sha_still_validates_payload() -> None:
    """A forger who recomputes the sha256 still cannot smuggle bad padding or NaN codebooks."""
    for target in ("a.codebook", "u.codebook_step"):
        _refused_with_nan(target)


def _refused_with_nan(target: str) -> None:
    manifest, arrays = parse_container(small_file())
    arrays[target] = np.full_like(arrays[target], np.nan)
    dtypes = {"a.idx": "U8", "b.idx": "U8", "u.idx": "U8", "a.codebook": "F32", "b.codebook": "F32",
              "u.codebook_step": "F32", "bias": "F32", "half": "F16", "count": "I64", "__tokenizer__": "U8"}  # fmt: skip

    def meta(sha: str) -> dict[str, str]:
        return {"subbit": json.dumps({**manifest, "data_sha256": sha})}

    blob, _ = _safetensors_bytes({k: (dtypes[k], v) for k, v in arrays.items()}, meta)
    try:
        parse_container(blob)
    except SubbitFormatError as exc:
        assert "non-finite" in str(exc)
    else:
        raise AssertionError("NaN codebook accepted")
