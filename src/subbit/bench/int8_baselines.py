"""The benchmark's int8 baselines, one module per backend (names kept at this old import path).

:mod:`subbit.bench.torch_int8`: the float model and torch.ao dynamic int8 (the only module that
touches the deprecated ``torch.ao``). onnxruntime: :mod:`subbit.bench.onnx_export` writes the
streaming graphs as int8 ONNX, :mod:`subbit.bench.onnx_int8` runs them (without torch). Both wrap the
models' own streaming code in the runtime's interface, so the very same ``StreamingSession`` loop
drives every variant.
"""

from __future__ import annotations

from subbit.bench.onnx_export import export_onnx_int8
from subbit.bench.onnx_int8 import ORT_FILES, OrtStreamingModel, ort_available, ort_weight_bytes
from subbit.bench.torch_int8 import (
    TorchStreamingModel,
    quantize_torch_int8,
    torch_int8_streaming_model,
    torch_weight_bytes,
)

__all__ = [
    "ORT_FILES", "OrtStreamingModel", "TorchStreamingModel", "export_onnx_int8", "ort_available", "ort_weight_bytes",
    "quantize_torch_int8", "torch_int8_streaming_model", "torch_weight_bytes",
]
