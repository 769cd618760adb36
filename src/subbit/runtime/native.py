"""ctypes binding of libsubbit, the C streaming runtime (``libsubbit/include/subbit.h``).

:class:`NativeModel` is one loaded ``.subbit`` file (read-only, shared by its sessions);
:class:`NativeSession` streams one utterance through it: audio in, greedy tokens and text out.
Every failed call raises :class:`LibsubbitError` with the library's status name and message.
:class:`subbit.runtime.models.PackedTransducer` and :class:`subbit.runtime.session.StreamingSession`
use these for the ``"c"`` backend; the NumPy layers stay the reference.

The library is looked for where ``pip install`` compiles it (``subbit/runtime/_libsubbit*.so``,
built by ``setup.py``), then at ``build/libsubbit.so`` of a source checkout (``make libsubbit``).
It is opened once; when it is missing, broken or of another ABI, :func:`library` returns None
after one logged warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from subbit.clib import Signatures, library_file, open_library

log = logging.getLogger(__name__)

#: the ``SUBBIT_ABI_VERSION`` of the header this binding follows
ABI_VERSION = 1
#: architectures the package hands to the library (a Bifocal session takes its wake-word end
#: through :meth:`NativeSession.set_wake_end`)
ARCHS = ("rnnt", "conformer", "bifocal")
#: the largest wake-word end passed on, in samples: any end past the audio means "every frame
#: small", so larger values (Python ints have no bound) are clamped to what int64_t holds
MAX_WAKE_SAMPLE = 2**63 - 1
#: greedy decoding's symbols per encoder frame, fixed in libsubbit/src/session.c (MAX_SYMBOLS)
MAX_SYMBOLS = 3
#: ``SUBBIT_MAX_THREADS`` of subbit.h: the most worker threads one session takes
MAX_THREADS = 16
#: ``subbit_model_info.kernel_path`` -> the name ``SUBBIT_KERNEL`` takes
KERNEL_PATHS = {1: "portable", 2: "avx2", 3: "avx512"}
_ERRLEN = 512
_ROOT = Path(__file__).resolve().parents[3]

_VP, _SZ, _INT, _CP = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
_I32P = ctypes.POINTER(ctypes.c_int32)
LOGITS_FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_void_p)


class _Info(ctypes.Structure):
    _fields_ = [("arch", _CP), ("sample_rate", _INT), ("n_mels", _INT), ("vocab_size", _INT), ("blank", _INT),
                ("chunk_samples", _INT), ("kernel_path", _INT), ("weight_bytes", ctypes.c_uint64)]  # fmt: skip


SIGNATURES: Signatures = {
    "subbit_status_name": ([_INT], _CP),
    "subbit_abi_version": ([], _INT),
    "subbit_model_load_file": ([_CP, ctypes.POINTER(_VP), _CP, _SZ], _INT),
    "subbit_model_load_memory": ([_CP, _SZ, ctypes.POINTER(_VP), _CP, _SZ], _INT),
    "subbit_model_free": ([_VP], None),
    "subbit_model_get_info": ([_VP, ctypes.POINTER(_Info)], _INT),
    "subbit_model_detokenize": ([_VP, _I32P, _SZ, _CP, _SZ, ctypes.POINTER(_SZ)], _INT),
    "subbit_session_create": ([_VP, ctypes.POINTER(_VP), _CP, _SZ], _INT),
    "subbit_session_free": ([_VP], None),
    "subbit_session_reset": ([_VP], _INT),
    "subbit_session_accept_float": ([_VP, _VP, _SZ], _INT),
    "subbit_session_accept_int16": ([_VP, _VP, _SZ], _INT),
    "subbit_session_finalize": ([_VP], _INT),
    "subbit_session_text": ([_VP], _CP),
    "subbit_session_tokens": ([_VP, ctypes.POINTER(_I32P)], _SZ),
    "subbit_session_error": ([_VP], _CP),
    "subbit_session_set_logits_callback": ([_VP, _VP, _VP], _INT),
    "subbit_session_set_wake_end": ([_VP, ctypes.c_int64], _INT),
    "subbit_session_set_threads": ([_VP, _INT], _INT),
    "subbit_session_get_threads": ([_VP], _INT),
}


class LibsubbitError(ValueError):
    """A libsubbit call failed. A ValueError, as the Python loader's refusals are, so one
    ``except ValueError`` covers a refused file or argument on either backend."""

    def __init__(self, status: int, status_name: str, message: str) -> None:
        super().__init__(f"{status_name}: {message}" if message else status_name)
        self.status, self.status_name, self.message = int(status), status_name, message


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_tried = False


def library_candidates() -> list[Path]:
    """Where the library is looked for, in order: the ``pip install`` copy, then ``build/``."""
    out = []
    pip_copy = library_file(Path(__file__).parent, "_libsubbit")
    if pip_copy is not None:
        out.append(pip_copy)
    out.append(_ROOT / "build" / "libsubbit.so")
    return out


def library_path() -> Path | None:
    """The first library file that exists, or None."""
    return next((p for p in library_candidates() if p.is_file()), None)


def library(reload: bool = False) -> ctypes.CDLL | None:
    """libsubbit with its signatures set, opened once; None (one warning) when unusable.
    ``reload``: look again (a library built after the first look, as the tests do)."""
    global _lib, _lib_tried
    with _lock:
        if _lib_tried and not reload:
            return _lib
        _lib_tried = True
        lib = open_library(library_path(), SIGNATURES, log,
                           missing="libsubbit not found (pip install builds subbit/runtime/_libsubbit; a checkout: "
                                   "make libsubbit): the packed runtime runs on NumPy",
                           broken="libsubbit %s failed to load (%s): the packed runtime runs on NumPy")  # fmt: skip
        if lib is not None and int(lib.subbit_abi_version()) != ABI_VERSION:
            log.warning("libsubbit %s has ABI version %d, this package expects %d: the packed runtime runs on NumPy",
                        library_path(), int(lib.subbit_abi_version()), ABI_VERSION)
            lib = None
        _lib = lib
        return lib


def available() -> bool:
    """True when :func:`library` found a usable library."""
    return library() is not None


def _require() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"libsubbit is not available (looked for {', '.join(map(str, library_candidates()))})")
    return lib


def _raise(lib: ctypes.CDLL, status: int, message: str) -> None:
    if status:
        raise LibsubbitError(status, lib.subbit_status_name(status).decode(), message)


@dataclass(frozen=True)
class ModelInfo:
    """``subbit_model_info``: what a loaded model expects and holds."""

    arch: str
    sample_rate: int
    n_mels: int
    vocab_size: int
    blank: int
    chunk_samples: int  # samples per encoder chunk: the natural accept() size
    kernel_path: str  # "portable" | "avx2" | "avx512", chosen at load for this CPU
    weight_bytes: int


def check_threads(threads: object) -> int:
    """``threads`` as an int in 1..:data:`MAX_THREADS`, or ValueError."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= int(threads) <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r:.40}")
    return int(threads)


class NativeModel:
    """A ``.subbit`` file loaded and fully validated by libsubbit; ``source`` is a path or the
    file's bytes; ``threads``: worker threads of each session made from it (rows of every large
    matmul split over them; bit-identical results for any count). Free it with :meth:`close` (or ``with``); it also goes with its last reference.
    The C model is freed only after every session made from it (the API's order): a count of
    the model object and its open sessions, not the order in which the garbage collector
    finalizes a cycle, decides when."""

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview, threads: int = 1) -> None:
        self.threads = check_threads(threads)  # what each new session starts with
        self._lib = _require()
        self._ptr = ctypes.c_void_p()
        self._sessions: weakref.WeakSet[NativeSession] = weakref.WeakSet()
        self._holders = 0  # this object while open + each open session
        self._count_lock = threading.RLock()
        self._closed = False
        err = ctypes.create_string_buffer(_ERRLEN)
        if isinstance(source, (bytes, bytearray, memoryview)):
            blob = bytes(source)
            rc = self._lib.subbit_model_load_memory(blob, len(blob), ctypes.byref(self._ptr), err, _ERRLEN)
        else:
            rc = self._lib.subbit_model_load_file(os.fsencode(source), ctypes.byref(self._ptr), err, _ERRLEN)
        _raise(self._lib, rc, err.value.decode(errors="replace"))
        self._holders = 1
        raw = _Info()
        _raise(self._lib, self._lib.subbit_model_get_info(self._ptr, ctypes.byref(raw)), "model info")
        self.info = ModelInfo(raw.arch.decode(), raw.sample_rate, raw.n_mels, raw.vocab_size, raw.blank,
                              raw.chunk_samples, KERNEL_PATHS.get(raw.kernel_path, str(raw.kernel_path)),
                              int(raw.weight_bytes))  # fmt: skip

    @property
    def handle(self) -> int:
        """The ``subbit_model *`` address; ValueError once closed."""
        if self._closed or not self._ptr:
            raise ValueError("the libsubbit model is closed")
        return int(self._ptr.value or 0)

    def _hold(self) -> None:
        with self._count_lock:
            self._holders += 1

    def _release(self) -> None:
        # re-entrant lock and integer work only inside: a finalizer the collector runs here may release too
        with self._count_lock:
            self._holders -= 1
            last = self._holders == 0
        if last and self._ptr:
            ptr, self._ptr = self._ptr, ctypes.c_void_p()
            self._lib.subbit_model_free(ptr)

    def session(self, on_logits: Callable[[np.ndarray], None] | None = None) -> "NativeSession":
        return NativeSession(self, on_logits)

    def detokenize(self, ids: list[int] | np.ndarray) -> str:
        """The file's tokenizer on ``ids`` (ids joined by spaces when the file has none)."""
        arr = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        ptr = arr.ctypes.data_as(_I32P) if arr.size else None
        need = ctypes.c_size_t()
        self._lib.subbit_model_detokenize(self.handle, ptr, arr.size, None, 0, ctypes.byref(need))
        out = ctypes.create_string_buffer(max(1, need.value))
        _raise(self._lib, self._lib.subbit_model_detokenize(self.handle, ptr, arr.size, out, len(out), None), "detokenize")
        return out.value.decode()

    def close(self) -> None:
        """Free the model, closing its open sessions first (the API frees sessions before models)."""
        if getattr(self, "_ptr", None) and not self._closed:
            for s in list(self._sessions):
                s.close()
            self._closed = True
            self._release()

    def __enter__(self) -> "NativeModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: module globals may be gone already
            pass


class NativeSession:
    """One utterance stream on a :class:`NativeModel`: :meth:`accept` float or int16 audio in
    chunks of any size (0 included), :meth:`finalize`, read :meth:`text` / :meth:`tokens`.
    ``on_logits(logits [vocab_size])`` (optional) sees the joiner's output at every greedy
    decision; an exception it raises comes out of the call that ran it."""

    def __init__(self, model: NativeModel, on_logits: Callable[[np.ndarray], None] | None = None) -> None:
        self.model, self._lib, self._ptr = model, model._lib, ctypes.c_void_p()
        err = ctypes.create_string_buffer(_ERRLEN)
        _raise(self._lib, self._lib.subbit_session_create(model.handle, ctypes.byref(self._ptr), err, _ERRLEN),
               err.value.decode(errors="replace"))  # fmt: skip
        model._hold()
        model._sessions.add(self)
        self._callback: object = None
        self._callback_error: list[BaseException] = []
        self.set_logits_callback(on_logits)
        if model.threads != 1:
            self.set_threads(model.threads)

    def set_threads(self, threads: int) -> None:
        """Worker threads for this session's matmuls (1: none); replaces the ones it had."""
        self._check(self._lib.subbit_session_set_threads(self._live(), check_threads(threads)))

    @property
    def threads(self) -> int:
        return int(self._lib.subbit_session_get_threads(self._live()))

    def set_logits_callback(self, on_logits: Callable[[np.ndarray], None] | None) -> None:
        """Install (or with None remove) the per-decision logits hook."""
        if on_logits is None:
            self._check(self._lib.subbit_session_set_logits_callback(self._live(), None, None))
            self._callback = None
            return
        errors = self._callback_error  # the closure holds no reference to self: no cycle

        def call(p: ctypes._Pointer, n: int, _user: object) -> None:
            try:
                on_logits(np.ctypeslib.as_array(p, (n,)).copy())
            except BaseException as exc:  # ctypes would print and drop it; re-raised after the call
                errors.append(exc)

        cb = LOGITS_FN(call)
        self._check(self._lib.subbit_session_set_logits_callback(self._live(), ctypes.cast(cb, _VP), None))
        self._callback = cb  # kept alive as long as the C side may call it

    def accept(self, samples: np.ndarray) -> None:
        """Append mono samples at the model's rate: float (in [-1, 1]; sent as float32) or int16
        (divided by 32768). Non-finite samples are refused and nothing of that call is used."""
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D (mono), got shape {x.shape}")
        if x.dtype == np.int16:
            fn = self._lib.subbit_session_accept_int16
        elif x.dtype.kind == "f":
            x, fn = x.astype(np.float32, copy=False), self._lib.subbit_session_accept_float
        else:
            raise ValueError(f"samples must be float or int16, got dtype {x.dtype}")
        x = np.ascontiguousarray(x)
        self._check(fn(self._live(), x.ctypes.data if x.size else None, x.size))

    def set_wake_end(self, sample: int) -> None:
        """Bifocal models: the wake word ends at ``sample`` (from the utterance's start); the frames
        inside it run on the small pathway, the rest large. 0 or less: every frame large (what
        :meth:`reset` restores). Other models raise :class:`LibsubbitError` (``SUBBIT_ERR_UNSUPPORTED``)."""
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)):
            raise TypeError(f"sample must be an integer sample index, got {type(sample).__name__}")
        v = max(-MAX_WAKE_SAMPLE, min(int(sample), MAX_WAKE_SAMPLE))
        self._check(self._lib.subbit_session_set_wake_end(self._live(), ctypes.c_int64(v)))

    def finalize(self) -> None:
        """End of utterance: decode what the encoder still holds (audio after it needs :meth:`reset`)."""
        self._check(self._lib.subbit_session_finalize(self._live()))

    def reset(self) -> None:
        """Forget the utterance: audio buffer, encoder and predictor states, tokens."""
        self._check(self._lib.subbit_session_reset(self._live()))

    def text(self) -> str:
        """Transcript so far (final after :meth:`finalize`)."""
        t = self._lib.subbit_session_text(self._live())
        if t is None:
            raise MemoryError("libsubbit: no memory for the transcript")
        return t.decode()

    def tokens(self) -> list[int]:
        """Token ids decoded so far."""
        ids = _I32P()
        n = int(self._lib.subbit_session_tokens(self._live(), ctypes.byref(ids)))
        return np.ctypeslib.as_array(ids, (n,)).tolist() if n else []

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            ptr, self._ptr = self._ptr, ctypes.c_void_p()
            self._lib.subbit_session_free(ptr)
            self.model._release()

    def __enter__(self) -> "NativeSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: module globals may be gone already
            pass

    def _live(self) -> int:
        if not self._ptr:
            raise ValueError("the libsubbit session is closed")
        return int(self._ptr.value or 0)

    def _check(self, status: int) -> None:
        if self._callback_error:
            exc = self._callback_error.pop(0)
            self._callback_error.clear()
            raise exc
        if status:
            _raise(self._lib, status, self._lib.subbit_session_error(self._ptr).decode(errors="replace"))
