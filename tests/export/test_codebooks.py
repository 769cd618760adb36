"""Affine codebooks: uniform grids are stored as one float32 step per group (+ zero_index in the
manifest) and rebuilt bit for bit; every other codebook stays a table; tampering is refused."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import subbit.quant as q
from subbit.export import SubbitFormatError, export_model, load_dequantized, load_packed, read_container
from subbit.export.container import _safetensors_bytes, parse_container
from subbit.export.manifest import SCHEMA_MINOR, STEP_SUFFIX, affine_table, find_affine
from subbit.runtime import kernels
from subbit.testing.dummies import dummy_net

torch.set_num_threads(1)


def make_net() -> nn.Module:
    return dummy_net(("emb", nn.Embedding(30, 64)), ("lstm", nn.LSTM(64, 96, batch_first=True)),
                     ("out", nn.Linear(96, 30)), seed=None)  # fmt: skip


def converted(spec: dict[str, Any], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = make_net()
    q.prepare(m, q.QuantConfig.from_dict({"default": spec}))
    return q.convert(m).eval()


QAT8 = {"method": "uniform", "bits": 8, "granularity": "channel"}


# -- detection ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(1, 5), st.floats(1e-6, 1e3), st.integers(0, 2**31))
def test_affine_tables_are_found_and_rebuilt_bit_for_bit(bits: int, groups: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    step = (rng.uniform(0.1, 1.0, groups) * scale).astype(np.float32)
    k = 1 << bits
    z = int(rng.integers(0, k))
    table = affine_table(step, z, k)
    got = find_affine(table)
    assert got is not None
    assert got[1] == z
    assert np.array_equal(affine_table(got[0], got[1], k).view(np.uint32), table.view(np.uint32))


def test_non_affine_codebooks_keep_tables() -> None:
    rng = np.random.default_rng(0)
    assert find_affine(np.sort(rng.normal(size=(3, 16)), axis=1).astype(np.float32)) is None
    grid = affine_table(np.array([0.1, 0.2], np.float32), 8, 16)
    bent = grid.copy()
    bent[1, 3] = np.nextafter(bent[1, 3], np.float32(0))  # one ulp off: not bit-exact any more
    assert find_affine(bent) is None
    assert find_affine(-grid) is None  # negative step
    assert find_affine(np.zeros((2, 4), np.float32)) is None  # step 0
    assert find_affine(grid.astype(np.float64)) is None  # only float32 tables
    assert find_affine(np.array([[-0.5, 0.5]], np.float32)) is None  # no zero level: 1-bit stays a table


def test_uniform_baseline_codebooks_are_affine_gq_ones_are_not() -> None:
    for bits in (2, 4, 8):
        for gran in ("tensor", "channel"):
            m = converted({"method": "uniform", "bits": bits, "granularity": gran})
            for qt in q.quantized_tensors(m):
                _, cb = qt.quantizer.encode(qt.latent)
                assert find_affine(cb.float().numpy()) is not None, (bits, gran, qt.name)
    m = converted({"method": "gq", "bits": 4, "granularity": "channel"})
    for qt in q.quantized_tensors(m):
        assert find_affine(qt.quantizer.encode(qt.latent)[1].float().numpy()) is None


# -- files -------------------------------------------------------------------------------------
def test_qat8_file_is_int8_sized_and_loads_bit_for_bit(tmp_path: Path) -> None:
    model = converted(QAT8)
    path = tmp_path / "qat8.subbit"
    s = export_model(model, path, arch={"arch": "net"})
    manifest, arrays = read_container(path)
    for name, e in manifest["quantized"].items():
        assert e["codebook"] == "affine" and e["zero_index"] == 128
        assert arrays[name + STEP_SUFFIX].shape == (e["groups"],) and name + ".codebook" not in arrays
    assert manifest["schema_minor"] == SCHEMA_MINOR
    # 8 bits: one byte per weight + one float per row, as the int8 estimate; only the header on top
    assert sum(t.stored for t in s.tensors) <= s.int8_bytes
    assert s.file_bytes <= s.int8_bytes + s.header_bytes
    assert s.file_bytes < 0.3 * s.fp32_bytes
    assert s.file_bytes == path.stat().st_size <= 1.02 * s.theory_bytes
    theory = s.header_bytes + sum(4 * p.numel() for n, p in model.named_parameters() if "bias" in n)
    for qt in q.quantized_tensors(model):
        theory += qt.quantizer.num_groups * (math.ceil(qt.latent.numel() / qt.quantizer.num_groups) + 4)
    assert theory == s.theory_bytes
    _, state = load_dequantized(path)
    plain = make_net()
    plain.load_state_dict(state)
    for qt in q.quantized_tensors(model):
        want = getattr(qt.module, qt.param_name).detach()
        assert torch.equal(state[qt.name].view(torch.int32), want.view(torch.int32)), qt.name
    tokens = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        assert torch.equal(plain.eval()(tokens), model(tokens))


def test_low_bit_uniform_file_is_below_int8_and_tables_are_larger(tmp_path: Path) -> None:
    model = converted({"method": "uniform", "bits": 4, "granularity": "channel"})
    s = export_model(model, tmp_path / "u4.subbit", arch={})
    assert s.file_bytes < s.int8_bytes
    full = export_model(model, tmp_path / "u4t.subbit", arch={}, compact_codebooks=False)
    assert full.file_bytes > s.file_bytes
    a, b = load_packed(tmp_path / "u4.subbit"), load_packed(tmp_path / "u4t.subbit")
    x = np.random.default_rng(1).normal(size=(3, 96)).astype(np.float32)
    for name, pt in a.packed.items():
        assert pt.codebook.dtype == np.float32
        assert np.array_equal(pt.codebook.view(np.uint32), b.packed[name].codebook.view(np.uint32))
        if pt.shape[1] == 96:  # the runtime computes the same from either file
            np.testing.assert_array_equal(kernels.packed_linear(x, pt), kernels.packed_linear(x, b.packed[name]))


def test_one_bit_uniform_keeps_tables_and_round_trips(tmp_path: Path) -> None:
    model = converted({"method": "uniform", "bits": 1, "granularity": "channel"})
    export_model(model, tmp_path / "u1.subbit", arch={})
    manifest, state = load_dequantized(tmp_path / "u1.subbit")
    assert {e["codebook"] for e in manifest["quantized"].values()} == {"table"}
    for qt in q.quantized_tensors(model):
        assert torch.equal(state[qt.name], getattr(qt.module, qt.param_name).detach())


def test_gq_keeps_tables(tmp_path: Path) -> None:
    model = converted({"method": "gq", "bits": 3, "granularity": "channel"})
    manifest, arrays = read_container(_export(model, tmp_path))
    assert all(e["codebook"] == "table" and "zero_index" not in e for e in manifest["quantized"].values())
    assert not any(n.endswith(STEP_SUFFIX) for n in arrays)


def test_quant_report_counts_the_codebooks_the_file_holds(tmp_path: Path) -> None:
    for spec in (QAT8, {"method": "gq", "bits": 2}):
        model = converted(spec)
        s = export_model(model, tmp_path / "r.subbit", arch={})
        stored_cb = {t.name: t.stored for t in s.tensors if t.kind == "quantized"}
        pm = load_packed(tmp_path / "r.subbit")
        for row in q.report(model).rows:
            file_cb = stored_cb[row.name] - pm.packed[row.name].packed.nbytes
            assert row.packed_bytes - math.ceil(row.numel * row.bits / 8) == file_cb, (spec, row.name)


def _export(model: nn.Module, tmp_path: Path, **kw: Any) -> Path:
    path = tmp_path / "m.subbit"
    export_model(model, path, arch={"arch": "net"}, **kw)
    return path


# -- versions and tampering --------------------------------------------------------------------
def _rebuild(blob: bytes, edit_manifest: Any = None, edit_arrays: Any = None) -> bytes:
    """Re-serialise a file after editing its manifest and/or arrays, with a consistent sha256."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    manifest = json.loads(header.pop("__metadata__")["subbit"])
    _, arrays = parse_container(blob)
    if edit_manifest is not None:
        edit_manifest(manifest)
    if edit_arrays is not None:
        edit_arrays(arrays)
    dtypes = {k: header[k]["dtype"] if k in header else "F32" for k in arrays}

    def meta(sha: str) -> dict[str, str]:
        return {"subbit": json.dumps({**manifest, "data_sha256": sha})}

    return _safetensors_bytes({k: (dtypes[k], v) for k, v in arrays.items()}, meta)[0]


@pytest.fixture(scope="module")
def qat_blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    model = converted({"method": "uniform", "bits": 3, "granularity": "channel"})
    return _export(model, tmp_path_factory.mktemp("a")).read_bytes()


def test_files_of_minor_version_zero_still_load(tmp_path: Path) -> None:
    """A 1.0 file (no schema_minor, no per-tensor codebook field) reads as tables."""
    model = converted({"method": "uniform", "bits": 3, "granularity": "channel"})
    table = _export(model, tmp_path, compact_codebooks=False).read_bytes()

    def as_v1_0(m: dict[str, Any]) -> None:
        m.pop("schema_minor")
        for e in m["quantized"].values():
            e.pop("codebook")

    old = tmp_path / "old.subbit"
    old.write_bytes(_rebuild(table, as_v1_0))
    manifest, state = load_dequantized(old)
    assert "schema_minor" not in manifest and all("codebook" not in e for e in manifest["quantized"].values())
    for qt in q.quantized_tensors(model):
        assert torch.equal(state[qt.name], getattr(qt.module, qt.param_name).detach())


def _entry(m: dict[str, Any]) -> dict[str, Any]:
    return m["quantized"]["out.weight"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: _entry(m).update(zero_index=8), r"zero_index: 8 outside \[0, 7\]"),
        (lambda m: _entry(m).update(zero_index=-1), r"zero_index: -1 outside"),
        (lambda m: _entry(m).update(zero_index=2.0), "zero_index: expected an integer"),
        (lambda m: _entry(m).update(zero_index=True), "zero_index: expected an integer"),
        (lambda m: _entry(m).update(zero_index="4"), "zero_index: expected an integer"),
        (lambda m: _entry(m).pop("zero_index"), "zero_index"),
        (lambda m: _entry(m).update(codebook="lut"), "codebook: expected one of"),
        (lambda m: _entry(m).update(codebook="table"), "only an 'affine' codebook has a zero_index"),
        (lambda m: (_entry(m).update(codebook="table"), _entry(m).pop("zero_index")), "do not match the manifest"),
        (lambda m: _entry(m).update(groups=1, granularity="tensor"), "expected F32 \\[1\\]"),
        (lambda m: m.update(schema_minor=SCHEMA_MINOR + 1), "upgrade subbit"),
        (lambda m: m.update(schema_minor=-1), "schema_minor"),
    ],
)
def test_tampered_affine_manifest_is_refused(qat_blob: bytes, edit: Any, message: str) -> None:
    with pytest.raises(SubbitFormatError, match=message):
        parse_container(_rebuild(qat_blob, edit))


def test_table_entry_with_zero_index_is_refused(tmp_path: Path) -> None:
    blob = _export(converted({"method": "gq", "bits": 2}), tmp_path).read_bytes()
    with pytest.raises(SubbitFormatError, match="only an 'affine' codebook"):
        parse_container(_rebuild(blob, lambda m: _entry(m).update(zero_index=1)))


@pytest.mark.parametrize("value, message", [(np.nan, "non-finite"), (np.inf, "non-finite"), (0.0, "> 0"),
                                            (-0.5, "> 0"), (3e38, "codebook has non-finite")])  # fmt: skip
def test_bad_steps_are_refused_even_with_a_consistent_sha(qat_blob: bytes, value: float, message: str) -> None:
    def poke(arrays: dict[str, np.ndarray]) -> None:
        arrays["out.weight" + STEP_SUFFIX][1] = value

    with pytest.raises(SubbitFormatError, match=message):
        parse_container(_rebuild(qat_blob, None, poke))


def test_wrong_step_shape_is_refused(qat_blob: bytes) -> None:
    def shrink(arrays: dict[str, np.ndarray]) -> None:
        arrays["out.weight" + STEP_SUFFIX] = arrays["out.weight" + STEP_SUFFIX][:-1]

    with pytest.raises(SubbitFormatError, match="codebook_step"):
        parse_container(_rebuild(qat_blob, None, shrink))
