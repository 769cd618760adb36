"""What benchmarks/fuzz_container.py found, kept as tests: each re-sealed edit (a forger or a
buggy writer) is refused with SubbitFormatError naming the field, in well under a second."""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from subbit.export.container import load_packed, seal_header
from subbit.export.manifest import SubbitFormatError
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_container.py"


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    spec = importlib.util.spec_from_file_location("fuzz_container", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_container"] = mod
    spec.loader.exec_module(mod)
    return mod.make_original(tmp_path_factory.mktemp("f") / "o.subbit")


def _resealed(blob: bytes, edit: Any, path: Path) -> Path:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["subbit"])
    edit(manifest)
    header["__metadata__"]["subbit"] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    path.write_bytes(seal_header(header) + blob[8 + n :])
    return path


def _stream(path: Path) -> None:
    s = StreamingSession(PackedTransducer.from_packed(load_packed(path)))
    s.accept_audio(np.zeros(32000, np.float32))
    s.finalize()


@pytest.mark.parametrize(
    "edit, message",
    [
        # 2 s of audio took 83 s and 6.5 GB of RSS before the overlap limit
        (lambda m: m["extra"]["features"].update(n_fft=8192, hop_length=1), r"hop_length: 1 < n_fft / 16"),
        (lambda m: m["extra"]["features"].update(hop_length=24), r"hop_length: 24 < n_fft / 16 = 25"),
        # a layer's own shape check used to surface as a plain ValueError
        (lambda m: m["arch"].update(enc_layers=3), "arch / tensors disagree: model file has no LSTM weights"),
        (lambda m: m["arch"].update(pred_layers=2), "arch / tensors disagree"),
    ],
)
def test_resealed_edits_the_fuzzer_found_are_refused(original: bytes, tmp_path: Path, edit: Any, message: str) -> None:
    path = _resealed(original, edit, tmp_path / "m.subbit")
    start = time.process_time()
    with pytest.raises(SubbitFormatError, match=message):
        _stream(path)
    assert time.process_time() - start < 2.0


def test_the_largest_overlap_allowed_still_streams(original: bytes, tmp_path: Path) -> None:
    path = _resealed(original, lambda m: m["extra"]["features"].update(hop_length=25), tmp_path / "ok.subbit")
    _stream(path)
    assert copy.deepcopy(load_packed(path).manifest)["extra"]["features"]["hop_length"] == 25
