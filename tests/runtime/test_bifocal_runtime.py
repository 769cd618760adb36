"""Bifocal RNN-T in the packed runtime: GQ 4-bit export == dequantized PyTorch model on every
pathway pattern, streaming in chunks == one call, the session's wake-word end == a prefix mask.

Tolerance: the same 3% relative error as tests/runtime/test_parity.py (int8 activation rounding
is the only difference from the dequantized reference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subbit.runtime.models import PackedTransducer, wake_frames
from subbit.runtime.session import StreamingSession

from .test_parity import REL_TOL, export_tiny, feats, reference, rel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("bifocal"), "bifocal")


def masks(t: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(3)
    runs = np.repeat(np.arange(t) % 2 == 0, g.integers(1, 9, t))[:t]
    return {"large": np.zeros(t, bool), "small": np.ones(t, bool), "wake": np.arange(t) < t // 3,
            "switching": runs}


def encode(pt: PackedTransducer, x: np.ndarray, mask: np.ndarray, chunk: int | None = None) -> np.ndarray:
    st = pt.encoder.init_state()
    chunk = chunk or x.shape[0]
    ys = []
    for a in range(0, x.shape[0], chunk):
        y, st = pt.encoder.step(x[a : a + chunk], st, mask[a : a + chunk])
        ys.append(y)
    ys.append(pt.encoder.flush(st)[0])
    return np.concatenate(ys)


@pytest.mark.parametrize("kind", ["large", "small", "wake", "switching"])
def test_runtime_matches_dequantized_torch(exported: Path, kind: str) -> None:
    pt = PackedTransducer.from_file(exported)
    ref = reference(exported)
    x = feats()
    mask = masks(x.shape[0])[kind]
    y = encode(pt, x, mask)
    with torch.no_grad():
        y_ref, lens = ref.encoder(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]), torch.from_numpy(mask)[None])
    assert y.shape == tuple(y_ref[0].shape) and y.shape[0] == int(lens[0]) > 0
    assert rel(y, y_ref[0].numpy()) <= REL_TOL


def test_runtime_follows_the_mask(exported: Path) -> None:
    """Different pathways give different outputs (so the parity above is not vacuous)."""
    pt = PackedTransducer.from_file(exported)
    x = feats()
    m = masks(x.shape[0])
    assert rel(encode(pt, x, m["small"]), encode(pt, x, m["large"])) > 0.1


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_streaming_in_chunks_equals_one_call(exported: Path, chunk: int) -> None:
    pt = PackedTransducer.from_file(exported)
    x = feats(0.5)
    mask = masks(x.shape[0])["switching"]
    np.testing.assert_allclose(encode(pt, x, mask, chunk), encode(pt, x, mask), atol=1e-5, rtol=0)


def test_session_wake_end_equals_a_prefix_mask(exported: Path) -> None:
    pt = PackedTransducer.from_file(exported, backend="numpy")  # the NumPy session's encoder state
    wave = (np.random.default_rng(1).standard_normal(12000) * 0.1).astype(np.float32)
    wake_end = 0.3
    s1 = StreamingSession(pt)
    s1.set_wake_end(wake_end)
    for a in range(0, len(wave), 1600):
        s1.accept_audio(wave[a : a + 1600])
    s1.finalize_tokens()
    s2 = StreamingSession(pt)
    x = s2.frontend.accept(wave)
    n = wake_frames(wake_end)
    st = pt.encoder.init_state()
    y, _ = pt.encoder.step(x, st, np.arange(x.shape[0]) < n)
    y_session, _ = pt.encoder.step(x, {**pt.encoder.init_state(), "small_until": n})
    np.testing.assert_array_equal(y, y_session)
    assert s1.enc_state["small_until"] == n > 0 and s1.enc_state["pos"] == x.shape[0]
    s2.accept_features(x, np.arange(x.shape[0]) < n)
    assert s2.finalize_tokens() == s1.tokens


def test_session_refuses_wake_end_for_other_models(tmp_path: Path) -> None:
    pt = PackedTransducer.from_file(export_tiny(tmp_path, "rnnt"))
    with pytest.raises(ValueError, match="pathway"):
        StreamingSession(pt).set_wake_end(0.3)


def test_small_hidden_must_match_the_tensors(exported: Path) -> None:
    from subbit.export.container import load_packed

    pm = load_packed(exported)
    pm.manifest["arch"] = {**pm.manifest["arch"], "small_hidden": pm.manifest["arch"]["small_hidden"] + 1}
    with pytest.raises(ValueError, match="small_hidden"):
        PackedTransducer.from_packed(pm)
    pm.manifest["arch"] = {**pm.manifest["arch"], "small_hidden": 0}
    with pytest.raises(ValueError, match="small_hidden"):
        PackedTransducer.from_packed(pm)


def test_manifest_describes_the_bifocal_encoder(exported: Path) -> None:
    from subbit.export.container import load_packed

    arch = load_packed(exported).manifest["arch"]
    assert arch["arch"] == "bifocal" and arch["small_hidden"] < arch["enc_hidden"]
    json.dumps(arch)  # plain JSON
