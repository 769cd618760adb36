"""libsubbit's Bifocal RNN-T against the Python packed runtime (subbit.runtime.bifocal).

Same tolerance argument as tests/runtime/test_libsubbit.py (its docstring): identical float32
operations in the same order and the same integer kernels, libm against NumPy in the
elementwise math, so greedy tokens must be identical and logits agree to LOGIT_TOL of their range.
The wake end is where the two pathways meet, so it is tested at 0 (all large), inside the
utterance, and past its end (all small), each with chunk sizes that do and do not align to frames.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession
from subbit.testing.dummies import dummy_subbit_file

from .test_libsubbit import OK, CModel, assert_logits_close, lib  # noqa: F401  (lib is a fixture)
from .test_session import audio

UNSUPPORTED = 7
SECONDS = 2.0


@pytest.fixture(scope="module")
def bifocal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dummy_subbit_file(tmp_path_factory.mktemp("bifocal"), "bifocal", blank_bias=0.2)


def python_stream(path: Path, x: np.ndarray, chunk: int, wake: float) -> tuple[list[int], list[np.ndarray], dict]:
    model = PackedTransducer.from_file(path, backend="numpy")
    logits: list[np.ndarray] = []
    join = model.joiner.join

    def logged(e, p):  # type: ignore[no-untyped-def]
        out = join(e, p)
        logits.append(np.asarray(out).reshape(-1).copy())
        return out

    model.joiner.join = logged
    s = StreamingSession(model)
    s.set_wake_end(wake)
    for i in range(0, len(x), chunk):
        s.accept_audio(x[i : i + chunk])
    s.finalize()
    return list(s.tokens), logits, dict(s.enc_state or {})


def c_stream(lib: ctypes.CDLL, path: Path, x: np.ndarray, chunk: int, wake: float) -> tuple[list[int], list[np.ndarray]]:
    model = CModel(lib, path)
    assert model.rc == OK, model.err
    s = model.session()
    lib.subbit_session_reset(s.ptr)
    assert lib.subbit_session_set_wake_end(s.ptr, ctypes.c_int64(int(round(wake * 16000)))) == OK
    for i in range(0, len(x), chunk):
        assert s.accept(x[i : i + chunk]) == OK, lib.subbit_session_error(s.ptr)
    assert lib.subbit_session_finalize(s.ptr) == OK
    return s.tokens(), list(s.logits)


@pytest.mark.parametrize("wake", [0.0, 0.8, 5.0])
@pytest.mark.parametrize("chunk", [333, 1600, 5000])
def test_bifocal_tokens_and_logits_equal_the_python_runtime(lib: ctypes.CDLL, bifocal_model: Path,  # noqa: F811
                                                            wake: float, chunk: int) -> None:
    lib.subbit_session_set_wake_end.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    x = audio(SECONDS)
    p_tokens, p_logits, _ = python_stream(bifocal_model, x, chunk, wake)
    c_tokens, c_logits = c_stream(lib, bifocal_model, x, chunk, wake)
    assert c_tokens == p_tokens
    assert_logits_close(c_logits, p_logits)


def test_the_wake_end_changes_the_output(lib: ctypes.CDLL, bifocal_model: Path) -> None:  # noqa: F811
    """The pathway choice is live in C: all-small and all-large frames give different logits."""
    lib.subbit_session_set_wake_end.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    x = audio(SECONDS)
    _, large = c_stream(lib, bifocal_model, x, 1600, 0.0)
    _, small = c_stream(lib, bifocal_model, x, 1600, 5.0)
    n = min(len(large), len(small))
    assert n > 0 and max(float(np.max(np.abs(a - b))) for a, b in zip(large[:n], small[:n])) > 1e-4


def test_wake_end_is_refused_by_other_models(lib: ctypes.CDLL, tmp_path: Path) -> None:  # noqa: F811
    lib.subbit_session_set_wake_end.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    model = CModel(lib, dummy_subbit_file(tmp_path, "rnnt"))
    assert model.rc == OK, model.err
    s = model.session()
    assert lib.subbit_session_set_wake_end(s.ptr, ctypes.c_int64(8000)) == UNSUPPORTED
