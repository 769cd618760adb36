"""Packed RNN-T, Conformer and Bifocal RNN-T transducers rebuilt from a ``.subbit`` file's arch config.

Mirrors :mod:`subbit.asr.models` (docs/models.md) layer for layer, with the same parameter
names, so a model exported from training runs here without any training code. Streaming
states are plain dicts of NumPy arrays; one utterance at a time (no batch dimension). The
encoders live in :mod:`subbit.runtime.encoders` and :mod:`subbit.runtime.bifocal`, the arch
checks in :mod:`subbit.runtime.arch`; their names are re-exported here.

Backends: the NumPy layers below are always built (they are the reference, and what the
streaming interface exposes); ``backend="auto"`` (the default) or ``"c"`` also loads the file
into libsubbit (:mod:`subbit.runtime.native`), which :class:`StreamingSession` then runs.
``"auto"`` takes the library for the architectures it runs (rnnt, conformer, bifocal; ``threads``
becomes each session's worker count) and NumPy otherwise (a library that is missing, with
one logged warning, or that refuses the file, with a warning naming the status); ``"numpy"`` never
loads it; ``"c"`` raises where ``"auto"`` would fall back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from subbit.export.loading import load_packed
from subbit.export.manifest import SubbitFormatError
from subbit.runtime.arch import ARCH_LIMITS, bad_arch, cfg_int, check_dims  # noqa: F401 (ARCH_LIMITS: re-exported)
from subbit.runtime.bifocal import BifocalEncoder, BifocalLayer, wake_frames  # noqa: F401 (re-exported)
from subbit.runtime.encoders import ConformerEncoder, LSTMEncoder, State, StackedEncoder  # noqa: F401 (re-exported)
from subbit.runtime import native
from subbit.runtime.layers import Array, Embedding, PackedLSTM, WeightStore

log = logging.getLogger(__name__)
#: the model's ``backend`` choices (see the module docstring)
BACKENDS = ("auto", "c", "numpy")
#: the streaming interface of encoder, predictor and joiner (subbit.runtime.session)
STREAMING_METHODS = (("init_state", "step", "flush"), ("init_state", "step"), ("project_enc", "project_pred", "join"))
#: a model given as a path or the file's bytes, for libsubbit
Source = str | os.PathLike[str] | bytes

#: the old private name (libsubbit's build.c and the tests refer to it)
_cfg_int = cfg_int


class Predictor:
    """Embedding (blank = start) -> LSTM layers; one token per step."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "predictor") -> None:
        self.blank = cfg_int(cfg, "blank", 0)
        self.embed = Embedding(store, f"{prefix}.embed.weight")
        n_layers = cfg_int(cfg, "pred_layers")
        self.lstms = [PackedLSTM.from_store(store, f"{prefix}.lstms.{i}") for i in range(n_layers)]
        width = self.embed.dim
        for i, lstm in enumerate(self.lstms):
            check_dims(f"{prefix}.lstms.{i} input size", lstm.in_features, width)
            width = lstm.output_size
        if not 0 <= self.blank < self.embed.num:
            raise bad_arch(f"manifest arch.blank: {self.blank} outside the embedding table of {self.embed.num} rows")
        self.output_dim = self.lstms[-1].hidden

    def init_state(self) -> State:
        return {"lstm": [lstm.init_state() for lstm in self.lstms]}

    def step(self, token: int, state: State) -> tuple[Array, State]:
        x = self.embed(int(token)).reshape(1, -1)
        new = []
        for lstm, s in zip(self.lstms, state["lstm"]):
            x, s2 = lstm(x, s)
            new.append(s2)
        return x[0], {"lstm": new}


class Joiner:
    """``out(tanh(enc_proj(enc) + pred_proj(pred)))``; projections are applied once per frame/token."""

    def __init__(self, store: WeightStore, prefix: str = "joiner") -> None:
        self.enc_proj = store.linear(f"{prefix}.enc_proj")
        self.pred_proj = store.linear(f"{prefix}.pred_proj")
        self.out = store.linear(f"{prefix}.out")

    def project_enc(self, enc: Array) -> Array:
        return self.enc_proj(enc)

    def project_pred(self, pred: Array) -> Array:
        return self.pred_proj(pred.reshape(1, -1))[0]

    def join(self, enc_p: Array, pred_p: Array) -> Array:
        """Logits ``[..., V]`` from projected inputs ``[..., J]`` (broadcasting leading dims)."""
        h = np.tanh(enc_p + pred_p).astype(np.float32)
        shape = h.shape
        return self.out(h.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)


class PackedTransducer:
    """Encoder + predictor + joiner running on packed weights; ``from_file`` loads a ``.subbit``."""

    def __init__(self, store: WeightStore, config: dict[str, Any], tokenizer_bytes: bytes | None = None,
                 manifest: dict[str, Any] | None = None, native_model: native.NativeModel | None = None) -> None:
        arch = config.get("arch")
        if arch == "rnnt":
            self.encoder: LSTMEncoder | ConformerEncoder | BifocalEncoder = LSTMEncoder(store, config)
        elif arch == "conformer":
            self.encoder = ConformerEncoder(store, config)
        elif arch == "bifocal":
            self.encoder = BifocalEncoder(store, config)
        else:
            raise bad_arch(f"manifest arch: field 'arch' must be 'rnnt', 'conformer' or 'bifocal', got {arch!r:.40}")
        self.predictor = Predictor(store, config)
        self.joiner = Joiner(store)
        self.config = dict(config)
        self.store = store
        self.tokenizer_bytes = tokenizer_bytes
        self.manifest = manifest or {}
        self.blank = cfg_int(config, "blank", 0)
        self.vocab_size = cfg_int(config, "vocab_size")
        self.n_mels = cfg_int(config, "n_mels")
        j = self.joiner
        check_dims("joiner.enc_proj input size", j.enc_proj.in_features, self.encoder.output_dim)
        check_dims("joiner.pred_proj input size", j.pred_proj.in_features, self.predictor.lstms[-1].output_size)
        check_dims("joiner.pred_proj output size", j.pred_proj.out_features, j.enc_proj.out_features)
        check_dims("joiner.out input size", j.out.in_features, j.enc_proj.out_features)
        check_dims("joiner.out output size (vocab_size)", j.out.out_features, self.vocab_size)
        if self.blank >= self.vocab_size:
            raise bad_arch(f"manifest arch.blank: {self.blank} outside [0, vocab_size - 1 = {self.vocab_size - 1}]")
        unused = store.unused()
        if unused:
            raise ValueError(f"model file has tensors the {arch} runtime does not use: {unused[:8]}")
        #: the same file loaded into libsubbit, or None (NumPy only)
        self.native = native_model
        self._built = (self.encoder, self.predictor, self.joiner)

    @property
    def backend(self) -> str:
        """``"c"`` when libsubbit holds this model (sessions may run there), else ``"numpy"``."""
        return "c" if self.native is not None else "numpy"

    def layers_as_loaded(self) -> bool:
        """True while encoder, predictor and joiner are the objects built from the file and no
        method of theirs was replaced on the instance (a test wrapping ``joiner.join`` to log its
        outputs): only then does libsubbit compute what they would."""
        parts = (self.encoder, self.predictor, self.joiner)
        return all(a is b for a, b in zip(parts, self._built)) and not any(
            name in vars(part) for part, names in zip(parts, STREAMING_METHODS) for name in names)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], threads: int = 1, backend: str = "auto") -> "PackedTransducer":
        """Load a ``.subbit`` file (validated by :func:`subbit.export.load_packed`).

        ``threads``: large packed layers split their rows over this many threads (both backends;
        libsubbit's sessions get that many worker threads).
        ``backend``: ``"auto"``, ``"c"`` or ``"numpy"`` (module docstring)."""
        return cls.from_packed(load_packed(path), threads, backend, source=path)

    @classmethod
    def from_packed(cls, pm: Any, threads: int = 1, backend: str = "auto", source: Source | None = None) -> "PackedTransducer":
        """The runtime model of a loaded :class:`subbit.export.PackedModel`. libsubbit reads the
        file itself, so it needs ``source`` (the path or bytes ``pm`` came from); without one
        ``"auto"`` stays on NumPy."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        packed, floats, manifest, arch, tok = _unpack_model(pm)
        store = WeightStore(packed, floats, threads)
        try:
            model = cls(store, arch, tok, manifest)
        except SubbitFormatError:
            raise
        except ValueError as exc:  # a layer's own shape check: the file's arch and tensors disagree
            raise bad_arch(f"manifest arch / tensors disagree: {exc}") from None
        model.native = _load_native(backend, str(arch.get("arch")), source, threads)
        return model

    @property
    def weight_bytes(self) -> int:
        """Resident bytes of every weight the runtime holds (packed indices, codebooks, floats)."""
        return weight_bytes(self.store)


def weight_bytes(store: WeightStore) -> int:
    """Resident bytes of every weight in ``store``: packed tensors with their kernel tables,
    decoded ones, float tensors."""
    return store.resident_bytes()


def _load_native(backend: str, arch: str, source: Source | None, threads: int) -> native.NativeModel | None:
    """libsubbit's copy of the model for ``backend``, or None where NumPy runs it."""
    if backend == "numpy":
        return None
    why = (f"the package runs {' and '.join(native.ARCHS)} in libsubbit, not {arch}" if arch not in native.ARCHS
           else "libsubbit needs the file: pass source= (a path or the bytes)" if source is None
           else None)  # fmt: skip
    if why is not None:
        if backend == "c":
            raise ValueError(f"backend='c': {why}")
        log.debug("packed runtime on NumPy: %s", why)
        return None
    if backend == "c":
        return native.NativeModel(source, threads)
    if not native.available():  # the library logged why, once
        return None
    try:
        return native.NativeModel(source, threads)
    except native.LibsubbitError as exc:  # the Python loader took the file: the reference runs it
        log.warning("libsubbit refused a file the Python runtime loads (%s): running it on NumPy", exc)
        return None


def _unpack_model(pm: Any) -> tuple[dict[str, Any], dict[str, Array], dict[str, Any], dict[str, Any], bytes | None]:
    """(packed tensors, float tensors, manifest, arch config, tokenizer bytes) of a PackedModel."""
    try:
        packed, floats, manifest, tok = pm.packed, pm.floats, pm.manifest, pm.tokenizer_bytes
    except AttributeError:
        raise ValueError(f"expected a subbit.export PackedModel, got {type(pm).__name__}") from None
    arch = manifest.get("arch") if isinstance(manifest, dict) else None
    if not isinstance(arch, dict):
        raise ValueError("the .subbit manifest has no 'arch' config dict: export with arch=model.config")
    return dict(packed), {k: np.asarray(v) for k, v in dict(floats).items()}, manifest, arch, tok
