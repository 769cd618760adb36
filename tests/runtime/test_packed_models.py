"""runtime.models directly: a loaded file's config and sizes, streaming in any chunking equals one
call, the predictor's state is the only memory, and the arch checks name the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from subbit.export.manifest import SubbitFormatError
from subbit.runtime.models import PackedTransducer, _cfg_int, wake_frames
from subbit.testing.dummies import dummy_subbit_file


@pytest.fixture(scope="module", params=["rnnt", "conformer"])
def packed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PackedTransducer:
    return PackedTransducer.from_file(dummy_subbit_file(tmp_path_factory.mktemp(request.param), request.param))


def test_the_loaded_model_reports_its_config(packed: PackedTransducer) -> None:
    assert packed.vocab_size == 12 and packed.blank == 0 and packed.n_mels == 80
    assert packed.config["arch"] in ("rnnt", "conformer") and 0 < packed.weight_bytes


def _run(packed: PackedTransducer, feats: np.ndarray, sizes: list[int]) -> np.ndarray:
    enc, state, outs, pos = packed.encoder, packed.encoder.init_state(), [], 0
    for n in sizes:
        y, state = enc.step(feats[pos : pos + n], state)
        outs.append(y)
        pos += n
    y, state = enc.flush(state)
    return np.concatenate(outs + [y], axis=0)


def test_any_chunking_gives_the_same_encoder_frames(packed: PackedTransducer) -> None:
    feats = np.random.default_rng(0).standard_normal((53, 80)).astype(np.float32)
    whole = _run(packed, feats, [53])
    assert whole.shape[1] == packed.encoder.output_dim and whole.shape[0] > 0
    for sizes in ([1] * 53, [7, 0, 13, 33], [26, 27]):
        np.testing.assert_allclose(_run(packed, feats, sizes), whole, rtol=1e-5, atol=1e-5)


def test_predictor_steps_depend_only_on_the_state(packed: PackedTransducer) -> None:
    p = packed.predictor
    out1, s1 = p.step(3, p.init_state())
    out2, _ = p.step(3, p.init_state())  # a fresh state: the same output (no hidden memory)
    np.testing.assert_array_equal(out1, out2)
    out3, _ = p.step(3, s1)
    assert not np.allclose(out3, out1)


def test_arch_fields_are_checked_by_name() -> None:
    assert _cfg_int({"stack": 3}, "stack") == 3 and _cfg_int({}, "blank", 0) == 0
    with pytest.raises(SubbitFormatError, match="no field 'stack'"):
        _cfg_int({}, "stack")
    with pytest.raises(SubbitFormatError, match="arch.stack: must be an integer"):
        _cfg_int({"stack": "3"}, "stack")
    with pytest.raises(SubbitFormatError, match=r"arch.stack: 0 outside \["):
        _cfg_int({"stack": 0}, "stack")


def test_wake_frames_counts_whole_windows() -> None:
    assert wake_frames(0.0) == 0 and wake_frames(399 / 16000) == 0 and wake_frames(400 / 16000) == 1
    assert wake_frames(1.0) == (16000 - 400) // 160 + 1
    with pytest.raises(ValueError, match="finite"):
        wake_frames(float("nan"))


def test_an_unknown_arch_is_refused(subbit_file: Callable[..., Path]) -> None:
    m = PackedTransducer.from_file(subbit_file("rnnt"))
    with pytest.raises(SubbitFormatError, match="field 'arch' must be"):
        PackedTransducer(m.store, {**m.config, "arch": "lstm"})
