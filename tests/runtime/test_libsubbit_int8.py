"""libsubbit on 8-bit tensors. Where the model runs without AVX-512, the loader rewrites 8-bit
indices in place as their int8 weights (libsubbit/src/weights.c) so the kernels take their int8
route; every reader of such a tensor (the kernels, the packed predictor embedding, float decodes)
must then see the same weights as before. Held against the Python runtime (tokens and transcripts
equal, logits within LOGIT_TOL of their range: tests/runtime/test_libsubbit.py's docstring) and
across kernel paths (integer sums: bit-identical; on an AVX-512 machine that compares the rewritten
and the table routes), for per-tensor and per-row codebooks and for 8-bit tensors among 4-bit ones.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from subbit.runtime import kernels
from subbit.testing.dummies import dummy_subbit_file

from .test_libsubbit import CModel, assert_logits_close, lib, python_stream  # noqa: F401 (lib: fixture)
from .test_session import BLANK_BIAS, audio

CASES = {
    "rnnt-8bit": ("rnnt", 8, None),
    "rnnt-8bit-per-row": ("rnnt", 8, {"LSTM": {"bits": 8, "granularity": "channel"},
                                      "Linear": {"bits": 8, "granularity": "channel"}}),
    "conformer-8bit": ("conformer", 8, None),
    "rnnt-4bit-8bit-embedding-and-output": ("rnnt", 4, {"Embedding": {"bits": 8}, "joiner.out.weight": {"bits": 8}}),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def int8_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch, bits, rules = CASES[request.param]
    return dummy_subbit_file(tmp_path_factory.mktemp(request.param), arch, bits=bits, rules=rules,
                             blank_bias=BLANK_BIAS[arch])  # fmt: skip


def test_8bit_model_equals_the_python_runtime(lib: ctypes.CDLL, int8_model: Path) -> None:
    x = audio(2.0)
    text, tokens, plogits = python_stream(int8_model, x, 401)
    s = CModel(lib, int8_model).session()
    assert s.stream(x, 401) == text
    assert s.tokens() == tokens and len(tokens) > 3
    assert_logits_close(s.logits, plogits)


def test_8bit_model_is_bit_identical_on_every_kernel_path(
    lib: ctypes.CDLL, int8_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = audio(1.0)
    runs = {}
    for path in [p for p in kernels.available_paths() if p != "ref"]:
        monkeypatch.setenv("SUBBIT_KERNEL", "portable" if path == "c" else path)
        model = CModel(lib, int8_model)
        assert model.rc == 0, model.err
        s = model.session()
        s.stream(x, 333)
        runs[path] = (s.tokens(), np.stack(s.logits))
    first = next(iter(runs.values()))
    for path, (toks, lg) in runs.items():
        assert toks == first[0] and np.array_equal(lg, first[1]), path


def test_two_models_from_one_file_agree(lib: ctypes.CDLL, int8_model: Path) -> None:
    """The rewrite touches only a model's own copy of the data: a second load sees indices again."""
    x = audio(1.0)
    a, b = CModel(lib, int8_model), CModel(lib, int8_model)
    sa, sb = a.session(), b.session()
    assert sa.stream(x, 401) == sb.stream(x, 401) and sa.tokens() == sb.tokens()
    assert all(np.array_equal(p, q) for p, q in zip(sa.logits, sb.logits))
