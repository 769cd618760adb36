"""The contract every weight quantizer (GQ and each baseline) fulfils.

One :class:`WeightQuantizer` owns one weight tensor ("kernel"). ``prepare`` attaches it to the
module holding the tensor; the module then computes with ``quantizer(latent_weight)``. Export
only needs :meth:`WeightQuantizer.encode`: integer indices plus a codebook, whatever the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from subbit.quant.options import MethodOptions

GRANULARITIES = ("tensor", "channel")


class WeightQuantizer(nn.Module):
    """Base class: fake-quantizes one weight tensor for training and encodes it for export.

    Groups: ``granularity="tensor"`` gives one codebook for the whole tensor (G = 1);
    ``"channel"`` gives one per output channel, i.e. per slice along dim 0 (G = shape[0]).
    """

    method: ClassVar[str] = "base"
    #: option fields also set as plain attributes (``q.tau``, ``q.impl``): the forward reads them
    #: and a caller may switch one (``q.impl = "static"``) without rebuilding ``options``
    option_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight: Tensor, bits: int, granularity: str = "tensor",
                 options: MethodOptions | Mapping[str, Any] | None = None, **kw: Any) -> None:
        """Checks the arguments, parses ``options`` (a dataclass, a partial dict and/or keywords)
        into ``self.options`` (see :meth:`parse_options`), copies :attr:`option_attributes`, then
        calls :meth:`build`: the prologue every method shares. A method without an ``Options``
        class may override ``__init__``, take ``**options`` and check them itself."""
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if weight.dim() < 1 or weight.numel() == 0:
            raise ValueError(f"cannot quantize an empty or scalar tensor of shape {tuple(weight.shape)}")
        self.bits = bits
        self.granularity = granularity
        self.shape = tuple(weight.shape)
        self.register_buffer("converted", torch.zeros((), dtype=torch.bool))
        self.options = self.parse_options(options, **kw)
        for name in self.option_attributes:
            setattr(self, name, getattr(self.options, name))
        self.build(weight)

    def build(self, weight: Tensor) -> None:
        """Create the method's parameters and buffers from the float ``weight`` (options parsed)."""

    # the method's option dataclass (a subclass of MethodOptions); configs validate with it. A
    # method that keeps the base (no fields) takes ``**options`` and checks them itself
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    @classmethod
    def parse_options(cls, options: MethodOptions | Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """The method's options from a dataclass, a (partial) dict and/or keyword arguments, the
        keywords winning; ValueError names a bad or unknown option."""
        base = cls.Options.from_dict(options)
        return cls.Options.from_dict({**base.to_dict(), **kw}) if kw else base

    # -- host mirrors: Python copies of small buffers, so a forward syncs nothing -----------
    def _host_value(self, name: str) -> float:
        """``float(buffer)``, re-read from the device only when the buffer was written since
        (its ``_version`` or storage changed: ``fill_``, ``copy_``, ``load_state_dict``, ``.to``)."""
        t: Tensor = getattr(self, name)
        cache = self.__dict__.setdefault("_host_cache", {})
        hit = cache.get(name)
        if torch.compiler.is_compiling():  # no _version under tracing: trust the last eager read
            return hit[1] if hit is not None else float(t)
        key = (t._version, t.data_ptr(), t.device)
        if hit is None or hit[0] != key:
            hit = cache[name] = (key, float(t))
        return hit[1]

    def _remember(self, name: str, value: float) -> None:
        """Record ``value`` as the mirror of a buffer just written on the host (rounded to the
        buffer's dtype on the CPU, as the buffer holds it, so the mirror equals ``float(buffer)``)."""
        t: Tensor = getattr(self, name)
        value = float(torch.tensor(value, dtype=t.dtype))
        self.__dict__.setdefault("_host_cache", {})[name] = ((t._version, t.data_ptr(), t.device), value)

    @property
    def is_converted(self) -> bool:
        """``bool(self.converted)`` from its host mirror (see :meth:`_host_value`)."""
        return bool(self._host_value("converted"))

    def mark_converted(self) -> None:
        """Set ``converted`` (``subbit.quant.convert`` calls this)."""
        self.converted.fill_(True)
        self._remember("converted", 1.0)

    # -- sizes -------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return 2**self.bits

    @property
    def num_groups(self) -> int:
        return self.shape[0] if self.granularity == "channel" else 1

    def grouped(self, w: Tensor) -> Tensor:
        """View ``w`` as ``[G, N/G]`` (rows = groups)."""
        return w.reshape(self.num_groups, -1)

    # -- what subclasses implement -------------------------------------------------------
    def forward(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Training forward: differentiable fake-quantized weight, same shape as ``w``."""
        raise NotImplementedError

    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Hard assignment for export: ``(indices int64 shaped like w, codebook [G, 2**bits])``.

        ``codebook.gather(1, indices.reshape(G, -1)).reshape(w.shape) == self.hard(w)``.
        """
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------
    @torch.no_grad()
    def hard(self, w: Tensor) -> Tensor:
        """The deployed weight: every value is a codebook entry of its group."""
        idx, codebook = self.encode(w)
        flat = idx.reshape(self.num_groups, -1)
        return codebook.gather(1, flat).reshape(w.shape).to(w.dtype)

    def regularization(self, w: Tensor) -> Tensor:
        """Loss term the training loop adds (only S8BQAT has one; GQ is regularization-free)."""
        return w.new_zeros(())

    def set_tau(self, tau: float) -> None:
        """Softmax temperature from the schedule; methods without one ignore it."""

    def hardness(self, w: Tensor) -> float:
        """Mean probability of the most likely centroid (1.0 = one-hot); hard methods give 1."""
        return 1.0

    def extra_repr(self) -> str:
        return f"method={self.method}, bits={self.bits}, granularity={self.granularity}, shape={self.shape}"
