"""The package runs libsubbit: StreamingSession on the ``"c"`` backend against the NumPy reference.

Greedy tokens and transcripts must be identical, partial transcripts too, and logits within
``LOGIT_TOL`` of their range (tests/runtime/test_libsubbit.py's docstring says why: the same
kernels, elementwise math that differs at the ulp level). Also: the backend choice (C by default
where the library runs the arch, NumPy for bifocal, a missing library, the benchmark's
scheduled session or wrapped layers), sessions and models as handles, errors as exceptions.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
import numpy as np
import pytest

from subbit.bench.latency import scheduled_session_class
from subbit.runtime import native
from subbit.runtime.frontend import frontend_from_manifest
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession
from subbit.testing.dummies import dummy_subbit_file

from .test_libsubbit import (  # noqa: F401 (char_model, conformer_model, any_model: fixtures)
    TEXTS,
    any_model,
    assert_logits_close,
    build_library,
    char_model,
    conformer_model,
    python_stream,
)
from .test_session import audio


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    """build/libsubbit.so up to date (make), looked up again in case an earlier test found none."""
    if not (Path(__file__).resolve().parents[2] / "libsubbit" / "Makefile").is_file():
        pytest.skip("libsubbit sources not present")
    build_library()
    assert native.library(reload=True) is not None, native.library_candidates()


def chunked(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``x`` cut into pieces of ``sizes`` (cycled), empty pieces included, the rest at the end."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(x[i : i + n])
        i, k = i + n, k + 1
    return out + [x[:0]]


def c_stream(model: PackedTransducer, pieces: list[np.ndarray]) -> tuple[list[str], str, list[int], list[np.ndarray]]:
    """(partial transcripts, final transcript, tokens, logits of every decision) on backend c."""
    s = StreamingSession(model, backend="c")
    logits: list[np.ndarray] = []
    assert s.native is not None
    s.native.set_logits_callback(logits.append)
    partials = [s.accept_audio(p) for p in pieces]
    return partials, s.finalize(), list(s.tokens), logits


RANDOM_SIZES = [0, 1, 0, 7, 160, 0, 333, 2, 641, 0, 1024, 5000, 3]


@pytest.mark.parametrize("sizes", [[160], [401], [5000], RANDOM_SIZES, [32000]], ids=lambda s: "-".join(map(str, s[:3])))
def test_c_backend_equals_the_numpy_reference(any_model: Path, sizes: list[int]) -> None:
    x = audio(2.0)
    model = PackedTransducer.from_file(any_model, backend="c")
    pieces = chunked(x, sizes)
    partials, text, tokens, logits = c_stream(model, pieces)
    ref = StreamingSession(PackedTransducer.from_file(any_model, backend="numpy"))
    assert ref.backend == "numpy"
    assert partials == [ref.accept_audio(p) for p in pieces]
    assert text == ref.finalize() and tokens == ref.tokens and len(tokens) > 3
    # the reference's logits at every decision (python_stream wraps the joiner: NumPy by construction)
    ptext, ptokens, plogits = python_stream(any_model, x, 401)
    assert (ptext, ptokens) == (text, tokens)
    assert_logits_close(logits, plogits)


def test_the_c_path_is_the_default_where_the_library_runs_the_arch(any_model: Path) -> None:
    model = PackedTransducer.from_file(any_model)
    assert model.backend == "c" and model.native is not None
    s = StreamingSession(model)
    assert s.backend == "c" and s.native is not None and s.enc_state is None
    info = model.native.info
    assert info.arch == model.config["arch"] and info.vocab_size == model.vocab_size and info.blank == model.blank
    assert info.chunk_samples == model.encoder.chunk_frames * s.frontend.hop
    assert info.kernel_path in native.KERNEL_PATHS.values() and info.weight_bytes > 0
    numpy_model = PackedTransducer.from_file(any_model, backend="numpy")
    assert numpy_model.native is None and StreamingSession(numpy_model).backend == "numpy"
    assert StreamingSession(model, backend="numpy").backend == "numpy"


def test_from_packed_needs_the_source_for_the_library(char_model: Path) -> None:
    from subbit.export.loading import load_packed

    pm = load_packed(char_model)
    assert PackedTransducer.from_packed(pm).backend == "numpy"  # nothing to give the library
    assert PackedTransducer.from_packed(pm, source=char_model.read_bytes()).backend == "c"
    with pytest.raises(ValueError, match="source="):
        PackedTransducer.from_packed(pm, backend="c")
    with pytest.raises(ValueError, match="backend must be"):
        PackedTransducer.from_packed(pm, backend="cuda")


@pytest.fixture(scope="module")
def bifocal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dummy_subbit_file(tmp_path_factory.mktemp("bifocal"), "bifocal", blank_bias=0.2)


@pytest.mark.parametrize("wake", [0.0, 0.73, 5.0], ids=["all-large", "inside", "all-small"])
@pytest.mark.parametrize("sizes", [[401], RANDOM_SIZES], ids=["401", "random"])
def test_bifocal_c_backend_equals_the_numpy_reference(bifocal_model: Path, wake: float, sizes: list[int]) -> None:
    """The wake-word end reaches the library: tokens and partials match NumPy on both sides of it."""
    x, pieces = audio(2.0), None
    pieces = chunked(x, sizes)
    model = PackedTransducer.from_file(bifocal_model)
    assert model.backend == "c"
    s = StreamingSession(model)
    assert s.backend == "c"
    s.set_wake_end(wake)
    partials = [s.accept_audio(p) for p in pieces]
    text = s.finalize()
    ref = StreamingSession(PackedTransducer.from_file(bifocal_model, backend="numpy"))
    ref.set_wake_end(wake)
    assert partials == [ref.accept_audio(p) for p in pieces]
    assert text == ref.finalize() and s.tokens == ref.tokens and len(s.tokens) > 3


def test_bifocal_wake_end_changes_the_c_result_and_reset_restores_it(bifocal_model: Path) -> None:
    """A check that the pathway choice is not silently ignored: small and large pathways decode
    differently on this model, and reset() goes back to every frame large."""
    x = audio(2.0)
    s = StreamingSession(PackedTransducer.from_file(bifocal_model, backend="c"))
    assert s.takes_wake_end and StreamingSession(PackedTransducer.from_file(bifocal_model, backend="numpy")).takes_wake_end

    def run(wake: float | None) -> list[int]:
        s.reset()
        if wake is not None:
            s.set_wake_end(wake)
        s.accept_audio(x)
        s.finalize()
        return list(s.tokens)

    large, small = run(None), run(5.0)
    assert large != small
    assert run(None) == large and run(0.0) == large
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            s.set_wake_end(bad)
    s.reset()
    s.set_wake_end(1e300)  # past any audio: clamped for int64, still "every frame small"
    s.accept_audio(x)
    s.finalize()
    assert s.tokens == small


def test_wake_end_is_refused_by_models_without_a_pathway_choice(char_model: Path) -> None:
    s = StreamingSession(PackedTransducer.from_file(char_model, backend="c"))
    assert not s.takes_wake_end and not StreamingSession(PackedTransducer.from_file(char_model, backend="numpy")).takes_wake_end
    with pytest.raises(ValueError, match="pathway choice"):
        s.set_wake_end(0.5)
    with pytest.raises(native.LibsubbitError, match="UNSUPPORTED"):
        s.native.set_wake_end(8000)  # the library refuses it too
    with pytest.raises(TypeError):
        s.native.set_wake_end(0.5)  # type: ignore[arg-type]


def test_sessions_that_need_the_python_loop_stay_on_numpy(char_model: Path) -> None:
    model = PackedTransducer.from_file(char_model)
    scheduled = scheduled_session_class()(model, 2, model.vocab_size)  # the benchmark's fixed-rate decoding
    frontend = frontend_from_manifest(model.manifest, model.n_mels)
    for s in (scheduled, StreamingSession(model, max_symbols_per_frame=2), StreamingSession(model, frontend=frontend)):
        assert s.backend == "numpy"
    with pytest.raises(ValueError, match="symbols per frame"):
        StreamingSession(model, max_symbols_per_frame=2, backend="c")
    with pytest.raises(ValueError, match="frontend"):
        StreamingSession(model, frontend=frontend, backend="c")
    join = model.joiner.join
    model.joiner.join = lambda e, p: join(e, p)  # type: ignore[method-assign]
    assert not model.layers_as_loaded() and StreamingSession(model).backend == "numpy"
    del model.joiner.join
    assert model.layers_as_loaded() and StreamingSession(model).backend == "c"


def test_a_missing_library_means_numpy_with_one_warning(char_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(native, "library_candidates", lambda: [Path("/nonexistent/libsubbit.so")])
    try:
        native.library(reload=True)
        with caplog.at_level(logging.WARNING, logger="subbit.runtime.native"):
            caplog.clear()
            models = [PackedTransducer.from_file(char_model) for _ in range(3)]
        assert all(m.backend == "numpy" for m in models) and StreamingSession(models[0]).backend == "numpy"
        assert caplog.text.count("libsubbit not found") == 0  # warned once already, at the reload
        with pytest.raises(RuntimeError, match="not available"):
            PackedTransducer.from_file(char_model, backend="c")
    finally:
        monkeypatch.undo()
        assert native.library(reload=True) is not None


def test_the_pip_copy_is_looked_for_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "_libsubbit.cpython-311-x86_64-linux-gnu.so"
    monkeypatch.setattr(native, "library_file", lambda folder, stem: fake if stem == "_libsubbit" else None)
    cands = native.library_candidates()
    assert cands[0] == fake and cands[-1].parts[-2:] == ("build", "libsubbit.so")


def test_reset_finalize_and_refused_audio(char_model: Path) -> None:
    model = PackedTransducer.from_file(char_model)
    x = audio(1.5)
    ref = StreamingSession(model, backend="numpy")
    ref.accept_audio(x)
    want = (ref.finalize(), list(ref.tokens))
    s = StreamingSession(model)
    assert s.accept_audio(np.zeros(0, np.float32)) == "" and s.tokens == []
    s.accept_audio(x[:5000])
    s.reset()  # forgets the first 5000 samples
    assert s.tokens == [] and s.native is not None and s.native.tokens() == []
    s.accept_audio(x)
    assert (s.finalize(), s.tokens) == want
    assert s.finalize() == want[0] and s.finalize_tokens() == want[1]  # idempotent
    with pytest.raises(ValueError, match="after finalize"):
        s.accept_audio(x[:10])
    bad = x.copy()
    bad[77] = np.nan
    s.reset()
    with pytest.raises(native.LibsubbitError, match="not finite") as err:
        s.accept_audio(bad)
    assert err.value.status_name == "SUBBIT_ERR_ARGUMENT" and isinstance(err.value, ValueError)
    s.accept_audio(x)  # the refused call consumed nothing
    assert (s.finalize(), s.tokens) == want
    with pytest.raises(ValueError, match="float"):
        s.accept_audio(np.zeros(10, np.int16))  # StreamingSession takes float audio on both backends
    with pytest.raises(ValueError, match="backend='numpy'"):
        s.accept_features(np.zeros((4, model.n_mels), np.float32))


def test_native_session_int16_state_and_closing(char_model: Path) -> None:
    x = audio(1.0)
    pcm = (x * 32767).astype(np.int16)
    with native.NativeModel(char_model) as m:
        a, b = m.session(), m.session()
        for p in chunked(pcm, [333, 0]):
            a.accept(p)
        b.accept(pcm.astype(np.float32) / np.float32(32768.0))
        a.finalize()
        b.finalize()
        assert a.tokens() == b.tokens() and a.text() == b.text() and a.tokens()
        assert m.detokenize(a.tokens()) == a.text() and m.detokenize([]) == ""
        with pytest.raises(native.LibsubbitError) as err:
            a.accept(pcm[:10])
        assert err.value.status_name == "SUBBIT_ERR_STATE"
        with pytest.raises(ValueError, match="int16"):
            a.accept(np.zeros(3, np.int32))
        a.close()
        a.close()
        with pytest.raises(ValueError, match="closed"):
            a.tokens()
    with pytest.raises(ValueError, match="closed"):  # the model closed its live sessions first
        b.text()


def test_sessions_are_freed_before_their_model_whatever_the_collector_does(char_model: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A model and its sessions in a reference cycle (as a traceback makes them): the collector
    finalizes them in any order, the C model must still go last (it crashed before the count)."""
    lib = native.library()
    events: list[tuple[str, int]] = []
    for name in ("subbit_model_free", "subbit_session_free"):
        fn = getattr(lib, name)
        monkeypatch.setattr(lib, name, lambda p, fn=fn, name=name: (events.append((name, int(p.value))), fn(p))[1])
    for _ in range(5):
        gc.collect()
        events.clear()  # addresses come back from malloc: count this round only
        m = native.NativeModel(char_model)
        sessions = [m.session() for _ in range(3)]
        ours = [("subbit_session_free", int(s._ptr.value)) for s in sessions] + [("subbit_model_free", m.handle)]
        m.cycle, sessions[0].cycle = sessions, m  # type: ignore[attr-defined]
        del m, sessions
        gc.collect()
        mine = [e for e in events if e in ours]  # other tests' garbage may go in the same collection
        assert sorted(mine[:3]) == sorted(ours[:3]) and mine[3:] == ours[3:]


def test_logits_callback_errors_come_out_of_the_call(char_model: Path) -> None:
    def boom(_logits: np.ndarray) -> None:
        raise KeyError("from the callback")

    s = native.NativeModel(char_model).session(on_logits=boom)
    with pytest.raises(KeyError, match="from the callback"):
        s.accept(audio(0.5))
    s.set_logits_callback(None)
    s.accept(audio(0.5))  # no hook, no error


def test_detokenize_equals_the_python_tokenizer_for_bpe(tmp_path: Path) -> None:
    from subbit.asr.tokenizer import train_tokenizer

    from .test_session import export_tiny

    tok = train_tokenizer(TEXTS * 4, kind="bpe", vocab_size=40)
    path = export_tiny(tmp_path, "rnnt", tokenizer_bytes=tok.to_bytes())
    model = PackedTransducer.from_file(path)
    assert model.native is not None
    for ids in [tok.encode(t) for t in TEXTS] + [[1], [0, 2]]:
        assert model.native.detokenize(ids) == tok.decode(ids)
    c, ref = StreamingSession(model), StreamingSession(model, backend="numpy")
    x = audio(1.0)
    assert c.accept_audio(x) == ref.accept_audio(x) and c.finalize() == ref.finalize()


def test_refused_files_raise_the_status_and_message(char_model: Path, tmp_path: Path) -> None:
    blob = bytearray(char_model.read_bytes())
    blob[len(blob) - 100] ^= 1
    with pytest.raises(native.LibsubbitError) as err:
        native.NativeModel(bytes(blob))
    assert err.value.status_name == "SUBBIT_ERR_INTEGRITY" and err.value.status == 5
    assert str(err.value).startswith("SUBBIT_ERR_INTEGRITY: ") and err.value.message
    bad = tmp_path / "bad.subbit"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError):  # the Python loader refuses it first, on either backend
        PackedTransducer.from_file(bad, backend="c")
    with pytest.raises(native.LibsubbitError) as err:
        native.NativeModel(tmp_path / "nope.subbit")
    assert err.value.status_name == "SUBBIT_ERR_IO" and "nope.subbit" in err.value.message


def test_auto_runs_numpy_when_the_library_refuses_what_python_takes(char_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A disagreement between the loaders (none is known: test_libsubbit sweeps for them) must not
    stop a file the reference runs; here the library refuses because of an unknown kernel path."""
    monkeypatch.setenv("SUBBIT_KERNEL", "no-such-path")
    with caplog.at_level(logging.WARNING, logger="subbit.runtime.models"):
        model = PackedTransducer.from_file(char_model)
    assert model.backend == "numpy" and "SUBBIT_ERR_ARGUMENT" in caplog.text
    with pytest.raises(native.LibsubbitError, match="SUBBIT_KERNEL"):
        PackedTransducer.from_file(char_model, backend="c")
