"""Attaching a quantizer to a module's weight without replacing the module.

The latent (float) weight stays a trainable ``nn.Parameter``, moved into a
:class:`QuantizedWeight` under ``module.subbit_quant[<param name>]``; the module's original
attribute (``weight``, ``weight_hh_l1``, ...) becomes a plain tensor that a forward pre-hook
recomputes **once per module call**. The module's own forward then reads it as usual, so an
``nn.LSTM`` quantizes each matrix once per sequence, not once per time step. For ``nn.LSTM`` the
setter updates ``_flat_weights`` (``RNNBase.__setattr__`` does that on torch 2.13), which is the
list the fused kernel reads; ``torch.nn.utils.parametrize`` is avoided because it can silently
freeze LSTM weights (pytorch issue 65688). A post-hook detaches the stored tensor after each
call so the module stays deep-copyable and holds no autograd graph between steps.

Hooks are module-level functions (no closures) so a deep copy refreshes its own weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subbit.quant.base import WeightQuantizer

HOLDER = "subbit_quant"
_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
_LSTM_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")


def quantizable_params(module: nn.Module) -> list[str]:
    """Names of the weight tensors of ``module`` that can be quantized (own parameters only)."""
    if isinstance(module, _LINEAR_LIKE):
        names = ["weight"]
    elif isinstance(module, nn.LSTM):
        names = [n for n in module._flat_weights_names if n.startswith(_LSTM_PREFIXES)]
    else:
        return []
    return [n for n in names if isinstance(module._parameters.get(n), nn.Parameter)]


class QuantizedWeight(nn.Module):
    """One quantized kernel: the latent parameter and the quantizer that maps it to the used weight."""

    def __init__(self, latent: nn.Parameter, quantizer: WeightQuantizer) -> None:
        super().__init__()
        self.latent = latent
        self.quantizer = quantizer
        # False = this forward uses the latent weight unquantized ("forward" quantization mode)
        self.enabled = True
        self._cache: tuple[tuple, Tensor] | None = None

    def _state_key(self) -> tuple:
        # in-place updates (optimizer steps, load_state_dict, set_tau) bump a tensor's _version
        tensors = [self.latent, *self.quantizer.parameters(), *self.quantizer.buffers()]
        return tuple((t._version, t.data_ptr()) for t in tensors)

    def compute(self) -> Tensor:
        """The weight the module computes with (a plain tensor, never the Parameter itself).

        Without autograd (evaluation, step-by-step decoding) the result is cached until the
        latent weight or a quantizer parameter/buffer changes, so a predictor called once per
        emitted token does not re-quantize its weights each call.
        """
        if not (self.enabled or bool(self.quantizer.converted)):
            return self.latent.view_as(self.latent)
        if torch.is_grad_enabled():
            self._cache = None
            return self.quantizer(self.latent)
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.quantizer(self.latent))
        return self._cache[1]


def _holder(module: nn.Module) -> nn.ModuleDict | None:
    holder = module._modules.get(HOLDER)
    return holder if isinstance(holder, nn.ModuleDict) else None


def refresh(module: nn.Module) -> None:
    """Recompute ``module``'s quantized weights from their latent parameters."""
    holder = _holder(module)
    if holder is not None:
        for name, qw in holder.items():
            setattr(module, name, qw.compute())


def _detach(module: nn.Module) -> None:
    holder = _holder(module)
    if holder is not None:
        for name in holder:
            setattr(module, name, getattr(module, name).detach())


def _pre_hook(module: nn.Module, args: tuple) -> None:
    refresh(module)


def _post_hook(module: nn.Module, args: tuple, output: object) -> None:
    _detach(module)


def _children_pre_hook(module: nn.Module, args: tuple) -> None:
    # parents that read a child's weight without calling the child (MultiheadAttention.out_proj)
    for child in module.children():
        refresh(child)


def _children_post_hook(module: nn.Module, args: tuple, output: object) -> None:
    for child in module.children():
        _detach(child)


def attach(
    module: nn.Module, name: str, quantizer: WeightQuantizer, parent: nn.Module | None = None
) -> QuantizedWeight:
    """Quantize ``module.<name>`` with ``quantizer``; returns the new :class:`QuantizedWeight`."""
    param = module._parameters.get(name)
    if not isinstance(param, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter {name!r} to quantize")
    holder = _holder(module)
    if holder is None:
        holder = nn.ModuleDict()
        module.add_module(HOLDER, holder)
        module.register_forward_pre_hook(_pre_hook)
        module.register_forward_hook(_post_hook)
        if isinstance(parent, nn.MultiheadAttention):
            parent.register_forward_pre_hook(_children_pre_hook)
            parent.register_forward_hook(_children_post_hook)
    del module._parameters[name]
    qw = QuantizedWeight(param, quantizer)
    holder[name] = qw
    with torch.no_grad():
        setattr(module, name, qw.compute().detach())
    return qw


def attached(module: nn.Module) -> dict[str, QuantizedWeight]:
    """The quantized kernels attached to ``module`` itself (not its children), by parameter name."""
    holder = _holder(module)
    return {} if holder is None else {n: qw for n, qw in holder.items()}  # type: ignore[misc]
