"""One test per point docs/format.md settles for a second implementation (issue 13, "a spec a
second implementation can follow"): required/optional/unknown fields, codebook_dtype, 0-d /
zero-size / 1-D shapes, the float32 int8 codebook, the plane order, the version written by
compact_codebooks=False, lowercase digests, mu length, 1.0 + affine, legacy files."""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from subbit.export import container
from subbit.export.bitpack import PackedTensor, int8_codebook, pack_rows
from subbit.export.container import (
    _safetensors_bytes,
    export_model,
    load_dequantized,
    load_packed,
    parse_container,
    seal_header,
    write_packed,
)
from subbit.export.manifest import (
    HEADER_PREFIX,
    QUANT_FIELDS,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    TOP_REQUIRED,
    SubbitFormatError,
    SubbitLegacyWarning,
    affine_table,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"


def _tensors() -> tuple[dict[str, PackedTensor], dict[str, tuple[str, np.ndarray]]]:
    rng = np.random.default_rng(3)
    a = PackedTensor.from_indices(rng.integers(0, 8, (4, 12)), rng.normal(size=(1, 8)), 3, method="gq", mu=5.0)
    grid = affine_table(np.array([0.5, 0.25], np.float32), 8, 16)
    u = PackedTensor.from_indices(rng.integers(0, 16, (2, 10)), grid, 4, granularity="channel", method="uniform")
    return {"a": a, "u": u}, {"bias": ("F32", rng.normal(size=4).astype(np.float32))}


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("s") / "s.subbit"
    packed, floats = _tensors()
    write_packed(path, packed, floats, arch={"arch": "t"}, tokenizer_bytes=b"tok", extra={"note": "x"})
    return path.read_bytes()


def _split(blob: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    return header, json.loads(header["__metadata__"]["subbit"]), blob[8 + n :]


def _resealed(blob: bytes, edit: Any) -> bytes:
    """The file with ``edit(manifest)`` applied and a correct header_sha256 (as a writer would
    seal it): only the manifest's own rules can refuse it."""
    header, manifest, data = _split(blob)
    edit(manifest)
    header["__metadata__"]["subbit"] = json.dumps(manifest, separators=(",", ":"))
    return seal_header(header) + data


# -- required, optional and unknown fields ---------------------------------------------------
@pytest.mark.parametrize("field", sorted(TOP_REQUIRED - {"format", "schema_version"}))
def test_every_required_top_level_field_is_required(blob: bytes, field: str) -> None:
    with pytest.raises(SubbitFormatError, match=rf"missing field\(s\) \['{field}'\]"):
        parse_container(_resealed(blob, lambda m: m.pop(field)))


@pytest.mark.parametrize("field", sorted(QUANT_FIELDS))
def test_every_required_tensor_field_is_required(blob: bytes, field: str) -> None:
    with pytest.raises(SubbitFormatError, match=rf"quantized\['a'\]: missing field\(s\) \['{field}'\]"):
        parse_container(_resealed(blob, lambda m: m["quantized"]["a"].pop(field)))


def test_optional_fields_may_be_left_out(blob: bytes) -> None:
    def drop(m: dict[str, Any]) -> None:
        m.pop("created_by")
        m.pop("extra")
        m["quantized"]["a"].pop("codebook")  # absent = "table"

    manifest, _ = parse_container(_resealed(blob, drop))
    assert "extra" not in manifest and "created_by" not in manifest


@pytest.mark.parametrize(
    "where",
    [
        lambda m: m,
        lambda m: m["quantized"]["a"],
        lambda m: m["float"]["bias"],
        lambda m: m["tokenizer"],
    ],
)
def test_unknown_fields_are_refused_where_the_schema_is_fixed(blob: bytes, where: Any) -> None:
    with pytest.raises(SubbitFormatError, match=r"unknown field\(s\) \['surprise'\]"):
        parse_container(_resealed(blob, lambda m: where(m).update(surprise=1)))


def test_unknown_fields_are_allowed_in_arch_extra_and_runtime(blob: bytes) -> None:
    def add(m: dict[str, Any]) -> None:
        m["arch"]["surprise"] = [1, {"x": None}]
        m["extra"]["surprise"] = "y"
        m["runtime"]["surprise"] = 2

    manifest, _ = parse_container(_resealed(blob, add))
    assert manifest["arch"]["surprise"] == [1, {"x": None}]


def test_unknown_metadata_and_tensor_table_fields_are_refused(blob: bytes) -> None:
    header, _, data = _split(blob)
    header["__metadata__"]["surprise"] = "1"
    with pytest.raises(SubbitFormatError, match=r"__metadata__: unknown field"):
        parse_container(seal_header(header) + data)
    header, _, data = _split(blob)
    header["bias"]["surprise"] = 1
    with pytest.raises(SubbitFormatError, match="expected exactly dtype, shape, data_offsets"):
        parse_container(seal_header(header) + data)


def test_a_key_twice_in_one_object_is_refused(blob: bytes) -> None:
    header, manifest, data = _split(blob)
    text = json.dumps(manifest, separators=(",", ":"))
    dup = text.replace('"created_by":"subbit"', '"created_by":"subbit","created_by":"other"')
    assert dup != text
    header["__metadata__"]["subbit"] = dup
    with pytest.raises(SubbitFormatError, match="'created_by' appears twice"):
        parse_container(seal_header(header) + data)


@pytest.mark.parametrize("value", [4.0, "4", True])
def test_integers_must_be_json_integers(blob: bytes, value: Any) -> None:
    with pytest.raises(SubbitFormatError, match=r"quantized\['a'\]\.bits: expected an integer"):
        parse_container(_resealed(blob, lambda m: m["quantized"]["a"].update(bits=value)))


# -- codebook_dtype --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["F16", "BF16", "f32", "I8", None, 32])
def test_codebook_dtype_other_than_f32_is_refused(blob: bytes, value: Any) -> None:
    with pytest.raises(SubbitFormatError, match=r"quantized\['a'\]\.codebook_dtype: expected 'F32'"):
        parse_container(_resealed(blob, lambda m: m["quantized"]["a"].update(codebook_dtype=value)))


# -- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[], [5, 0], [0]])
def test_empty_quantized_shapes_are_refused_by_writer_and_loader(tmp_path: Path, blob: bytes, shape: list[int]) -> None:
    pt = PackedTensor(3, tuple(shape), np.zeros((1, 0), np.uint8), np.zeros((1, 8), np.float32), 1)
    with pytest.raises(ValueError, match="non-empty shape"):
        write_packed(tmp_path / "z.subbit", {"w": pt}, {}, arch={})
    assert not (tmp_path / "z.subbit").exists()

    def edit(m: dict[str, Any]) -> None:
        m["quantized"]["a"].update(shape=shape, count=0)

    with pytest.raises(SubbitFormatError, match=r"quantized\['a'\]\.(shape|count)"):
        parse_container(_resealed(blob, edit))


def test_zero_d_and_zero_size_float_tensors_round_trip(tmp_path: Path) -> None:
    packed, _ = _tensors()
    floats = {"scalar": ("F32", np.array(2.5, np.float32)), "empty": ("F32", np.zeros((5, 0), np.float32)),
              "iscalar": ("I64", np.array(7)), "none": ("BOOL", np.zeros((0,), bool))}  # fmt: skip
    path = tmp_path / "f.subbit"
    write_packed(path, packed, floats, arch={})
    _, state = load_dequantized(path)
    assert state["scalar"].shape == () and float(state["scalar"]) == 2.5
    assert tuple(state["empty"].shape) == (5, 0) and tuple(state["none"].shape) == (0,)
    assert int(state["iscalar"]) == 7


def test_one_d_quantized_tensors_are_per_tensor_only(tmp_path: Path, blob: bytes) -> None:
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 4, 13)
    one = PackedTensor.from_indices(idx, rng.normal(size=(1, 4)), 2)
    write_packed(tmp_path / "one.subbit", {"v": one}, {}, arch={})
    pm = load_packed(tmp_path / "one.subbit")
    assert pm.packed["v"].shape == (13,) and np.array_equal(pm.packed["v"].indices(), idx)
    chan = PackedTensor.from_indices(idx, rng.normal(size=(13, 4)), 2, granularity="channel")
    with pytest.raises(ValueError, match="'channel' granularity needs a weight of 2 or more dimensions"):
        write_packed(tmp_path / "chan.subbit", {"v": chan}, {}, arch={})
    assert not (tmp_path / "chan.subbit").exists()

    def edit(m: dict[str, Any]) -> None:  # a per-channel entry made 1-D, sealed as a forger would
        m["quantized"]["u"].update(shape=[20], count=20)

    with pytest.raises(SubbitFormatError, match=r"quantized\['u'\]\.granularity: 'channel' needs a weight of 2"):
        parse_container(_resealed(blob, edit))


# -- the int8 codebook is float32 arithmetic -------------------------------------------------
def test_int8_codebook_scale_is_one_float32_division() -> None:
    """s = amax / 127 is one correctly rounded float32 division (equal to the float64 quotient
    rounded once; a float32 reciprocal would differ on some of these amax): the implementation
    follows that rule, and lut = clip(rint(float32 c / s))."""
    rng = np.random.default_rng(5)
    amax = rng.uniform(1e-3, 10.0, 200_000).astype(np.float32)
    f32 = amax / np.float32(127.0)
    f64 = (amax.astype(np.float64) / 127.0).astype(np.float32)
    # float32 inputs: double rounding through float64 is harmless, a reciprocal is not
    recip = amax * (np.float32(1.0) / np.float32(127.0))
    assert np.array_equal(f32, f64) and not np.array_equal(f32, recip)
    cb = np.stack([amax, -amax / 3, amax / 7, np.zeros_like(amax)], axis=1)
    lut, scales = int8_codebook(cb)
    assert scales.dtype == np.float32 and np.array_equal(scales, f32)
    q = cb / f32[:, None]
    assert q.dtype == np.float32
    assert np.array_equal(lut, np.clip(np.rint(q), -127, 127).astype(np.int8))
    lut0, s0 = int8_codebook(np.zeros((2, 4), np.float32))
    assert not s0.any() and not lut0.any()


# -- plane order -------------------------------------------------------------------------------
def test_the_multi_plane_example_in_the_spec_is_what_the_packer_writes() -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- spec-example: bits=(\d) K=(\d+) index=i%8 -->\s*```\s*([0-9a-f ]+?)\s*```", text)
    assert m, "docs/format.md lost its multi-plane example"
    bits, k = int(m.group(1)), int(m.group(2))
    want = bytes.fromhex(m.group(3).replace(" ", ""))
    idx = np.arange(k).reshape(1, k) % 8
    assert pack_rows(idx, bits).tobytes() == want
    # and a decoder written from the prose alone reads it back
    assert _spec_decode_row(want, bits, k) == list(idx[0])


def _spec_decode_row(row: bytes, bits: int, k: int) -> list[int]:
    """The plane rules of docs/format.md, written out without subbit.export.bitpack."""
    widths = {1: [1], 2: [2], 3: [2, 1], 4: [4], 5: [4, 1], 6: [4, 2], 7: [4, 2, 1], 8: [8]}[bits]
    kp = -(-k // 8) * 8
    out, pos = [], 0
    for start in range(0, kp, 32):
        length = min(32, kp - start)
        vals, shift = [0] * length, 0
        for w in widths:
            nbytes = length * w // 8
            for j in range(nbytes):
                for t in range(8 // w):
                    vals[j + nbytes * t] |= ((row[pos + j] >> (t * w)) & ((1 << w) - 1)) << shift
            pos += nbytes
            shift += w
        out += vals
    return out[:k]


# -- version written -------------------------------------------------------------------------
def test_compact_codebooks_false_writes_the_current_version_as_documented(tmp_path: Path) -> None:
    packed, floats = _tensors()
    path = tmp_path / "t.subbit"
    write_packed(path, packed, floats, arch={}, compact_codebooks=False)
    manifest, arrays = parse_container(path.read_bytes())
    assert (manifest["schema_version"], manifest["schema_minor"]) == (SCHEMA_VERSION, SCHEMA_MINOR)
    assert {q["codebook"] for q in manifest["quantized"].values()} == {"table"} and "u.codebook" in arrays
    version = f"{SCHEMA_VERSION}.{SCHEMA_MINOR}"
    for fn in (write_packed, export_model):
        doc = " ".join((fn.__doc__ or "").split())
        assert f"format, {version}" in doc or f"format version, {version}" in doc, fn.__name__


# -- lowercase digests -----------------------------------------------------------------------
def test_upper_case_data_sha256_is_refused(blob: bytes) -> None:
    with pytest.raises(SubbitFormatError, match="data_sha256: expected 64 lowercase hex digits"):
        parse_container(_resealed(blob, lambda m: m.update(data_sha256=m["data_sha256"].upper())))


def test_upper_case_header_sha256_is_refused(blob: bytes) -> None:
    start = 8 + len(HEADER_PREFIX)
    digest = blob[start : start + 64]
    assert digest != digest.upper()  # the sealed digest has letters
    bad = blob[:start] + digest.upper() + blob[start + 64 :]
    with pytest.raises(SubbitFormatError, match="header_sha256: expected 64 lowercase hex digits"):
        parse_container(bad)


# -- mu, 1.0 + affine, legacy ----------------------------------------------------------------
def test_a_mu_list_whose_length_is_not_the_group_count_is_refused_by_writer_and_loader(tmp_path: Path,
                                                                                        blob: bytes) -> None:  # fmt: skip
    packed, floats = _tensors()
    packed["u"].mu = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="mu has 3 values for 2 groups"):
        write_packed(tmp_path / "mu.subbit", packed, floats, arch={})
    with pytest.raises(SubbitFormatError, match=r"a list of mu needs one value per group \(1\), got 2"):
        parse_container(_resealed(blob, lambda m: m["quantized"]["a"].update(mu=[1.0, 2.0])))
    manifest, _ = parse_container(_resealed(blob, lambda m: m["quantized"]["u"].update(mu=[1.0, 2.0])))
    assert manifest["quantized"]["u"]["mu"] == [1.0, 2.0]


def _legacy(blob: bytes, minor: int | None, tables_only: bool) -> bytes:
    """The file re-made as format 1.minor (no header digest; minor None = no field, 1.0)."""
    _, manifest, _ = _split(blob)
    _, arrays = parse_container(blob)
    if minor is None:
        manifest.pop("schema_minor")
    else:
        manifest["schema_minor"] = minor
    if tables_only:
        for name, q in manifest["quantized"].items():
            if q.get("codebook") == "affine":
                arrays[name + ".codebook"] = affine_table(arrays.pop(name + ".codebook_step"), q.pop("zero_index"),
                                                          1 << q["bits"])  # fmt: skip
            q.pop("codebook", None)
    dtypes = {k: "U8" if k.endswith(".idx") or k == "__tokenizer__" else "F32" for k in arrays}

    def meta(sha: str) -> dict[str, str]:
        return {"subbit": json.dumps({**manifest, "data_sha256": sha})}

    return _safetensors_bytes({k: (dtypes[k], v) for k, v in arrays.items()}, meta, digest=False)[0]


def test_a_1_0_file_using_affine_is_refused(blob: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SubbitLegacyWarning)
        with pytest.raises(SubbitFormatError, match=r"'affine' codebook needs schema 1\.1 or later"):
            parse_container(_legacy(blob, None, tables_only=False))


@pytest.mark.parametrize("minor", [None, 1])
def test_legacy_files_load_with_a_warning_and_the_same_weights(tmp_path: Path, blob: bytes, minor: int | None) -> None:
    old = tmp_path / "old.subbit"
    old.write_bytes(_legacy(blob, minor, tables_only=minor is None))
    new = tmp_path / "new.subbit"
    new.write_bytes(blob)
    with pytest.warns(SubbitLegacyWarning, match=rf"format 1\.{minor or 0} file"):
        _, state_old = load_dequantized(old)
    _, state_new = load_dequantized(new)
    assert state_old.keys() == state_new.keys()
    for k in state_new:
        assert np.array_equal(state_old[k].numpy(), state_new[k].numpy()), k


def test_the_writer_parses_its_own_bytes_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer bug the named checks miss still cannot produce a file the loader refuses."""
    packed, floats = _tensors()
    real = container.quant_entry
    monkeypatch.setattr(container, "quant_entry", lambda *a, **k: {**real(*a, **k), "method": 3})
    with pytest.raises(ValueError, match="refusing to write .* the loader would refuse it"):
        write_packed(tmp_path / "w.subbit", packed, floats, arch={})
    assert not (tmp_path / "w.subbit").exists()
