"""libsubbit sessions with worker threads (subbit_session_set_threads).

Every output row of a matmul is computed exactly as on one thread (exact integer sums, the same
float epilogue on the same row), so any thread count must give bit-identical logits: the test
compares them with ``==``, not a tolerance. The models are widened until several of their
matmuls pass the library's split threshold (linear.c: at least 32 rows and 2**17 weights), and
row counts that are not multiples of the 16-row split unit are included.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from subbit.export.loading import load_packed
from subbit.runtime import kernels, native
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession
from subbit.testing.dummies import dummy_subbit_file

from .test_libsubbit import build_library
from .test_session import audio

ROOT = Path(__file__).resolve().parents[2]
SPLIT_MIN_WEIGHTS = 1 << 17  # linear.c
WIDE = {
    "rnnt": {"enc_hidden": 250, "enc_dim": 200},  # ih/hh: 1,000 rows (not a multiple of 16)
    "conformer": {"d_model": 192, "n_heads": 2, "ff_mult": 4},  # lin1: 768 x 192
    "bifocal": {"enc_hidden": 250, "enc_dim": 200, "small_hidden": 24},
}


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    if not (ROOT / "libsubbit" / "Makefile").is_file():
        pytest.skip("libsubbit sources not present")
    build_library()
    assert native.library(reload=True) is not None, native.library_candidates()


@pytest.fixture(scope="module", params=sorted(WIDE))
def wide_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch = request.param
    path = dummy_subbit_file(tmp_path_factory.mktemp(f"wide-{arch}"), arch, blank_bias=0.2, **WIDE[arch])
    big = [t for t in load_packed(path).packed.values() if t.shape[0] >= 32 and int(np.prod(t.shape)) >= SPLIT_MIN_WEIGHTS]
    assert len(big) >= 2, "the model must have matmuls the library splits, or the test shows nothing"
    return path


def stream(model: native.NativeModel, threads: int, x: np.ndarray, wake: float | None = None) -> tuple[list[int], list[np.ndarray], str]:
    logits: list[np.ndarray] = []
    with model.session(on_logits=logits.append) as s:
        s.set_threads(threads)
        assert s.threads == threads
        if wake is not None:
            s.set_wake_end(int(round(wake * 16000)))
        for i in range(0, len(x), 1234):
            s.accept(x[i : i + 1234])
        s.finalize()
        return s.tokens(), logits, s.text()


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_any_thread_count_gives_bit_identical_logits(wide_model: Path, threads: int) -> None:
    x = audio(2.0)
    wake = 0.6 if wide_model.stem == "bifocal" else None
    with native.NativeModel(wide_model) as m:
        tok1, log1, text1 = stream(m, 1, x, wake)
        tokn, logn, textn = stream(m, threads, x, wake)
    assert len(tok1) > 3 and len(log1) > 10
    assert (tokn, textn) == (tok1, text1)
    assert len(logn) == len(log1) and all(np.array_equal(a, b) for a, b in zip(logn, log1))


def test_threaded_sessions_equal_the_numpy_reference(wide_model: Path) -> None:
    x = audio(2.0)
    c = StreamingSession(PackedTransducer.from_file(wide_model, threads=2))
    assert c.backend == "c" and c.native is not None and c.native.threads == 2
    ref = StreamingSession(PackedTransducer.from_file(wide_model, backend="numpy"))
    for s in (c, ref):
        s.accept_audio(x)
    assert c.finalize() == ref.finalize() and c.tokens == ref.tokens


def test_threads_are_validated_and_can_be_changed_and_reset(wide_model: Path) -> None:
    with native.NativeModel(wide_model) as m, m.session() as s:
        for bad in (0, -1, native.MAX_THREADS + 1):
            with pytest.raises(ValueError, match="threads"):
                s.set_threads(bad)
        with pytest.raises(ValueError, match="threads"):
            s.set_threads(True)  # type: ignore[arg-type]
        assert s.threads == 1
        s.set_threads(native.MAX_THREADS)
        s.set_threads(2)
        s.accept(audio(0.5))
        s.reset()
        assert s.threads == 2  # reset forgets the utterance, not the workers
        s.set_threads(1)
        assert s.threads == 1
    with pytest.raises(ValueError, match="threads"):
        native.NativeModel(wide_model, threads=0)


def test_subbit_stream_takes_threads(wide_model: Path, tmp_path: Path) -> None:
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, audio(1.0), 16000, subtype="PCM_16")
    exe = ROOT / "build" / "subbit-stream"
    args = ["--wake-end", "0.4"] if wide_model.stem == "bifocal" else []
    one = subprocess.run([exe, *args, str(wide_model), str(wav)], capture_output=True, text=True, check=True)
    two = subprocess.run([exe, *args, "--threads", "2", str(wide_model), str(wav)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert one.stdout == two.stdout and one.stdout.strip()
    bad = subprocess.run([exe, "--threads", "0", str(wide_model), str(wav)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads" in bad.stderr


PER_ROW_8BIT = {"LSTM": {"bits": 8, "granularity": "channel"}, "Linear": {"bits": 8, "granularity": "channel"}}


@pytest.mark.parametrize("kernel", ["portable", "avx2", "avx512"])
def test_8bit_per_row_model_rewritten_as_int8_is_bit_identical_across_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    """Off AVX-512 the loader rewrites 8-bit indices as int8 weights and keeps one identity table
    for every row (weights.c). A row slice of a threaded matmul once offset that table by its
    first row and decoded the rows' short last blocks through another row's codebook: logits
    moved by 3e-2 at 2 threads (k = 250 leaves a 26-wide last block)."""
    if kernel != "portable" and kernel not in kernels.available_paths():
        pytest.skip(f"this CPU has no {kernel} path")
    monkeypatch.setenv("SUBBIT_KERNEL", kernel)
    path = dummy_subbit_file(tmp_path, "rnnt", bits=8, rules=PER_ROW_8BIT, blank_bias=0.2, **WIDE["rnnt"])
    x = audio(1.5)
    with native.NativeModel(path) as m:
        assert m.info.kernel_path == kernel
        tok1, log1, _ = stream(m, 1, x)
        tok2, log2, _ = stream(m, 2, x)
    assert len(tok1) > 3 and tok2 == tok1
    assert len(log2) == len(log1) and all(np.array_equal(a, b) for a, b in zip(log2, log1))


def test_rewritten_8bit_rows_hold_one_table_not_one_per_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-row 8-bit codebooks cost 256 table bytes per row until the int8 rewrite; after it the
    model holds only 4 bytes of scale per row more than the same model with one codebook."""
    monkeypatch.setenv("SUBBIT_KERNEL", "portable")  # the rewrite happens on every path but AVX-512
    per_tensor = dummy_subbit_file(tmp_path / "t", "rnnt", bits=8, blank_bias=0.2, **WIDE["rnnt"])
    per_row = dummy_subbit_file(tmp_path / "r", "rnnt", bits=8, rules=PER_ROW_8BIT, blank_bias=0.2, **WIDE["rnnt"])
    rows = sum(int(t.shape[0]) for t in load_packed(per_row).packed.values() if int(t.groups) > 1)
    assert rows > 1000
    with native.NativeModel(per_tensor) as a, native.NativeModel(per_row) as b:
        extra = b.info.weight_bytes - a.info.weight_bytes
    assert 0 <= extra <= 4 * rows, (extra, rows)
