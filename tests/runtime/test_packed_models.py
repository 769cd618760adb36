"""runtime.models directly: a loaded file's config and sizes, streaming in any chunking equals one
call, the predictor's state is the only memory, and the arch checks name the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from subbit.export.manifest import SubbitFormatError
from subbit.runtime.arch import stack_frames
from subbit.runtime.layers import PackedLSTM, WeightStore
from subbit.runtime.models import LSTMEncoder, PackedTransducer, _cfg_int, wake_frames
from subbit.testing.dummies import dummy_subbit_file


@pytest.fixture(scope="module", params=["rnnt", "conformer"])
def packed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PackedTransducer:
    return PackedTransducer.from_file(dummy_subbit_file(tmp_path_factory.mktemp(request.param), request.param))


def test_the_loaded_model_reports_its_config(packed: PackedTransducer) -> None:
    assert packed.vocab_size == 12 and packed.blank == 0 and packed.n_mels == 80
    assert packed.config["arch"] in ("rnnt", "conformer") and 0 < packed.weight_bytes


def _run(packed: PackedTransducer, feats: np.ndarray, sizes: list[int]) -> np.ndarray:
    return _run_encoder(packed.encoder, feats, sizes)


def _run_encoder(enc: Any, feats: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The encoder frames of ``feats`` fed in pieces of ``sizes`` frames, then flushed."""
    state, outs, pos = enc.init_state(), [], 0
    for n in sizes:
        y, state = enc.step(feats[pos : pos + n], state)
        outs.append(y)
        pos += n
    return np.concatenate(outs + [enc.flush(state)[0]], axis=0)


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


def test_a_second_stacking_before_the_first_layer_streams_like_the_offline_stacking() -> None:
    """stack2_after = 0 (inside the runtime's limits; training never writes it): the frames that
    wait for the second stacking are as wide as the first stacking's output."""
    rng = np.random.default_rng(1)
    mels, stack, stack2, hidden, out = 6, 2, 3, 5, 4
    w = {"encoder.proj.weight": rng.standard_normal((out, hidden)), "encoder.proj.bias": rng.standard_normal(out)}
    for i, width in enumerate((mels * stack * stack2, hidden)):
        w[f"encoder.lstms.{i}.weight_ih_l0"] = rng.standard_normal((4 * hidden, width)) * 0.3
        w[f"encoder.lstms.{i}.weight_hh_l0"] = rng.standard_normal((4 * hidden, hidden)) * 0.3
    store = WeightStore({}, w)
    enc = LSTMEncoder(store, {"n_mels": mels, "stack": stack, "stack2": stack2, "stack2_after": 0, "enc_layers": 2})
    assert enc.subsampling == 6 and not store.unused()
    feats = rng.standard_normal((40, mels)).astype(np.float32)
    x = stack_frames(stack_frames(feats, stack), stack2)  # 6 encoder frames; 4 feature frames left over
    for i in range(2):
        lstm = PackedLSTM.from_store(store, f"encoder.lstms.{i}")
        x, _ = lstm(x, lstm.init_state())
    offline = enc.proj(x)
    assert offline.shape == (6, out)
    for sizes in ([40], [1] * 40, [5, 0, 7, 28]):
        np.testing.assert_allclose(_run_encoder(enc, feats, sizes), offline, rtol=1e-5, atol=1e-6)

