"""subbit: sub-8-bit quantization-aware training (the General Quantizer) for on-device ASR.

Layers, from the bottom up (imports only ever point downwards):
``quant`` (the method, model-agnostic) -> ``asr`` (speech models and data) ->
``export`` / ``runtime`` (packed file and inference) -> ``bench`` / ``experiments`` -> ``cli``.
"""

__version__ = "0.1.0"
