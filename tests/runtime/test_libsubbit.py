"""libsubbit (the C runtime, through ctypes) against the Python packed runtime (subbit.runtime).

Parity tolerance: both runtimes run the same float32 operations in the same order, and every
quantized matmul goes through the same C kernels (integer sums exact, so bit-identical on every
ISA path). What differs is the elementwise math library: NumPy's SIMD tanh/log/exp and
pocketfft against libm and libsubbit's own FFT (in double, rounded to float32), and for the
Conformer the LayerNorm / attention / softmax reductions (double here, float32 pairwise sums and
BLAS there), each within an ulp or so. The int8 activation quantization can turn such a one-ulp difference into one
rounding step of a single activation, which moves a logit by about max|x|/127 * |w| (a small
fraction of the logit range). So logits must agree to LOGIT_TOL of the logits' range (measured
1.2e-7 absolute on a range of 0.74 for the RNN-T, 4.8e-7 on 4.4 for the Conformer: ulp level),
and greedy tokens exactly.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import threading
import wave
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from subbit.asr.tokenizer import train_tokenizer
from subbit.export.container import seal_header
from subbit.runtime import kernels
from subbit.runtime.models import PackedTransducer
from subbit.runtime.session import StreamingSession

from .test_session import audio, export_tiny

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "build" / "libsubbit.so"
CLI = ROOT / "build" / "subbit-stream"
LOGIT_TOL = 1e-3  # of the logits' range; see the module docstring
CHUNKS = (160, 333, 401, 5000)
OK, ARGUMENT, FORMAT, VERSION, INTEGRITY, LIMIT, UNSUPPORTED, STATE = 0, 1, 3, 4, 5, 6, 7, 9
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "sub bit models stream on a device",
         "one two three four five six seven eight nine ten"]  # fmt: skip


def _sources() -> list[Path]:
    return sorted((ROOT / "libsubbit").rglob("*.[ch]")) + sorted((ROOT / "src/subbit/runtime/csrc").glob("*.[ch]")) + [
        ROOT / "examples/c/subbit_stream.c", ROOT / "libsubbit/Makefile"]


def build_library() -> ctypes.CDLL:
    """``make -C libsubbit`` when the library is missing or older than a source (plain cc + make)."""
    stale = not LIB.is_file() or not CLI.is_file() or max(p.stat().st_mtime for p in _sources()) > min(
        LIB.stat().st_mtime, CLI.stat().st_mtime)
    if stale:
        proc = subprocess.run(["make", "-s", "-C", str(ROOT / "libsubbit")], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"building libsubbit failed:\n{proc.stdout}\n{proc.stderr}")
    lib = ctypes.CDLL(str(LIB))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.subbit_model_load_file.argtypes = [ctypes.c_char_p, ctypes.POINTER(vp), ctypes.c_char_p, sz]
    lib.subbit_model_load_memory.argtypes = [ctypes.c_char_p, sz, ctypes.POINTER(vp), ctypes.c_char_p, sz]
    lib.subbit_model_free.argtypes = [vp]
    lib.subbit_session_create.argtypes = [vp, ctypes.POINTER(vp), ctypes.c_char_p, sz]
    lib.subbit_session_free.argtypes = [vp]
    lib.subbit_session_reset.argtypes = [vp]
    lib.subbit_session_accept_float.argtypes = [vp, vp, sz]
    lib.subbit_session_accept_int16.argtypes = [vp, vp, sz]
    lib.subbit_session_finalize.argtypes = [vp]
    lib.subbit_session_text.argtypes = [vp]
    lib.subbit_session_text.restype = ctypes.c_char_p
    lib.subbit_session_error.argtypes = [vp]
    lib.subbit_session_error.restype = ctypes.c_char_p
    lib.subbit_session_tokens.argtypes = [vp, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))]
    lib.subbit_session_tokens.restype = sz
    lib.subbit_session_set_logits_callback.argtypes = [vp, vp, vp]
    lib.subbit_model_detokenize.argtypes = [vp, ctypes.POINTER(ctypes.c_int32), sz, ctypes.c_char_p, sz, ctypes.POINTER(sz)]
    lib.subbit_status_name.restype = ctypes.c_char_p
    return lib


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    if not (ROOT / "libsubbit" / "Makefile").is_file():
        pytest.skip("libsubbit sources not present")
    return build_library()


LOGITS_FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_void_p)


class CModel:
    """A loaded model; ``stream`` runs one session over audio in chunks."""

    def __init__(self, lib: ctypes.CDLL, path: Path | None = None, blob: bytes | None = None) -> None:
        self.lib, self.ptr = lib, ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        if blob is not None:
            self.rc = lib.subbit_model_load_memory(blob, len(blob), ctypes.byref(self.ptr), err, 512)
        else:
            self.rc = lib.subbit_model_load_file(str(path).encode(), ctypes.byref(self.ptr), err, 512)
        self.err = err.value.decode()

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.subbit_model_free(self.ptr)

    def session(self) -> "CSession":
        return CSession(self)


class CSession:
    def __init__(self, model: CModel) -> None:
        self.model, self.lib, self.ptr = model, model.lib, ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        rc = self.lib.subbit_session_create(model.ptr, ctypes.byref(self.ptr), err, 512)
        assert rc == OK, err.value
        # no reference cycle through self: refcounting then frees a session before its model,
        # as the API requires (a cycle would leave the order to the garbage collector)
        logits: list[np.ndarray] = []
        self.logits = logits
        self._cb = LOGITS_FN(lambda p, n, _u: logits.append(np.ctypeslib.as_array(p, (n,)).copy()))
        self.lib.subbit_session_set_logits_callback(self.ptr, ctypes.cast(self._cb, ctypes.c_void_p), None)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.subbit_session_free(self.ptr)

    def accept(self, x: np.ndarray) -> int:
        x = np.ascontiguousarray(x)
        fn = self.lib.subbit_session_accept_int16 if x.dtype == np.int16 else self.lib.subbit_session_accept_float
        return int(fn(self.ptr, x.ctypes.data if x.size else None, x.size))

    def tokens(self) -> list[int]:
        ids = ctypes.POINTER(ctypes.c_int32)()
        n = self.lib.subbit_session_tokens(self.ptr, ctypes.byref(ids))
        return [int(ids[i]) for i in range(n)]

    def text(self) -> str:
        return self.lib.subbit_session_text(self.ptr).decode()

    def stream(self, x: np.ndarray, chunk: int) -> str:
        self.lib.subbit_session_reset(self.ptr)
        del self.logits[:]
        for i in range(0, len(x), chunk):
            assert self.accept(x[i : i + chunk]) == OK, self.lib.subbit_session_error(self.ptr)
        assert self.lib.subbit_session_finalize(self.ptr) == OK
        return self.text()


def python_stream(path: Path, x: np.ndarray, chunk: int) -> tuple[str, list[int], list[np.ndarray]]:
    """The Python packed runtime on the same audio, logging the logits of every greedy decision."""
    model = PackedTransducer.from_file(path)
    logits: list[np.ndarray] = []
    join = model.joiner.join

    def logged(e: Any, p: Any) -> np.ndarray:
        out = join(e, p)
        logits.append(np.asarray(out).reshape(-1).copy())
        return out

    model.joiner.join = logged
    s = StreamingSession(model)
    for i in range(0, len(x), chunk):
        s.accept_audio(x[i : i + chunk])
    text = s.finalize()
    return text, list(s.tokens), logits


def assert_logits_close(c: list[np.ndarray], p: list[np.ndarray]) -> None:
    assert len(c) == len(p), f"{len(c)} C decisions vs {len(p)} Python decisions"
    scale = max(float(np.ptp(v)) for v in p)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(c, p))
    assert worst <= LOGIT_TOL * scale, f"logits differ by {worst} (range {scale})"


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(TEXTS, kind="char")
    return export_tiny(tmp_path_factory.mktemp("char"), "rnnt", tokenizer_bytes=tok.to_bytes())


@pytest.fixture(scope="module")
def conformer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(TEXTS, kind="char")
    return export_tiny(tmp_path_factory.mktemp("conf"), "conformer", tokenizer_bytes=tok.to_bytes())


@pytest.fixture(params=["rnnt", "conformer"])
def any_model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("char_model" if request.param == "rnnt" else "conformer_model")


def reseal(blob: bytes, mutate: Callable[[dict[str, Any], dict[str, Any]], None]) -> bytes:
    """The file with its manifest / tensor table changed by ``mutate(header, manifest)`` and the
    header digest recomputed: only the field checks can refuse it, not the checksums."""
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    manifest = json.loads(header["__metadata__"]["subbit"])
    mutate(header, manifest)
    header["__metadata__"]["subbit"] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return seal_header(header) + blob[8 + hlen :]


# -- parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKS)
def test_transcript_and_logits_equal_the_python_runtime(lib: ctypes.CDLL, any_model: Path, chunk: int) -> None:
    x = audio(2.0)
    text, tokens, plogits = python_stream(any_model, x, chunk)
    s = CModel(lib, any_model).session()
    assert s.stream(x, chunk) == text
    assert s.tokens() == tokens and len(tokens) > 3  # the sharpened tiny joiner emits tokens
    assert_logits_close(s.logits, plogits)


def test_every_kernel_path_gives_the_same_logits(lib: ctypes.CDLL, any_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = audio(1.0)
    runs = {}
    for path in [p for p in kernels.available_paths() if p != "ref"]:
        monkeypatch.setenv("SUBBIT_KERNEL", "portable" if path == "c" else path)
        s = CModel(lib, any_model).session()
        s.stream(x, 401)
        runs[path] = (s.tokens(), np.stack(s.logits))
    first = next(iter(runs.values()))
    for path, (toks, lg) in runs.items():  # integer kernels: bit-identical across paths
        assert toks == first[0] and np.array_equal(lg, first[1]), path


def test_frontend_settings_and_normalisation_from_the_manifest(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    feats = {"kind": "logmel", "sample_rate": 16000, "n_fft": 512, "hop_length": 128, "n_mels": 80,
             "mean": [float(v) for v in rng.normal(-5, 1, 80)], "std": [float(v) for v in rng.uniform(0.5, 3, 80)]}

    def add(_h: dict, m: dict) -> None:
        m["extra"] = {"features": feats}

    path = tmp_path / "feats.subbit"
    path.write_bytes(reseal(char_model.read_bytes(), add))
    x = audio(1.5)
    text, tokens, plogits = python_stream(path, x, 333)
    s = CModel(lib, path).session()
    assert s.stream(x, 333) == text and s.tokens() == tokens
    assert_logits_close(s.logits, plogits)


def test_int16_samples_equal_float_samples(lib: ctypes.CDLL, char_model: Path) -> None:
    pcm = (audio(1.0) * 32767).astype(np.int16)
    m = CModel(lib, char_model)
    a, b = m.session(), m.session()
    assert a.stream(pcm, 401) == b.stream(pcm.astype(np.float32) / np.float32(32768.0), 401)
    assert a.tokens() == b.tokens()


def test_bpe_detokenize_equals_the_python_tokenizer(lib: ctypes.CDLL, tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS * 4, kind="bpe", vocab_size=40)
    path = export_tiny(tmp_path, "rnnt", tokenizer_bytes=tok.to_bytes())
    from subbit.export.container import load_packed

    model = CModel(lib, path)
    assert model.rc == OK, model.err
    rng = np.random.default_rng(0)
    v = tok.vocab_size
    seqs = [tok.encode(t) for t in TEXTS] + [list(rng.integers(0, v, n)) for n in (1, 2, 5, 17, 40)] + [[1], [1, 1], [0, 2]]
    for ids in seqs:
        arr = (ctypes.c_int32 * max(1, len(ids)))(*[int(i) for i in ids])
        out = ctypes.create_string_buffer(4096)
        need = ctypes.c_size_t()
        assert lib.subbit_model_detokenize(model.ptr, arr, len(ids), out, 4096, ctypes.byref(need)) == OK
        assert out.value.decode() == tok.decode(ids), ids
    assert load_packed(path).tokenizer_bytes == tok.to_bytes()


# -- sessions and bad audio ------------------------------------------------------------------------
def test_two_sessions_sharing_a_model_match_one_each(lib: ctypes.CDLL, any_model: Path) -> None:
    xa, xb = audio(1.5), audio(1.0)[::-1].copy()
    alone = []
    for x in (xa, xb):
        s = CModel(lib, any_model).session()
        s.stream(x, 333)
        alone.append((s.tokens(), np.stack(s.logits)))
    shared = CModel(lib, any_model)
    sa, sb = shared.session(), shared.session()
    for i in range(0, max(len(xa), len(xb)), 333):  # interleaved on one thread
        assert sa.accept(xa[i : i + 333]) == OK and sb.accept(xb[i : i + 333]) == OK
    for s in (sa, sb):
        assert lib.subbit_session_finalize(s.ptr) == OK
    for s, (toks, lg) in zip((sa, sb), alone):
        assert s.tokens() == toks and np.array_equal(np.stack(s.logits), lg)
    # and concurrently from two threads (ctypes drops the GIL during the calls)
    ta, tb = shared.session(), shared.session()
    threads = [threading.Thread(target=s.stream, args=(x, 160)) for s, x in ((ta, xa), (tb, xb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, (toks, _) in zip((ta, tb), alone):
        assert s.tokens() == toks


def test_zero_nan_and_after_finalize(lib: ctypes.CDLL, char_model: Path) -> None:
    s = CModel(lib, char_model).session()
    assert s.accept(np.zeros(0, np.float32)) == OK and s.tokens() == [] and s.text() == ""
    bad = audio(0.5)
    bad[100] = np.nan
    assert s.accept(bad) == ARGUMENT and "not finite" in lib.subbit_session_error(s.ptr).decode()
    assert s.accept(np.array([np.inf], np.float32)) == ARGUMENT
    ref = CModel(lib, char_model).session()
    x = audio(1.0)
    assert s.stream(x, 401) == ref.stream(x, 401)  # a refused call consumed nothing
    assert s.accept(x[:10]) == STATE  # finalized: needs a reset
    assert lib.subbit_session_reset(s.ptr) == OK and s.accept(x[:10]) == OK


# -- bad files -----------------------------------------------------------------------------------
def _python_refuses(blob: bytes, tmp: Path) -> bool:
    p = tmp / "py.subbit"
    p.write_bytes(blob)
    try:  # the Python runtime checks extra.features and the tokenizer when a session is made
        StreamingSession(PackedTransducer.from_file(p))
    except ValueError:  # SubbitFormatError is a ValueError
        return True
    return False


def test_tampered_files_are_refused_with_the_right_code(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    blob = char_model.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    head = blob[8 : 8 + hlen]
    table_pos = 8 + head.index(b'"data_offsets"') + 3  # inside the tensor table
    man_pos = 8 + head.index(b"enc_layers") + 2  # inside the manifest string

    def flip(pos: int) -> bytes:
        b = bytearray(blob)
        b[pos] ^= 0x01
        return bytes(b)

    def bits(value: int) -> bytes:
        def mutate(_h: dict, m: dict) -> None:
            m["quantized"]["joiner.out.weight"]["bits"] = value

        return reseal(blob, mutate)

    cases = {
        "header byte": (flip(table_pos), INTEGRITY),
        "manifest byte": (flip(man_pos), INTEGRITY),
        "payload byte": (flip(len(blob) - 100), INTEGRITY),
        "truncated": (blob[: len(blob) - 7], FORMAT),
        "truncated header": (blob[:100], FORMAT),
        "bit width 9": (bits(9), LIMIT),
        "bit width 3 for 4-bit data": (bits(3), FORMAT),
        "newer minor": (reseal(blob, lambda h, m: m.update(schema_minor=3)), VERSION),
        "unknown arch": (reseal(blob, lambda h, m: m["arch"].update(arch="transformer")), UNSUPPORTED),
        "arch stack 0": (reseal(blob, lambda h, m: m["arch"].update(stack=0)), LIMIT),
        "empty": (b"", FORMAT),
    }
    for name, (bad, code) in cases.items():
        m = CModel(lib, blob=bad)
        assert m.rc == code, f"{name}: got {m.rc} ({m.err}), expected {code}"
        assert m.err and not m.ptr
        assert _python_refuses(bad, tmp_path), f"{name}: the Python loader accepts it"
    assert CModel(lib, blob=blob).rc == OK
    missing = CModel(lib, tmp_path / "nope.subbit")
    assert missing.rc == 2 and "nope.subbit" in missing.err
    assert CModel(lib, tmp_path).rc == 2  # a directory


CONFORMER_KEYS = ["d_model", "n_heads", "chunk_size", "left_chunks", "conv_kernel", "n_blocks", "rel_pos", "stack", "n_mels"]


def test_fuzz_corpus_conformer_config(lib: ctypes.CDLL, conformer_model: Path, tmp_path: Path) -> None:
    """Re-sealed Conformer config edits: C loads exactly when Python does."""
    blob = conformer_model.read_bytes()
    disagree = []
    for key in CONFORMER_KEYS:
        for v in [0, 1, 2, 3, 4, 5, -1, 8192, 1 << 40, None, True, False, 2.0, "2"]:
            bad = reseal(blob, lambda h, m, k=key, v=v: m["arch"].update({k: v}))
            if (CModel(lib, blob=bad).rc == OK) == _python_refuses(bad, tmp_path):
                disagree.append((key, v))
    assert not disagree, f"C and Python disagree on {disagree}"


def test_fuzz_corpus_refused_by_both_loaders(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    """Byte flips, truncations and re-sealed manifest edits: C loads exactly when Python does."""
    blob = char_model.read_bytes()
    rng = np.random.default_rng(7)
    corpus: list[bytes] = []
    for _ in range(40):
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        corpus.append(bytes(b))
    corpus += [blob[: int(c)] for c in rng.integers(0, len(blob), 10)]
    arch_keys = ["n_mels", "stack", "stack2", "stack2_after", "enc_layers", "pred_layers", "vocab_size", "blank", "chunk_frames"]
    values: list[Any] = [0, 1, 2, 3, -1, 80, 1 << 20, 1 << 40, None, True, 2.0, "2"]
    for key in arch_keys:
        for v in values:
            corpus.append(reseal(blob, lambda h, m, k=key, v=v: m["arch"].update({k: v})))
    qname = "encoder.lstms.0.weight_ih_l0"
    for field, v in [("bits", 0), ("groups", 2), ("granularity", "row"), ("packing", "x"), ("count", 7), ("mu", [1.0, 2.0]),
                     ("codebook", "affine"), ("zero_index", 1), ("shape", [160, 40])]:  # fmt: skip
        corpus.append(reseal(blob, lambda h, m, f=field, v=v: m["quantized"][qname].update({f: v})))
    for edit in [lambda h, m: h[qname + ".idx"].update(dtype="F32"), lambda h, m: h[qname + ".idx"].update(shape=[1, 2]),
                 lambda h, m: h.__setitem__("stray", {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}),
                 lambda h, m: m.pop("runtime"), lambda h, m: m.update(extra={"features": {"kind": "mfcc"}}),
                 lambda h, m: m.update(extra={"features": {"kind": "logmel", "sample_rate": 16000, "n_fft": 400,
                                                           "hop_length": 500, "n_mels": 80}}),
                 lambda h, m: m.update(tokenizer=None)]:  # fmt: skip
        corpus.append(reseal(blob, edit))
    disagree = []
    for i, bad in enumerate(corpus):
        c_ok = CModel(lib, blob=bad).rc == OK
        if c_ok == _python_refuses(bad, tmp_path):
            disagree.append(i)
    assert not disagree, f"C and Python disagree on corpus entries {disagree}"


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_prints_the_transcript_last(lib: ctypes.CDLL, char_model: Path, tmp_path: Path) -> None:
    pcm = (audio(1.5) * 32767).astype(np.int16)
    wav_path = tmp_path / "a.wav"
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    out = subprocess.run([str(CLI), "--timings", "--chunk", "401", str(char_model), str(wav_path)], capture_output=True, text=True,
                         env={**os.environ, "SUBBIT_KERNEL": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = CModel(lib, char_model).session()
    assert out.stdout.splitlines()[-1] == s.stream(pcm, 401)
    bad = subprocess.run([str(CLI), str(wav_path), str(wav_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "SUBBIT_ERR_FORMAT" in bad.stderr
