"""libsubbit under valgrind memcheck: no uninitialised read, no invalid access, no leak, on the
portable and the AVX2 kernel paths (valgrind has no AVX-512), for both encoders.

The AVX2 kernel's short-block loads reach into the activation buffer's slack; libsubbit zeroes
that slack (libsubbit/src/linear.c), so memcheck reports nothing. Slow (valgrind: ~10 s a run).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from subbit.runtime import kernels

from .test_libsubbit import CLI, CModel, char_model, conformer_model, lib  # noqa: F401
from .test_session import audio

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind not installed")]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vg") / "a.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((audio(1.0) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("kernel", ["portable", "avx2"])
@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_memcheck_is_clean(lib: ctypes.CDLL, request: pytest.FixtureRequest, wav: Path, kernel: str, arch: str) -> None:
    if kernel == "avx2" and "avx2" not in kernels.available_paths():
        pytest.skip("no AVX2 on this CPU")
    model = request.getfixturevalue("char_model" if arch == "rnnt" else "conformer_model")
    cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
           str(CLI), "--chunk", "333", str(model), str(wav)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SUBBIT_KERNEL": kernel})
    assert out.returncode == 0 and "uninitialised" not in out.stderr, out.stderr[-3000:]
    # and the run under valgrind computed what the library computes natively
    pcm = (audio(1.0) * 32767).astype("<i2")
    assert out.stdout.splitlines()[-1] == CModel(lib, model).session().stream(pcm, 333)
