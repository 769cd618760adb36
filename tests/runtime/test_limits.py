"""Range checks on every manifest field the runtime allocates or indexes with: a bad value is
refused with SubbitFormatError naming the field, before anything large is allocated."""

from __future__ import annotations

import copy
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from subbit.asr.models import build_model
from subbit.asr.tokenizer import Tokenizer, train_tokenizer
from subbit.export.container import export_model, load_packed
from subbit.export.manifest import SubbitFormatError
from subbit.quant import QuantConfig, convert, prepare
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession, _load_tokenizer

torch.set_num_threads(1)
FEATURES = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80,
            "mean": [0.0] * 80, "std": [1.0] * 80}  # fmt: skip


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=12).eval()
    prepare(model, QuantConfig.from_dict({"default": {"method": "gq", "bits": 4}}))
    convert(model)
    path = tmp_path_factory.mktemp("l") / "m.subbit"
    export_model(model, path, arch=model.config, extra={"features": FEATURES})
    return load_packed(path)


def _with(pm: Any, edit: Any) -> Any:
    pm = copy.copy(pm)
    pm.manifest = copy.deepcopy(pm.manifest)
    edit(pm.manifest)
    return pm


def test_the_intact_model_streams(packed: Any) -> None:
    s = StreamingSession(PackedTransducer.from_packed(packed))
    s.accept_audio(np.zeros(4000, np.float32))
    s.finalize()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stack", 0, r"arch\.stack: 0 outside \[1, 64\]"),
        ("stack", 10**9, r"arch\.stack: 1000000000 outside"),
        ("stack", 3, "lstms.0 input size"),
        ("stack", "2", r"arch\.stack: must be an integer"),
        ("pred_layers", 0, r"arch\.pred_layers: 0 outside \[1, 64\]"),
        ("enc_layers", -1, r"arch\.enc_layers: -1 outside"),
        ("enc_layers", 1, r"stack2_after: 1 outside \[0, enc_layers - 1 = 0\]"),
        ("stack2", 0, r"arch\.stack2: 0 outside"),
        ("n_mels", 10**6, r"arch\.n_mels: 1000000 outside \[1, 512\]"),
        ("vocab_size", 13, r"vocab_size\) is 12, the config implies 13"),
        ("blank", 12, r"arch\.blank: 12 outside"),
        ("blank", -1, r"arch\.blank: -1 outside"),
        ("chunk_frames", -5, r"arch\.chunk_frames: -5 outside"),
        ("arch", "transformer", "field 'arch' must be"),
    ],
)
def test_bad_arch_fields_are_refused_naming_the_field(packed: Any, key: str, value: Any, message: str) -> None:
    pm = _with(packed, lambda m: m["arch"].update({key: value}))
    with pytest.raises(SubbitFormatError, match=message):
        StreamingSession(PackedTransducer.from_packed(pm)).accept_audio(np.zeros(4000, np.float32))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_fft", 4_000_000, r"features\.n_fft: 4000000 outside \[16, 8192\]"),
        ("n_fft", 0, r"features\.n_fft: 0 outside"),
        ("n_fft", 400.5, r"features\.n_fft: must be an integer"),
        ("hop_length", 0, r"features\.hop_length: 0 outside"),
        ("hop_length", 800, r"hop_length: 800 > n_fft=400"),
        ("sample_rate", 10**12, r"features\.sample_rate"),
        ("n_mels", 40, r"n_mels=40 but the model expects 80"),
        ("mean", [0.0] * 79, r"features\.mean: expected a list of n_mels=80 numbers, got 79 values"),
        ("mean", [0.0] * 10**5, r"features\.mean: expected a list of n_mels=80"),
        ("mean", {"a": 1}, r"features\.mean: expected a list"),
        ("std", [1.0] * 79 + [0.0], r"features\.std: values must be finite and > 0"),
        ("std", [1.0] * 79 + ["x"], r"features\.std: every value must be a number"),
        ("kind", "mfcc", "kind 'mfcc' is not supported"),
    ],
)
def test_bad_feature_fields_are_refused_naming_the_field(packed: Any, key: str, value: Any, message: str) -> None:
    pm = _with(packed, lambda m: m["extra"]["features"].update({key: value}))
    model = PackedTransducer.from_packed(pm)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(SubbitFormatError, match=message):
        StreamingSession(model)
    assert time.monotonic() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing large allocated


def test_a_missing_feature_field_is_named(packed: Any) -> None:
    pm = _with(packed, lambda m: m["extra"]["features"].pop("hop_length"))
    with pytest.raises(SubbitFormatError, match="extra.features: no field 'hop_length'"):
        StreamingSession(PackedTransducer.from_packed(pm))


# -- the tokenizer blob ------------------------------------------------------------------------
def _blob(header: Any, rest: bytes = b"") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return b"SBTOK1\n" + len(h).to_bytes(4, "little") + h + rest


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"garbage", "bad magic"),
        (_blob(["char", 3]), "header must be a JSON object, got list"),
        (_blob(b"[" * 100_000 + b"]" * 100_000), "header"),
        (_blob({"kind": "char", "vocab_size": 3, "chars": [[[["a"]]]]}), "nested deeper"),
        (_blob({"kind": "morse", "vocab_size": 3}), "kind: expected 'char' or 'bpe'"),
        (_blob({"kind": "char", "vocab_size": 10**9, "chars": ["a"]}), "vocab_size: expected an integer in"),
        (_blob({"kind": "char", "vocab_size": 5, "chars": ["a", "b"]}), "vocab_size: 5 but chars holds 2"),
        (_blob({"kind": "char", "vocab_size": 3, "chars": ["a", 7]}), "chars: expected a non-empty list"),
        (_blob({"kind": "bpe", "vocab_size": 30}, b"\xff\x00garbage proto"), "cannot be loaded"),
        (_blob({"kind": "bpe", "vocab_size": 30}), "no SentencePiece model"),
        (b"SBTOK1\n" + (10**8).to_bytes(4, "little") + b"{}", "header length"),
        (_blob(b"\xff\xfe"), "not valid JSON"),
    ],
)
def test_bad_tokenizer_blobs_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(SubbitFormatError, match="tokenizer blob: .*" + message):
        _load_tokenizer(blob)


def test_good_tokenizer_blobs_load() -> None:
    char = Tokenizer("char", chars=list("abc "))
    assert _load_tokenizer(char.to_bytes()).vocab_size == 5
    bpe = train_tokenizer(["hello world", "a quick brown fox jumps over the lazy dog"] * 20, "bpe", 30)
    assert _load_tokenizer(np.frombuffer(bpe.to_bytes(), np.uint8)).vocab_size == bpe.vocab_size


def test_a_file_tampered_on_disk_is_refused_before_the_runtime_sees_it(packed: Any, tmp_path: Path) -> None:
    """stack = 0 written into the manifest of a real file: the header digest refuses it."""
    src = tmp_path / "src.subbit"
    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=12).eval()
    export_model(model, src, arch=model.config)
    raw = src.read_bytes()
    bad = raw.replace(b'\\"stack\\":2', b'\\"stack\\":0', 1)
    assert bad != raw
    src.write_bytes(bad)
    with pytest.raises(SubbitFormatError, match="header_sha256 does not match"):
        PackedTransducer.from_file(src)
