"""Streaming recognition of one utterance: audio in, partial transcripts out, greedy decoding.

:class:`StreamingSession` works with any model object that offers the runtime's streaming
interface (NumPy in and out, batch 1):

* ``encoder.init_state()``, ``encoder.step(feats [t, F], state) -> (enc [t', D], state)``,
  ``encoder.flush(state)`` (end of stream);
* ``predictor.init_state()``, ``predictor.step(token: int, state) -> (out [P], state)``;
* ``joiner.project_enc(enc [t', D])``, ``joiner.project_pred(out [P])``, ``joiner.join(e, p) -> [V]``;
* ``blank``, ``n_mels`` and optionally ``tokenizer_bytes`` and ``manifest`` (whose
  ``extra.features`` gives the log-mel settings and global mean/std the model was trained with).

:class:`subbit.runtime.models.PackedTransducer` is one; the benchmark wraps fp32 PyTorch, torch.ao
int8 and onnxruntime models in the same interface so every variant runs this very loop. Greedy
decoding follows :func:`subbit.asr.decode.greedy_search`: predictor primed with blank, then per
encoder frame up to ``max_symbols_per_frame`` argmax tokens until blank.

Backends: ``backend="auto"`` (the default) runs the session in libsubbit
(:class:`subbit.runtime.native.NativeSession`) when the model holds a libsubbit copy
(:attr:`PackedTransducer.native`, see :mod:`subbit.runtime.models`) and nothing asks for the
Python loop: a subclass that overrides its decoding (the benchmark's scheduled session), a
``frontend`` of the caller's, ``max_symbols_per_frame`` other than the library's 3, or a model
whose layers were wrapped. Otherwise, and with ``backend="numpy"``, the NumPy loop below runs
(the reference). ``backend="c"`` raises where ``"auto"`` would take NumPy. Both give the same
greedy tokens and transcripts (tests/runtime/test_native.py). The library decodes greedily only:
any other search (beam) has to run on the NumPy layers; its features are its own, so
:meth:`accept_features` needs the NumPy backend; it refuses non-finite samples (ValueError).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subbit.runtime import native
from subbit.runtime.frontend import StreamingLogMel, frontend_from_manifest
from subbit.runtime.models import BACKENDS, wake_frames
from subbit.runtime.tokenizer import (  # noqa: F401 (check_tokenizer_blob and the limits: re-exported)
    TOKENIZER_MAX_DEPTH,
    TOKENIZER_MAX_HEADER,
    TOKENIZER_MAX_VOCAB,
    check_tokenizer_blob,
    load_tokenizer,
)

#: the old private name (tests use it)
_load_tokenizer = load_tokenizer
#: the NumPy decoding loop's methods: a subclass overriding one keeps its sessions on NumPy
DECODING_HOOKS = ("accept_features", "finalize_tokens", "_decode", "_decode_frame", "_emit")


class StreamingSession:
    """Feed 16 kHz float32 audio in pieces of any size; get the transcript so far back."""

    def __init__(self, model: Any, max_symbols_per_frame: int = 3, tokenizer: Any | None = None,
                 frontend: StreamingLogMel | None = None, backend: str = "auto") -> None:
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.max_symbols = int(max_symbols_per_frame)
        self.blank = int(model.blank)
        why = self._why_numpy(frontend is not None)
        # built on both backends: the same manifest and tokenizer checks, and .frontend.hop for callers
        if frontend is None:
            frontend = frontend_from_manifest(getattr(model, "manifest", None), int(model.n_mels))
        self.frontend = frontend
        # the library's id-to-text is the file's tokenizer: used unless a caller's tokenizer or text() is
        self._library_text = tokenizer is None and type(self).text is StreamingSession.text
        if tokenizer is None and getattr(model, "tokenizer_bytes", None):
            tokenizer = load_tokenizer(model.tokenizer_bytes)
        self.tokenizer = tokenizer
        if backend == "c" and why is not None:
            raise ValueError(f"backend='c': {why}")
        #: the libsubbit session doing the work, or None (the NumPy loop)
        self.native: native.NativeSession | None = None
        if backend != "numpy" and why is None:
            self.native = model.native.session()
        self.backend = "c" if self.native is not None else "numpy"
        self.reset()

    def _why_numpy(self, custom_frontend: bool) -> str | None:
        """Why this session cannot run in libsubbit, or None when it can."""
        cls = type(self)
        if getattr(self.model, "native", None) is None:
            return "the model holds no libsubbit copy (PackedTransducer.from_file with backend 'auto' or 'c')"
        if any(getattr(cls, name) is not getattr(StreamingSession, name) for name in DECODING_HOOKS):
            return f"{cls.__name__} overrides the Python decoding loop"
        if custom_frontend:
            return "a caller's frontend (the library computes its features from the manifest)"
        if self.max_symbols != native.MAX_SYMBOLS:
            return f"the library decodes {native.MAX_SYMBOLS} symbols per frame, {self.max_symbols} asked for"
        if not self.model.layers_as_loaded():
            return "the model's layers were replaced or wrapped"
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the utterance: empty audio buffer, fresh encoder and predictor states."""
        self.frontend.reset()
        if self.native is not None:  # the states live in the library
            self.native.reset()
            self.enc_state: Any = None
            self.pred_state: Any = None
            self.pred_p: Any = None
        else:
            self.enc_state = self.model.encoder.init_state()
            out, self.pred_state = self.model.predictor.step(self.blank, self.model.predictor.init_state())
            self.pred_p = self.model.joiner.project_pred(out)
        self.tokens: list[int] = []
        self.finished = False

    @property
    def takes_wake_end(self) -> bool:
        """True when :meth:`set_wake_end` applies (a Bifocal model), on either backend."""
        if self.native is not None:
            return str(self.model.config.get("arch")) == "bifocal"
        return isinstance(self.enc_state, dict) and "small_until" in self.enc_state

    def set_wake_end(self, seconds: float) -> None:
        """A keyword spotter's wake-word end, in seconds from the start of this utterance: a bifocal
        model runs the feature frames inside it on its small pathway (docs/models.md, section 3b).
        Call after ``reset()``; models without a pathway choice refuse it. On the C backend the
        library gets ``round(seconds * sample_rate)`` samples and maps them to frames the same way."""
        fe = self.frontend
        if not self.takes_wake_end:
            raise ValueError("this model has no per-frame pathway choice (only arch 'bifocal' takes a wake-word end)")
        if self.native is not None:
            wake_frames(seconds, fe.sample_rate, fe.n_fft, fe.hop)  # the same refusals (non-finite seconds)
            self.native.set_wake_end(int(round(float(seconds) * fe.sample_rate)))
            return
        self.enc_state = {**self.enc_state, "small_until": wake_frames(seconds, fe.sample_rate, fe.n_fft, fe.hop)}

    def accept_audio(self, samples: np.ndarray) -> str:
        """Buffer ``samples`` (float32 mono 16 kHz, any length); return the partial transcript."""
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be a 1-D float array (mono), got shape {x.shape}")
        if x.dtype.kind != "f":
            raise ValueError(f"samples must be float (e.g. float32 in [-1, 1]), got dtype {x.dtype}")
        if self.native is None:
            return self.text(self.accept_features(self.frontend.accept(x.astype(np.float32, copy=False))))
        if self.finished:
            raise ValueError("accept after finalize(); call reset() to start a new utterance")
        self.native.accept(x)
        self.tokens = self.native.tokens()
        return self._transcript()

    def accept_features(self, feats: np.ndarray, pathway_mask: np.ndarray | None = None) -> list[int]:
        """Feed log-mel frames ``[t, n_mels]``; returns the tokens decoded so far.

        ``pathway_mask [t]`` (bifocal models only): True runs that frame on the small pathway."""
        if self.native is not None:
            raise ValueError("accept_features needs backend='numpy': libsubbit computes its own features from audio")
        if self.finished:
            raise ValueError("accept after finalize(); call reset() to start a new utterance")
        if feats.shape[0]:
            x = np.asarray(feats, np.float32)
            enc, self.enc_state = (self.model.encoder.step(x, self.enc_state) if pathway_mask is None
                                   else self.model.encoder.step(x, self.enc_state, pathway_mask))
            self._decode(enc)
        return list(self.tokens)

    def finalize(self) -> str:
        """End of utterance: run what the encoder still holds; returns the final transcript."""
        tokens = self.finalize_tokens()
        return self._transcript() if self.native is not None else self.text(tokens)

    def finalize_tokens(self) -> list[int]:
        if not self.finished:
            if self.native is not None:
                self.native.finalize()
                self.tokens = self.native.tokens()
            else:
                enc, self.enc_state = self.model.encoder.flush(self.enc_state)
                self._decode(enc)
            self.finished = True
        return list(self.tokens)

    # -- internals -----------------------------------------------------------------------------
    def _decode(self, enc: np.ndarray) -> None:
        if enc.shape[0] == 0:
            return
        for frame in self.model.joiner.project_enc(enc):
            self._decode_frame(frame)

    def _decode_frame(self, frame: np.ndarray) -> None:
        """Greedy search on one projected encoder frame: argmax tokens until blank, at most
        ``max_symbols_per_frame`` (the benchmark's scheduled session overrides this)."""
        for _ in range(self.max_symbols):
            tok = int(np.argmax(self.model.joiner.join(frame, self.pred_p)))
            if tok == self.blank:
                break
            self._emit(tok)

    def _emit(self, tok: int) -> None:
        """Append ``tok`` and advance the predictor (and its projection) past it."""
        self.tokens.append(tok)
        out, self.pred_state = self.model.predictor.step(tok, self.pred_state)
        self.pred_p = self.model.joiner.project_pred(out)

    def _transcript(self) -> str:
        """The library's transcript, or the caller's tokenizer on the library's tokens."""
        assert self.native is not None
        return self.native.text() if self._library_text else self.text(self.tokens)

    def text(self, tokens: list[int]) -> str:
        """Transcript of ``tokens`` (token ids joined by spaces when the model has no tokenizer)."""
        if self.tokenizer is not None:
            return str(self.tokenizer.decode(list(tokens)))
        return " ".join(str(t) for t in tokens)
