"""The kernels of a model (every weight ``prepare`` can quantize) and what they weigh.

A kernel is named by its first owner's FQN, with tied owners as aliases; its bytes at a bit depth
come from :mod:`subbit.sizes`, so an allocation prices a choice exactly as the file will store
it. The rest of the state dict (biases, norms, buffers) is a fixed cost: :func:`other_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from subbit import sizes
from subbit.quant.modules import quantizable_params

#: the bit depths an allocation may choose from
BITS = tuple(range(1, 9))


def parse_bits(value: Any, where: str) -> int:
    """``value`` as a bit depth in 1..8 (an integral float or a digit string too); ValueError
    names ``where``."""
    try:
        b = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bits must be an integer in 1..8, got {value!r}") from None
    if isinstance(value, float) and value != b or not 1 <= b <= 8:
        raise ValueError(f"{where}: bits must be an integer in 1..8, got {value!r}")
    return b


@dataclass(frozen=True)
class Kernel:
    """One quantizable weight of a model, by its first owner's FQN (tied owners in ``aliases``)."""

    name: str
    module_name: str
    param_name: str
    shape: tuple[int, ...]
    type_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return sizes.count_of(self.shape)

    def groups(self, granularity: str) -> int:
        """Codebooks of this kernel: 1 per tensor, one per output channel (``shape[0]``)."""
        if granularity not in ("tensor", "channel"):
            raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
        return sizes.rows_of(self.shape) if granularity == "channel" else 1

    def bytes_at(self, bits: int, granularity: str = "tensor", codebook: str = "table") -> int:
        """Bytes in a ``.subbit`` file at ``bits``: :func:`subbit.sizes.quantized_bytes`."""
        return sizes.quantized_bytes(self.shape, bits, self.groups(granularity), codebook)

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def kernels_of(model: nn.Module) -> list[Kernel]:
    """Every weight ``subbit.quant.prepare`` can quantize, in module order; a tied Parameter once."""
    if any(".subbit_quant." in f".{n}" for n, _ in model.named_parameters()):
        raise ValueError("model is prepared for quantization; allocate bits on the fp32 model")
    found: dict[int, Kernel] = {}
    for mname, module in model.named_modules():
        for pname in quantizable_params(module):
            p = module._parameters[pname]
            fqn = f"{mname}.{pname}" if mname else pname
            if p.dim() < 1 or p.numel() == 0:
                continue
            types = tuple(c.__name__ for c in type(module).__mro__ if issubclass(c, nn.Module) and c is not nn.Module)
            if id(p) in found:  # a tied owner: its name and its module's types select the kernel too
                k = found[id(p)]
                more = tuple(t for t in types if t not in k.type_names)
                found[id(p)] = Kernel(k.name, k.module_name, k.param_name, k.shape, k.type_names + more,
                                      (*k.aliases, fqn))
                continue
            found[id(p)] = Kernel(fqn, mname, pname, tuple(int(s) for s in p.shape), types)
    return list(found.values())


def other_bytes(model: nn.Module, kernels: Sequence[Kernel]) -> int:
    """Bytes of the state-dict tensors that are not kernels (biases, norms, buffers), as stored
    in float32 by the exporter: they count against a byte budget but no choice changes them."""
    names = {n for k in kernels for n in k.names()}
    seen: set[int] = set()
    total = 0
    kernel_ptrs = set()
    for mname, module in model.named_modules():
        for pname in quantizable_params(module):
            if (f"{mname}.{pname}" if mname else pname) in names:
                kernel_ptrs.add(module._parameters[pname].data_ptr())
    for key, t in model.state_dict(keep_vars=True).items():
        if key in names or (t.numel() and t.data_ptr() in kernel_ptrs):
            continue
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += sizes.float_bytes(t.numel(), _stored_itemsize(t))
    return total


def _stored_itemsize(t: Tensor) -> int:
    """Bytes per value as the exporter stores a float-kept tensor: float32, int64, bool, else int32."""
    if t.is_floating_point():
        return sizes.F32
    if t.dtype == torch.bool:
        return 1
    return 8 if t.dtype == torch.int64 else 4



def param_of(model: nn.Module, kernel: Kernel) -> nn.Parameter:
    module = model.get_submodule(kernel.module_name) if kernel.module_name else model
    return module._parameters[kernel.param_name]


def select_kernels(model: nn.Module, kernels: Iterable[str | Kernel] | None) -> list[Kernel]:
    """``kernels`` (names or :class:`Kernel`, aliases accepted) as kernels of ``model``, each once
    and in the given order; all of them when ``None``. ValueError names the unknown ones."""
    every = kernels_of(model)
    if kernels is None:
        return every
    by_name = {n: k for k in every for n in k.names()}
    out, unknown = [], []
    for item in kernels:
        name = item.name if isinstance(item, Kernel) else str(item)
        if name not in by_name:
            unknown.append(name)
        elif by_name[name] not in out:
            out.append(by_name[name])
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown[:5]}; quantizable kernels: "
                         f"{[k.name for k in every[:6]]}{' ...' if len(every) > 6 else ''}")  # fmt: skip
    return out
