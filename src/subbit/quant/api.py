"""The public verbs: prepare a model for QAT, convert it to hard weights, and report on it.

They talk to quantizers only through the :class:`~subbit.quant.base.WeightQuantizer` contract, so
every registered method (GQ and the baselines) works the same way.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from subbit import sizes
from subbit.quant.base import WeightQuantizer
from subbit.quant.modules import attach, attached, quantizable_params, refresh
from subbit.quant.registry import get_method
from subbit.quant.rules import QuantConfig

log = logging.getLogger(__name__)

_CONFIG_ATTR = "_subbit_quant_config"
_INFO_ATTR = "_subbit_quant_info"


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized kernel, as the exporter and the scheduler see it."""

    name: str  # original parameter FQN, e.g. "encoder.lstm.weight_hh_l1"
    module: nn.Module
    param_name: str
    quantizer: WeightQuantizer
    latent: nn.Parameter


@dataclass
class PrepareInfo:
    """What ``prepare`` decided: the rule each tensor used, what matched nothing, what stayed float."""

    matched: dict[str, str] = field(default_factory=dict)  # tensor FQN -> rule key ("default")
    unmatched_rules: list[str] = field(default_factory=list)
    float_tensors: list[str] = field(default_factory=list)


def is_prepared(model: nn.Module) -> bool:
    return isinstance(getattr(model, _CONFIG_ATTR, None), QuantConfig)


def get_config(model: nn.Module) -> QuantConfig:
    if not is_prepared(model):
        raise ValueError("model is not prepared for quantization; call subbit.quant.prepare first")
    return getattr(model, _CONFIG_ATTR)


def prepare_info(model: nn.Module) -> PrepareInfo:
    get_config(model)
    return getattr(model, _INFO_ATTR)


def prepare(model: nn.Module, config: QuantConfig, inplace: bool = True) -> nn.Module:
    """Attach a quantizer to every weight the config selects; returns the (possibly copied) model.

    Rules that matched no tensor and weights left in float are logged (warning) and kept in
    :func:`prepare_info`. Raises ValueError on an invalid config or a model prepared twice.
    """
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config: expected a QuantConfig, got {type(config).__name__}")
    if is_prepared(model):
        raise ValueError("model is already prepared for quantization")
    if not inplace:
        model = copy.deepcopy(model)
    info = PrepareInfo()
    used: set[str] = set()
    parents = {id(child): mod for _, mod in model.named_modules() for child in mod.children()}
    plan = []
    for mname, module in model.named_modules():
        for pname in quantizable_params(module):
            fqn = f"{mname}.{pname}" if mname else pname
            key, spec = config.match(mname, module, pname)
            if key is not None:
                used.add(key)
            if spec is None:
                info.float_tensors.append(fqn)
                continue
            plan.append((fqn, module, pname, spec))
            info.matched[fqn] = key or "default"
    for fqn, module, pname, spec in plan:  # build every quantizer before touching the model
        cls = get_method(spec.method)
        weight = module._parameters[pname]
        try:
            quantizer = cls(weight.detach(), spec.bits, spec.granularity, **spec.options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{fqn}: cannot build {spec.method!r} quantizer: {err}") from None
        quantizer.to(device=weight.device)
        attach(module, pname, quantizer, parents.get(id(module)))
    quantized = set(info.matched)
    for name, p in model.named_parameters():
        if p.dim() >= 2 and ".subbit_quant." not in f".{name}" and name not in quantized:
            if name not in info.float_tensors:
                info.float_tensors.append(name)
    info.unmatched_rules = [k for k in config.rules if k not in used]
    for key in info.unmatched_rules:
        log.warning("quantization rule %r matched no tensor", key)
    if info.float_tensors:
        log.warning("weights left in float: %s", ", ".join(info.float_tensors))
    setattr(model, _CONFIG_ATTR, config)
    setattr(model, _INFO_ATTR, info)
    return model


def quantized_tensors(model: nn.Module) -> Iterator[QuantizedTensor]:
    """Every quantized kernel of ``model`` in module order."""
    for mname, module in model.named_modules():
        for pname, qw in attached(module).items():
            fqn = f"{mname}.{pname}" if mname else pname
            yield QuantizedTensor(fqn, module, pname, qw.quantizer, qw.latent)


def _modules_with_quant(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if attached(module):
            yield module


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Use quantized (True) or latent (False) weights in the next forwards ("forward" T_q mode)."""
    for module in _modules_with_quant(model):
        for qw in attached(module).values():
            qw.enabled = enabled


def convert(model: nn.Module) -> nn.Module:
    """Hard-quantize in place: from now on every quantized weight is a codebook entry of its group
    and the forward equals the hard forward of training. Returns ``model``."""
    get_config(model)
    for qt in quantized_tensors(model):
        qt.quantizer.converted.fill_(True)
    with torch.no_grad():
        for module in _modules_with_quant(model):
            refresh(module)
            for name in attached(module):
                setattr(module, name, getattr(module, name).detach())
    return model


def regularization(model: nn.Module) -> Tensor:
    """Sum of the quantizers' loss terms (zero for GQ; S8BQAT's regularizer)."""
    total: Tensor | None = None
    for qt in quantized_tensors(model):
        r = qt.quantizer.regularization(qt.latent)
        total = r if total is None else total + r
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total


def codebook_bytes(quantizer: WeightQuantizer, weight: Tensor | None = None) -> int:
    """Bytes of the codebooks as the exporter writes them (float32, :func:`subbit.sizes.codebook_bytes`):
    one step per group when the codebook is bit-exactly affine (:func:`subbit.sizes.find_affine`:
    uniform grids), the full ``[G, 2**bits]`` table otherwise. Telling the two apart needs the
    codebook, so pass the latent ``weight``; without it the table size is returned (an upper bound)."""
    g, bits = quantizer.num_groups, quantizer.bits
    kind = "table"
    if weight is not None:
        with torch.no_grad():
            _, cb = quantizer.encode(weight.detach())
        kind = sizes.codebook_kind(cb.detach().to(torch.float32).cpu().numpy())
    return sizes.codebook_bytes(g, bits, kind)


def packed_bytes(quantizer: WeightQuantizer, weight: Tensor | None = None) -> int:
    """``ceil(numel * bits / 8)`` index bytes (:func:`subbit.sizes.ideal_index_bytes`, no row
    padding) + :func:`codebook_bytes` (same ``weight`` rule)."""
    return sizes.ideal_index_bytes(math.prod(quantizer.shape), quantizer.bits) + codebook_bytes(quantizer, weight)


@dataclass
class ReportRow:
    name: str
    method: str
    bits: int
    groups: int
    numel: int
    tau: float | None
    hardness: float
    rmse: float
    packed_bytes: int


@dataclass
class QuantReport:
    """Per-tensor summary of a prepared model; ``str()`` is an aligned table."""

    rows: list[ReportRow]
    float_tensors: list[str]
    unmatched_rules: list[str]
    float_bytes: int  # fp32 bytes of every parameter not quantized (biases, norms, float weights)

    @property
    def quantized_bytes(self) -> int:
        return sum(r.packed_bytes for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "float_tensors": list(self.float_tensors),
            "unmatched_rules": list(self.unmatched_rules),
            "float_bytes": self.float_bytes,
            "quantized_bytes": self.quantized_bytes,
        }

    def __str__(self) -> str:
        head = ["tensor", "method", "bits", "groups", "numel", "tau", "hardness", "rmse", "packed_B"]
        body = [
            [r.name, r.method, str(r.bits), str(r.groups), str(r.numel),
             "-" if r.tau is None else f"{r.tau:.3g}", f"{r.hardness:.4f}", f"{r.rmse:.3g}", str(r.packed_bytes)]
            for r in self.rows
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]

        def fmt(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        lines.append(f"quantized: {self.quantized_bytes} B packed; float: {self.float_bytes} B")
        if self.float_tensors:
            lines.append("left in float: " + ", ".join(self.float_tensors))
        if self.unmatched_rules:
            lines.append("rules that matched nothing: " + ", ".join(self.unmatched_rules))
        return "\n".join(lines)


@torch.no_grad()
def report(model: nn.Module) -> QuantReport:
    """Bits, hardness, weight error and packed size of every quantized tensor."""
    info = prepare_info(model)
    rows = []
    for qt in quantized_tensors(model):
        q = qt.quantizer
        w = qt.latent.detach()
        rmse = float(torch.sqrt(torch.mean((q.hard(w).float() - w.float()) ** 2)))
        tau = getattr(q, "tau", None)
        rows.append(ReportRow(
            name=qt.name, method=q.method, bits=q.bits, groups=q.num_groups, numel=w.numel(),
            tau=None if tau is None else float(tau), hardness=float(q.hardness(w)), rmse=rmse,
            packed_bytes=packed_bytes(q, w),
        ))
    float_bytes = sum(
        sizes.float_bytes(p.numel(), p.element_size())
        for n, p in model.named_parameters()
        if ".subbit_quant." not in f".{n}"
    )
    return QuantReport(rows, list(info.float_tensors), list(info.unmatched_rules), float_bytes)
