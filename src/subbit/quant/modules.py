"""Attaching a quantizer to a module's weight without replacing the module.

The latent (float) weight stays a trainable ``nn.Parameter``, moved into a
:class:`QuantizedWeight` under ``module.subbit_quant[<param name>]``; the module's original
attribute (``weight``, ``weight_hh_l1``, ...) becomes a plain tensor that a forward pre-hook
recomputes **once per module call**. The module's own forward then reads it as usual, so an
``nn.LSTM`` quantizes each matrix once per sequence, not once per time step. For ``nn.LSTM`` (and GRU, RNN) the
setter updates ``_flat_weights`` (``RNNBase.__setattr__`` does that on torch 2.13), which is the
list the fused kernel reads; ``torch.nn.utils.parametrize`` is avoided because it can silently
freeze LSTM weights (pytorch issue 65688). A post-hook detaches the stored tensor after each
call so the module stays deep-copyable and holds no autograd graph between steps.

Hooks are module-level functions (no closures) so a deep copy refreshes its own weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from subbit.quant.base import WeightQuantizer

HOLDER = "subbit_quant"
PARAM_ORDER = "_subbit_param_order"
# every convolution (1-3 d, transposed too: ``_ConvNd``), linear maps and lookup tables
_LINEAR_LIKE = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
_RNN_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
def quantizable_params(module: nn.Module) -> list[str]:
    """Names of the weight tensors of ``module`` that can be quantized (own parameters only).

    Linear, every Conv / ConvTranspose (1-3 d), Embedding, EmbeddingBag; every input, recurrent
    and projection kernel of LSTM / GRU / RNN (``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``);
    MultiheadAttention's input projection (``in_proj_weight``, or ``q/k/v_proj_weight``; its
    ``out_proj`` is a Linear child).
    """
    if isinstance(module, _LINEAR_LIKE):
        names = ["weight"]
    elif isinstance(module, nn.RNNBase):
        names = [n for n in module._flat_weights_names if n.startswith(_RNN_PREFIXES)]
    elif isinstance(module, nn.MultiheadAttention):
        names = list(_MHA_WEIGHTS)
    else:
        return []
    return [
        n for n in names
        if isinstance(module._parameters.get(n), nn.Parameter)
        and not isinstance(module._parameters[n], nn.parameter.UninitializedParameter)
    ]


class _OffStep(torch.autograd.Function):
    """The latent weight as is, plus a zero gradient for each quantizer parameter.

    On a step where the quantizer is off (``quant_mode="forward"``) the quantizer's parameters take
    no part in the loss; DDP without ``find_unused_parameters`` then waits forever (or fails) for
    their gradients. This hands them exact zeros instead.
    """

    @staticmethod
    def forward(ctx, latent: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.meta = [(p.shape, p.dtype, p.device) for p in params]
        return latent.view_as(latent)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (grad, *(torch.zeros(sh, dtype=dt, device=dev) for sh, dt, dev in ctx.meta))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class QuantizedWeight(nn.Module):
    """One quantized kernel: the latent parameter and the quantizer that maps it to the used weight."""

    def __init__(self, latent: nn.Parameter, quantizer: WeightQuantizer) -> None:
        super().__init__()
        self.latent = latent
        self.quantizer = quantizer
        # False = this forward uses the latent weight unquantized ("forward" quantization mode);
        # only in training mode: evaluation (``model.eval()``) always sees the quantized weight
        self.enabled = True
        # what the quantizer's parameters get on such a step: "auto" = zero gradients when a
        # process group of > 1 ranks is up (DDP needs every parameter's gradient each step), no
        # gradient otherwise (single-process optimizers then skip them, as before); "zero"; "none"
        self.off_grads = "auto"
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
        if not (self.enabled or not self.training or self.quantizer.is_converted):
            zero = self.off_grads == "zero" or (self.off_grads == "auto" and _distributed())
            params = [p for p in self.quantizer.parameters() if p.requires_grad]
            if zero and params and torch.is_grad_enabled():
                return _OffStep.apply(self.latent, *params)
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


_HOOKS = (_pre_hook, _post_hook, _children_pre_hook, _children_post_hook)
# (``nn.TransformerEncoderLayer``'s fused eval path reads its descendants' weights directly, but
# torch skips it whenever a submodule has forward hooks, as every quantized one does here)


def remove_hooks(module: nn.Module) -> None:
    """Drop every hook this module registered on ``module`` (for :func:`subbit.quant.strip`)."""
    for store in (module._forward_pre_hooks, module._forward_hooks):
        for key in [k for k, fn in store.items() if fn in _HOOKS]:
            del store[key]
            for extra in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                          "_forward_hooks_always_called"):
                getattr(module, extra, {}).pop(key, None)


def detach_holder(module: nn.Module) -> dict[str, QuantizedWeight]:
    """Remove ``module``'s quantized kernels and hooks; returns them by parameter name. The module's
    attributes keep the (plain tensor) weights last computed; the caller re-registers Parameters."""
    holder = _holder(module)
    remove_hooks(module)
    if holder is None:
        return {}
    kernels = {n: qw for n, qw in holder.items()}
    del module._modules[HOLDER]
    return kernels  # type: ignore[return-value]


def restore_param_order(module: nn.Module) -> None:
    """Put ``module._parameters`` back in the order it had before :func:`attach`."""
    order = module.__dict__.pop(PARAM_ORDER, None)
    if order is not None:
        params = module._parameters
        ranked = sorted(params, key=lambda n: order.index(n) if n in order else len(order))
        items = [(n, params[n]) for n in ranked]
        params.clear()
        params.update(items)


def attach(
    module: nn.Module, name: str, quantizer: WeightQuantizer, parent: nn.Module | None = None,
    shared: QuantizedWeight | None = None,
) -> QuantizedWeight:
    """Quantize ``module.<name>`` with ``quantizer``; returns the new :class:`QuantizedWeight`.

    ``shared``: a :class:`QuantizedWeight` already attached elsewhere whose latent *is* this
    parameter (tied weights): it is registered here too, so both owners compute with one
    quantizer and one latent (``quantizer`` is then ignored).
    """
    param = module._parameters.get(name)
    if not isinstance(param, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter {name!r} to quantize")
    if shared is not None and shared.latent is not param:
        raise ValueError(f"{type(module).__name__}.{name}: the shared quantized weight holds another parameter")
    holder = _holder(module)
    if holder is None:
        holder = nn.ModuleDict()
        module.add_module(HOLDER, holder)
        module.register_forward_pre_hook(_pre_hook)
        module.register_forward_hook(_post_hook)
        if isinstance(parent, nn.MultiheadAttention):
            parent.register_forward_pre_hook(_children_pre_hook)
            parent.register_forward_hook(_children_post_hook)
    if PARAM_ORDER not in module.__dict__:  # so strip() puts the Parameters back in their order
        module.__dict__[PARAM_ORDER] = list(module._parameters)
    del module._parameters[name]
    qw = QuantizedWeight(param, quantizer) if shared is None else shared
    holder[name] = qw
    with torch.no_grad():
        setattr(module, name, qw.compute().detach())
    return qw


def attached(module: nn.Module) -> dict[str, QuantizedWeight]:
    """The quantized kernels attached to ``module`` itself (not its children), by parameter name."""
    holder = _holder(module)
    return {} if holder is None else {n: qw for n, qw in holder.items()}  # type: ignore[misc]
