"""subbit.runtime: packed-weight streaming inference (NumPy + C kernels, no torch, no training code).

Public API (imported lazily, so ``subbit.runtime.kernels`` stays importable on its own)::

    from subbit.runtime import PackedTransducer, StreamingSession
    model = PackedTransducer.from_file("model.subbit")
    session = StreamingSession(model)
    partial = session.accept_audio(samples_16k_float32)   # any chunk size
    text = session.finalize()

``backend="auto"`` (the default) runs RNN-T and Conformer sessions in libsubbit, the C runtime
(:mod:`subbit.runtime.native`), and the rest on the NumPy layers; ``"numpy"`` is the reference.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "PackedTransducer": "subbit.runtime.models",
    "StreamingSession": "subbit.runtime.session",
    "StreamingLogMel": "subbit.runtime.frontend",
    "PackedLinear": "subbit.runtime.layers",
    "FloatLinear": "subbit.runtime.layers",
    "PackedLSTM": "subbit.runtime.layers",
    "WeightStore": "subbit.runtime.layers",
    "NativeModel": "subbit.runtime.native",
    "NativeSession": "subbit.runtime.native",
    "LibsubbitError": "subbit.runtime.native",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'subbit.runtime' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
