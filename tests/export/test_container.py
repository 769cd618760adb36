"""The .subbit container: round trips with a real subbit.quant model, size vs theory,
safetensors compatibility, and refusal of wrong-version / tampered / truncated files."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import subbit.quant as q
from subbit.export import (
    SubbitFormatError,
    export_model,
    load_dequantized,
    load_packed,
    read_container,
)
from subbit.export.bitpack import PackedTensor
from subbit.export.container import seal_header
from subbit.runtime import kernels
from subbit.testing.dummies import dummy_net

torch.set_num_threads(1)


def toy_net() -> nn.Module:
    """Embedding, Conv1d, LSTM and Linear: the layer kinds the ASR models quantize."""
    return dummy_net(seed=None)


def prepared_toy(bits: int = 3, granularity: str = "tensor") -> nn.Module:
    torch.manual_seed(0)
    m = toy_net()
    cfg = q.QuantConfig.from_dict({"default": {"bits": bits, "granularity": granularity},
                                   "rules": {"out.weight": {"bits": 5}}})  # fmt: skip
    q.prepare(m, cfg)
    q.convert(m)
    return m.eval()


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_dequantized_round_trip_matches_converted_model(tmp_path: Path, granularity: str) -> None:
    model = prepared_toy(granularity=granularity)
    path = tmp_path / "toy.subbit"
    summary = export_model(model, path, arch={"arch": "toy", "d": 64}, tokenizer_bytes=b"\x00tok\xff",
                           extra={"note": "test"}, tokenizer_kind="bytes")  # fmt: skip
    assert summary.file_bytes == path.stat().st_size
    manifest, state = load_dequantized(path)
    plain = toy_net()
    assert sorted(state) == sorted(plain.state_dict())
    plain.load_state_dict(state)
    plain.eval()
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        assert torch.equal(plain(tokens), model(tokens))
    assert manifest["arch"] == {"arch": "toy", "d": 64} and manifest["extra"] == {"note": "test"}
    qmeta = manifest["quantized"]
    assert set(qmeta) == {t.name for t in q.quantized_tensors(model)}
    assert qmeta["out.weight"]["bits"] == 5 and qmeta["emb.weight"]["bits"] == 3
    assert all(v["granularity"] == granularity and v["method"] == "gq" for v in qmeta.values())


def test_packed_tensors_hold_the_encoded_indices(tmp_path: Path) -> None:
    model = prepared_toy()
    path = tmp_path / "toy.subbit"
    export_model(model, path, arch={"arch": "toy"}, tokenizer_bytes=b"abc")
    pm = load_packed(path)
    assert pm.tokenizer_bytes == b"abc" and pm.arch == {"arch": "toy"}
    for qt in q.quantized_tensors(model):
        idx, cb = qt.quantizer.encode(qt.latent)
        pt = pm.packed[qt.name]
        np.testing.assert_array_equal(pt.indices(), idx.numpy())
        np.testing.assert_array_equal(pt.codebook, cb.float().numpy())
    # the runtime kernel on a loaded weight agrees with its reference
    w = pm.packed["out.weight"]
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    np.testing.assert_array_equal(kernels.packed_linear(x, w), kernels.reference_packed_linear(x, w))


def test_int8_codebook_view_is_the_deployed_weight(tmp_path: Path) -> None:
    path = tmp_path / "toy.subbit"
    export_model(prepared_toy(), path, arch={})
    _, state = load_dequantized(path, codebook="int8")
    pm = load_packed(path)
    deployed = kernels.dequantized_weight(pm.packed["lstm.weight_hh_l0"])
    np.testing.assert_array_equal(state["lstm.weight_hh_l0"].numpy(), deployed)


def test_fp16_float_tensors(tmp_path: Path) -> None:
    model = prepared_toy()
    path = tmp_path / "toy16.subbit"
    s32 = export_model(model, tmp_path / "toy32.subbit", arch={})
    s16 = export_model(model, path, arch={}, fp16_float_tensors=True)
    assert s16.file_bytes < s32.file_bytes
    manifest, state = load_dequantized(path)
    assert manifest["float"]["norm.weight"]["dtype"] == "F16"
    assert state["out.bias"].dtype == torch.float32
    torch.testing.assert_close(state["out.bias"], model.out.bias.detach(), rtol=1e-3, atol=1e-3)


def test_file_size_within_two_percent_of_theory(tmp_path: Path) -> None:
    """theory = sum over groups of ceil(N_g * b / 8) + codebooks + float tensors + header."""

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(80, 256)
            self.lstm = nn.LSTM(256, 256)
            self.out = nn.Linear(256, 30)

    torch.manual_seed(0)
    model = Wide()
    q.prepare(model, q.QuantConfig.from_dict({"default": {"bits": 3}}))
    q.convert(model)
    s = export_model(model, tmp_path / "wide.subbit", arch={"arch": "wide"})
    theory = s.header_bytes
    for qt in q.quantized_tensors(model):
        per_group = qt.latent.numel() // qt.quantizer.num_groups
        theory += qt.quantizer.num_groups * (-(-per_group * qt.quantizer.bits // 8) + 4 * qt.quantizer.levels)
    theory += sum(4 * p.numel() for n, p in model.named_parameters() if n.split(".")[-1].startswith("bias"))
    assert theory == s.theory_bytes
    size = (tmp_path / "wide.subbit").stat().st_size
    assert size == s.file_bytes
    assert size <= 1.02 * theory, f"{size} bytes vs theory {theory}"
    assert s.fp32_bytes > 8 * s.quantized_bytes
    text = str(s)
    assert "lstm.weight_hh_l0" in text and "fp32" in text and "theory" in text


def test_readable_by_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "toy.subbit"
    export_model(prepared_toy(), path, arch={"arch": "toy"})
    manifest, arrays = read_container(path)
    with safe_open(str(path), framework="np") as f:
        assert json.loads(f.metadata()["subbit"]) == manifest
        assert set(f.keys()) == set(arrays)
        for name in f.keys():
            np.testing.assert_array_equal(f.get_tensor(name), arrays[name])


@dataclass
class FakeQT:
    name: str
    quantizer: object
    latent: torch.Tensor


class FakeQuantizer:
    """Stand-in with the WeightQuantizer export surface (encode, bits, granularity, method)."""

    method = "fake"

    def __init__(self, idx: torch.Tensor, codebook: torch.Tensor, bits: int) -> None:
        self.idx, self.codebook, self.bits, self.granularity = idx, codebook, bits, "tensor"

    def encode(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.idx, self.codebook


def test_explicit_quantized_list(tmp_path: Path) -> None:
    lin = nn.Linear(16, 4)
    idx = torch.randint(0, 4, (4, 16))
    cb = torch.tensor([[-1.0, -0.5, 0.5, 1.0]])
    qt = FakeQT("weight", FakeQuantizer(idx, cb, 2), lin.weight)
    export_model(lin, tmp_path / "f.subbit", arch={}, quantized=[qt])
    _, state = load_dequantized(tmp_path / "f.subbit")
    assert torch.equal(state["weight"], cb[0][idx])
    assert torch.equal(state["bias"], lin.bias.detach())
    bad = FakeQT("weight", FakeQuantizer(idx + 4, cb, 2), lin.weight)
    with pytest.raises(ValueError, match="weight"):
        export_model(lin, tmp_path / "g.subbit", arch={}, quantized=[bad])
    assert not (tmp_path / "g.subbit").exists()


# -- refusal ------------------------------------------------------------------------------------
def rewrite_header(blob: bytes, edit, seal: bool = True) -> bytes:  # type: ignore[no-untyped-def]
    """Edit header and manifest; ``seal``: recompute header_sha256, as a forger would, so that
    the validators behind the digest are what is tested."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["subbit"])
    edit(header, manifest)
    header["__metadata__"]["subbit"] = json.dumps(manifest)
    if seal:
        return seal_header(header) + blob[8 + n :]
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob[8 + n :]


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("c") / "toy.subbit"
    export_model(prepared_toy(), path, arch={"arch": "toy"}, tokenizer_bytes=b"tok")
    return path.read_bytes()


def load_bytes(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "x.subbit"
    p.write_bytes(data)
    read_container(p)


def test_intact_blob_loads(tmp_path: Path, blob: bytes) -> None:
    load_bytes(tmp_path, blob)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h, m: m.update(schema_version=2), "unsupported version 2"),
        (lambda h, m: m.update(format="other"), "not a .subbit file"),
        (lambda h, m: m["quantized"]["out.weight"].update(bits=9), r"bits: 9 outside \[1, 8\]"),
        (lambda h, m: m["quantized"]["out.weight"].update(bits=4), "expected U8"),
        (lambda h, m: m["quantized"]["out.weight"].update(shape=[30, 65]), "count"),
        (lambda h, m: m["quantized"]["out.weight"].update(groups=2), "groups"),
        (lambda h, m: m["quantized"]["out.weight"].update(packing="dense"), "packing"),
        (lambda h, m: m["float"].pop("out.bias"), "do not match the manifest"),
        (lambda h, m: m.update(data_sha256="0" * 64), "sha256"),
        (lambda h, m: h["out.bias"].update(dtype="F64"), "unsupported dtype"),
        (lambda h, m: h["out.bias"].update(data_offsets=[0, 4]), "bytes do not hold"),
    ],
)
def test_tampered_header_is_refused(tmp_path: Path, blob: bytes, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SubbitFormatError, match=message):
        load_bytes(tmp_path, rewrite_header(blob, edit))


def test_tampered_data_and_truncation_are_refused(tmp_path: Path, blob: bytes) -> None:
    flipped = bytearray(blob)
    flipped[-10] ^= 0x01
    with pytest.raises(SubbitFormatError, match="sha256"):
        load_bytes(tmp_path, bytes(flipped))
    for cut in (0, 5, 8, 100, len(blob) // 2, len(blob) - 1):
        with pytest.raises(SubbitFormatError):
            load_bytes(tmp_path, blob[:cut])
    with pytest.raises(SubbitFormatError, match="cover"):
        load_bytes(tmp_path, blob + b"\x00" * 8)


def test_nonzero_padding_and_nan_codebook_are_refused(tmp_path: Path) -> None:
    """The writer refuses both; a file made without it (a consistent sha256) is refused on load."""
    import json

    from subbit.export.container import _safetensors_bytes, parse_container, write_packed

    pt = PackedTensor.from_indices(np.zeros((2, 5), np.int64), np.zeros((1, 4), np.float32), 2)
    good = tmp_path / "g.subbit"
    write_packed(good, {"w": pt}, {}, arch={})
    manifest, arrays = parse_container(good.read_bytes())
    for target, value, message in (("w.idx", 0x80, "padding"), ("w.codebook", np.nan, "non-finite")):
        bad = {k: v.copy() for k, v in arrays.items()}
        bad[target][0, -1] = value
        if target == "w.idx":
            pt.packed = bad[target]
        else:
            pt.codebook = bad[target]
        with pytest.raises(ValueError, match=message):
            write_packed(tmp_path / "w.subbit", {"w": pt}, {}, arch={})
        assert not (tmp_path / "w.subbit").exists()
        pt.packed, pt.codebook = arrays["w.idx"], arrays["w.codebook"]
        blob, _ = _safetensors_bytes({k: ("U8" if k.endswith(".idx") else "F32", v) for k, v in bad.items()},
                                     lambda sha: {"subbit": json.dumps({**manifest, "data_sha256": sha})})  # fmt: skip
        (tmp_path / "p.subbit").write_bytes(blob)
        with pytest.raises(SubbitFormatError, match=message):
            read_container(tmp_path / "p.subbit")


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_container(tmp_path / "nope.subbit")


@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_cli_export_of_a_run(tmp_path: Path, arch: str, capsys: pytest.CaptureFixture[str], tiny_run) -> None:
    from subbit.asr.models.presets import build_from_config
    from subbit.cli import main

    _, model = tiny_run(arch)
    out = tmp_path / "m.subbit"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "fp32 model / file" in printed and out.is_file()
    manifest, state = load_dequantized(out)
    assert manifest["arch"]["arch"] == arch and manifest["tokenizer"]["kind"] == "char"
    plain = build_from_config(manifest["arch"])
    plain.load_state_dict(state)  # strict: the keys are the unprepared model's names
    for name, p in model.state_dict().items():
        if name in state and ".subbit_quant." not in name:
            assert torch.equal(state[name], p)
    for qt in q.quantized_tensors(model):
        assert torch.equal(state[qt.name], qt.quantizer.hard(qt.latent))
    assert json.loads((tmp_path / "s.json").read_text())["file_bytes"] == out.stat().st_size


def test_cli_export_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from subbit.cli import main

    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "m.subbit")]) == 2
    assert "export: error" in capsys.readouterr().err
    assert not (tmp_path / "m.subbit").exists()
