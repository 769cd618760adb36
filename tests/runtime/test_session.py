"""StreamingSession: transcripts equal offline greedy decoding; any audio chunking works.

Tiny presets with a sharpened joiner (weights x3, blank bias moved) so that tokens appear. The
packed model computes with int8 activations, so a decision the float reference takes by a hair
may flip: then the first diverging decision must be a near tie of the reference's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from subbit.asr.decode import greedy_search
from subbit.asr.models import build_from_config, build_model
from subbit.asr.tokenizer import train_tokenizer
from subbit.bench.int8_baselines import TorchStreamingModel
from subbit.bench.latency import synth_audio
from subbit.export.container import export_model, load_dequantized
from subbit.quant import QuantConfig, convert, prepare
from subbit.runtime.frontend import StreamingLogMel
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession
from subbit.testing.dummies import dummy_subbit_file

torch.set_num_threads(1)
BLANK_BIAS = {"rnnt": 0.2, "conformer": 1.0}
NEAR_TIE = 0.05  # of the logits' range at that decision


def audio(seconds: float = 2.0) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.05
    return synth_audio(seconds, seed=1) + noise


def export_tiny(tmp: Path, arch: str, tokenizer_bytes: bytes | None = None) -> Path:
    """4-bit GQ tiny model with sharpened logits (greedy decoding emits tokens, ties are rare)."""
    return dummy_subbit_file(tmp, arch, tokenizer_bytes=tokenizer_bytes, blank_bias=BLANK_BIAS[arch])


def reference(path: Path) -> torch.nn.Module:
    manifest, state = load_dequantized(path, codebook="int8")
    model = build_from_config(manifest["arch"]).eval()
    model.load_state_dict(state)
    return model


class Recorder:
    """Wraps a model's joiner to log the logits of every greedy decision."""

    def __init__(self, model: Any) -> None:
        self.model, self.logits = model, []
        self.encoder, self.predictor = model.encoder, model.predictor
        self.blank, self.n_mels = model.blank, model.n_mels
        self.tokenizer_bytes = None
        outer = self

        class J:
            project_enc = staticmethod(model.joiner.project_enc)
            project_pred = staticmethod(model.joiner.project_pred)

            @staticmethod
            def join(e: Any, p: Any) -> np.ndarray:
                out = np.asarray(model.joiner.join(e, p)).reshape(-1)
                outer.logits.append(out)
                return out

        self.joiner = J()


def stream(model: Any, wave: np.ndarray, piece: int | None = None) -> list[int]:
    s = StreamingSession(model)
    step = piece or wave.size
    for i in range(0, wave.size, step):
        s.accept_audio(wave[i : i + step])
    return s.finalize_tokens()


@pytest.fixture(scope="module", params=["rnnt", "conformer"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, export_tiny(tmp_path_factory.mktemp(request.param), request.param)


def offline_tokens(ref: torch.nn.Module, wave: np.ndarray) -> list[int]:
    x = torch.from_numpy(StreamingLogMel().frames(wave))[None]
    with torch.no_grad():
        enc, lens = ref.encoder(x, torch.tensor([x.shape[1]]))
        return greedy_search(ref, enc, lens)[0]


def test_session_loop_equals_offline_greedy_in_float(case: tuple[str, Path]) -> None:
    """Same weights in float through the session loop: exactly the offline greedy tokens."""
    _, path = case
    ref = reference(path)
    wave = audio()
    expected = offline_tokens(ref, wave)
    assert len(expected) > 5
    assert stream(TorchStreamingModel(ref), wave, piece=1234) == expected


def test_packed_session_equals_offline_greedy_up_to_near_ties(case: tuple[str, Path]) -> None:
    _, path = case
    ref = reference(path)
    wave = audio()
    expected = offline_tokens(ref, wave)
    packed_rec, ref_rec = Recorder(PackedTransducer.from_file(path)), Recorder(TorchStreamingModel(ref))
    got = stream(packed_rec, wave, piece=999)
    assert stream(ref_rec, wave, piece=999) == expected
    if got != expected:
        j = next(i for i, (a, b) in enumerate(zip(packed_rec.logits, ref_rec.logits)) if a.argmax() != b.argmax())
        r = ref_rec.logits[j]
        margin = r[r.argmax()] - r[packed_rec.logits[j].argmax()]
        assert margin <= NEAR_TIE * (r.max() - r.min()), f"decision {j} flipped with margin {margin}"
    else:
        assert len(got) > 5


@pytest.mark.parametrize("piece", [1, 37, 160, 1001, 4801])
def test_chunking_does_not_change_the_result(case: tuple[str, Path], piece: int) -> None:
    _, path = case
    model = PackedTransducer.from_file(path)
    wave = audio(1.0)
    assert stream(model, wave, piece=piece) == stream(model, wave)


def test_partial_transcripts_grow_and_reset_repeats(case: tuple[str, Path]) -> None:
    _, path = case
    s = StreamingSession(PackedTransducer.from_file(path))
    wave = audio(1.0)
    partial = [len(s.accept_audio(wave[i : i + 1600]).split()) for i in range(0, wave.size, 1600)]
    assert partial == sorted(partial)
    first = s.finalize_tokens()
    s.reset()
    s.accept_audio(wave)
    assert s.finalize_tokens() == first


def test_transcript_uses_embedded_tokenizer(tmp_path: Path) -> None:
    tok = train_tokenizer(["abcdefghij "], kind="char")
    assert tok.vocab_size == 12
    path = export_tiny(tmp_path, "conformer", tokenizer_bytes=tok.to_bytes())
    s = StreamingSession(PackedTransducer.from_file(path))
    s.accept_audio(audio(1.0))
    text = s.finalize()
    assert text == tok.decode(s.finalize_tokens()) and text


def test_bad_input_is_refused(case: tuple[str, Path]) -> None:
    _, path = case
    s = StreamingSession(PackedTransducer.from_file(path))
    with pytest.raises(ValueError, match="1-D"):
        s.accept_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="float"):
        s.accept_audio(np.zeros(100, np.int16))
    s.finalize()
    with pytest.raises(ValueError, match="reset"):
        s.accept_audio(np.zeros(100, np.float32))


def test_frontend_normalisation_comes_from_the_manifest(tmp_path: Path) -> None:
    """``subbit export`` stores the run's feature settings and global mean/std in extra.features."""
    from subbit.asr.features import LogMel

    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=12).eval()
    prepare(model, QuantConfig.from_dict({"default": {"method": "gq", "bits": 4}}))
    convert(model)
    fe = LogMel()
    fe.set_stats(torch.linspace(-8, -2, 80), torch.linspace(1, 3, 80))
    feats = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80,
             "mean": fe.mean.tolist(), "std": fe.std.tolist()}
    path = tmp_path / "m.subbit"
    export_model(model, path, arch=model.config, extra={"features": feats})
    s = StreamingSession(PackedTransducer.from_file(path))
    wave = audio(0.5)
    ref, _ = fe(torch.from_numpy(wave)[None])
    np.testing.assert_allclose(s.frontend.frames(wave), ref[0].numpy(), rtol=1e-4, atol=2e-4)
    feats["kind"] = "mfcc"
    export_model(model, path, arch=model.config, extra={"features": feats})
    with pytest.raises(ValueError, match="extra.features"):
        StreamingSession(PackedTransducer.from_file(path))
