"""Packed runtime vs the dequantized PyTorch model: tiny presets, GQ 4-bit, prepare -> convert -> export.

Tolerance: the runtime computes every quantized matmul with int8 activations (per row, step
max|x|/127) against the deployed int8 codebook. The reference is the same model with the same
deployed weights (``load_dequantized(codebook="int8")``) in float, so only activation rounding
differs: we require a relative error ||y - y_ref|| / ||y_ref|| <= 3% on encoder outputs and joiner
logits (measured ~0.5-1% through the tiny encoders).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from subbit.asr.models import build_from_config
from subbit.export.container import load_dequantized
from subbit.runtime import kernels
from subbit.runtime.frontend import StreamingLogMel
from subbit.runtime.models import PackedTransducer
from subbit.testing.dummies import dummy_subbit_file

torch.set_num_threads(1)
REL_TOL = 0.03
C_PATHS = [p for p in kernels.available_paths() if p != "ref"]


def export_tiny(tmp: Path, arch: str, rules: dict | None = None, bits: int = 4) -> Path:
    return dummy_subbit_file(tmp, arch, bits=bits, rules=rules)


def reference(path: Path) -> torch.nn.Module:
    manifest, state = load_dequantized(path, codebook="int8")
    model = build_from_config(manifest["arch"]).eval()
    model.load_state_dict(state)
    return model


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def feats(seconds: float = 1.0) -> np.ndarray:
    wave = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    return StreamingLogMel().frames(wave)


def runtime_encode(pt: PackedTransducer, x: np.ndarray) -> np.ndarray:
    st = pt.encoder.init_state()
    y, st = pt.encoder.step(x, st)
    tail, _ = pt.encoder.flush(st)
    return np.concatenate([y, tail])


@pytest.fixture(scope="module", params=["rnnt", "conformer"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("path", ["ref"] + C_PATHS[-1:])
def test_encoder_and_joiner_match_dequantized_torch(exported: Path, path: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBBIT_KERNEL", path)
    pt = PackedTransducer.from_file(exported)
    ref = reference(exported)
    x = feats()
    y = runtime_encode(pt, x)
    with torch.no_grad():
        y_ref, lens = ref.encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))
    assert y.shape == tuple(y_ref[0].shape) and y.shape[0] == int(lens[0]) > 0
    assert rel(y, y_ref[0].numpy()) <= REL_TOL

    st = pt.predictor.init_state()
    out, st = pt.predictor.step(0, st)
    out, st = pt.predictor.step(3, st)
    logits = pt.joiner.join(pt.joiner.project_enc(y), pt.joiner.project_pred(out))
    with torch.no_grad():
        p_ref = ref.predictor(torch.tensor([[3]]))[:, -1]
        l_ref = ref.joiner(torch.from_numpy(y)[None], p_ref[:, None])[0]
    assert rel(out, p_ref[0].numpy()) <= REL_TOL
    assert rel(logits, l_ref.numpy()) <= REL_TOL


@pytest.mark.skipif(not C_PATHS, reason="compiled kernels not available")
def test_c_path_equals_reference_path(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels are bit-identical to their NumPy reference, so the whole encoder is too."""
    x = feats(0.5)
    outs = []
    for path in ("ref", C_PATHS[-1]):
        monkeypatch.setenv("SUBBIT_KERNEL", path)
        outs.append(runtime_encode(PackedTransducer.from_file(exported), x))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_mixed_float_and_packed_weights(tmp_path: Path) -> None:
    """Layers a rule leaves in float run through the NumPy float path, next to packed ones."""
    path = export_tiny(tmp_path, "rnnt", rules={"Embedding": None, "joiner.out.weight": None})
    pt = PackedTransducer.from_file(path)
    assert "predictor.embed.weight" in pt.store.floats and "joiner.out.weight" in pt.store.floats
    assert pt.store.is_packed("encoder.proj.weight")
    ref = reference(path)
    x = feats()
    with torch.no_grad():
        y_ref, _ = ref.encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))
    assert rel(runtime_encode(pt, x), y_ref[0].numpy()) <= REL_TOL


def test_weight_bytes_shrink_with_bits(tmp_path: Path) -> None:
    sizes = {b: PackedTransducer.from_file(export_tiny(tmp_path / str(b), "rnnt", bits=b)).weight_bytes
             for b in (2, 8)}
    assert sizes[2] < sizes[8]


def test_8bit_per_channel_model_holds_about_its_file_and_matches_the_reference(tmp_path: Path) -> None:
    """8-bit per-row codebooks are 2**8 float32 entries per row in the file's model; the runtime
    keeps only the int8 weights it multiplies (or indices and int8 tables on AVX-512), not the
    float codebooks (6.1x the file before they were let go, RESULTS E.5)."""
    import subbit.quant as sq
    from subbit.asr.models import build_model
    from subbit.export import export_model

    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=12, enc_hidden=256).eval()
    sq.prepare(model, sq.QuantConfig.from_dict({"default": {"method": "uniform", "bits": 8, "granularity": "channel"}}))
    sq.convert(model)
    path = tmp_path / "qat8.subbit"
    export_model(model, path, arch=model.config)
    pt = PackedTransducer.from_file(path, backend="numpy")
    x = feats()
    y = runtime_encode(pt, x)
    limit = 1.1 if kernels.default_path() != "avx512" else 1.6  # AVX-512 keeps a 256 B int8 table per row
    assert pt.weight_bytes <= limit * path.stat().st_size
    assert not pt.store.packed  # every packed tensor was handed to a layer: no float codebook is held
    with torch.no_grad():
        y_ref, _ = reference(path).encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))
    assert rel(y, y_ref[0].numpy()) <= REL_TOL


def test_unknown_arch_is_refused(exported: Path) -> None:
    from subbit.export.container import load_packed

    pm = load_packed(exported)
    pm.manifest["arch"] = {**pm.manifest["arch"], "arch": "transformer"}
    with pytest.raises(ValueError, match="'arch'"):
        PackedTransducer.from_packed(pm)


def test_runtime_imports_no_training_code_nor_torch(exported: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from subbit.runtime import PackedTransducer, StreamingSession\n"
        f"s = StreamingSession(PackedTransducer.from_file({str(exported)!r}))\n"
        "s.accept_audio(np.zeros(8000, np.float32)); s.finalize()\n"
        "bad = [m for m in ('torch', 'subbit.quant', 'subbit.asr.models', 'subbit.asr.train') if m in sys.modules]\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout
