"""subbit.quant: sub-8-bit quantization-aware training for any PyTorch model.

Typical use::

    from subbit.quant import QuantConfig, GQScheduler, prepare, convert, report
    model = prepare(model, QuantConfig.from_dict({"default": {"bits": 4}}))
    sched = GQScheduler(model, total_steps)
    for batch in data:          # loss.backward(); opt.step(); sched.step()
        ...
    convert(model); print(report(model))
    plain = strip(model)        # an ordinary module: original state_dict keys, quantized values
"""

from subbit.quant.allocate import Allocation, Constraints, Sensitivity, allocate, measure_sensitivity
from subbit.quant.api import (
    PrepareInfo,
    QuantizedTensor,
    QuantReport,
    ReportRow,
    convert,
    get_config,
    is_prepared,
    packed_bytes,
    prepare,
    prepare_info,
    quantized_tensors,
    quantizer_enabled,
    regularization,
    report,
    strip,
)
from subbit.quant.base import WeightQuantizer
from subbit.quant.gq import GeneralQuantizer, GQOptions
from subbit.quant.grads import clip_latent_grad_norm_
from subbit.quant.mulaw import compand, expand
from subbit.quant.options import MethodOptions
from subbit.quant.registry import get_method, known_methods, register_method
from subbit.quant.rules import LayerSpec, QuantConfig
from subbit.quant.schedule import GQScheduler

__all__ = [
    "Allocation", "Constraints", "Sensitivity", "allocate", "measure_sensitivity",
    "GQOptions", "GQScheduler", "GeneralQuantizer", "LayerSpec", "MethodOptions", "PrepareInfo", "QuantConfig", "QuantReport",
    "QuantizedTensor", "ReportRow", "WeightQuantizer", "clip_latent_grad_norm_", "compand", "convert", "expand", "get_config",
    "get_method", "is_prepared", "known_methods", "packed_bytes", "prepare", "prepare_info",
    "quantized_tensors", "quantizer_enabled", "register_method", "regularization", "report", "strip",
]
