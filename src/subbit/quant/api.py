"""The public verbs: prepare a model for QAT, convert it to hard weights, and report on it.

They talk to quantizers only through the :class:`~subbit.quant.base.WeightQuantizer` contract, so
every registered method (GQ and the baselines) works the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from subbit import sizes
from subbit.quant.base import WeightQuantizer
from subbit.quant.modules import (
    QuantizedWeight, attach, attached, detach_holder, quantizable_params, refresh, remove_hooks, restore_param_order,
)
from subbit.quant.registry import get_method
from subbit.quant.rules import LayerSpec, QuantConfig
from subbit.quant.summary import QuantReport, ReportRow, codebook_bytes, packed_bytes  # noqa: F401 (re-exported)

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
    # other FQNs of the same (tied) Parameter: they compute with this quantizer and latent
    aliases: tuple[str, ...] = ()


@dataclass
class PrepareInfo:
    """What ``prepare`` decided: the rule each tensor used, what matched nothing, what stayed float.

    ``unsupported``: weights (2-D or more) the config wants quantized but no quantizer can be
    attached to (a custom module's own Parameter, ...): they stay float, with a warning; give them
    an explicit ``None`` rule to say that is intended. ``tied``: first FQN of a shared Parameter ->
    its other FQNs (one quantizer serves all). ``densified``: ``Embedding(sparse=True)`` modules
    switched to dense gradients (a quantized weight is not a leaf, so it has no sparse gradient).
    """

    matched: dict[str, str] = field(default_factory=dict)  # tensor FQN -> rule key ("default")
    unmatched_rules: list[str] = field(default_factory=list)
    float_tensors: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    tied: dict[str, list[str]] = field(default_factory=dict)
    densified: list[str] = field(default_factory=list)


def is_prepared(model: nn.Module) -> bool:
    return isinstance(getattr(model, _CONFIG_ATTR, None), QuantConfig)


def get_config(model: nn.Module) -> QuantConfig:
    if not is_prepared(model):
        raise ValueError("model is not prepared for quantization; call subbit.quant.prepare first")
    return getattr(model, _CONFIG_ATTR)


def prepare_info(model: nn.Module) -> PrepareInfo:
    get_config(model)
    return getattr(model, _INFO_ATTR)


def _same_spec(a: LayerSpec | None, b: LayerSpec | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.to_dict() == b.to_dict())


def prepare(model: nn.Module, config: QuantConfig, inplace: bool = True, strict: bool = False) -> nn.Module:
    """Attach a quantizer to every weight the config selects; returns the (possibly copied) model.

    Covered: Linear, Conv / ConvTranspose 1-3 d, Embedding(Bag), LSTM / GRU / RNN kernels,
    MultiheadAttention (``in_proj_weight`` or ``q/k/v_proj_weight``, and ``out_proj``), hence
    ``nn.TransformerEncoderLayer`` / ``DecoderLayer``. A Parameter shared by several modules (tied
    weights) gets one quantizer, registered under every owner; if its owners disagree (different
    rules, or an owner no quantizer can attach to) ``prepare`` raises ValueError.

    Rules that matched no tensor and weights left in float are logged (warning) and kept in
    :func:`prepare_info`; weights of 2-D or more that the config selects but that cannot be
    quantized are listed in ``prepare_info(model).unsupported`` with a ``UserWarning`` (a
    ValueError with ``strict=True``); an explicit ``None`` rule for them silences it. Raises
    ValueError on an invalid config or a model prepared twice.
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
    # every (module, name) that holds each Parameter: more than one = tied weights
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in model.named_modules():
        for pname, p in module._parameters.items():
            if isinstance(p, nn.Parameter):
                owners.setdefault(id(p), []).append((mname, module, pname))

    def fqn_of(mname: str, pname: str) -> str:
        return f"{mname}.{pname}" if mname else pname

    decided: dict[tuple[int, str], tuple[str | None, LayerSpec | None]] = {}
    for mname, module in model.named_modules():
        for pname in quantizable_params(module):
            decided[(id(module), pname)] = config.match(mname, module, pname)
    plan: list[tuple[str, nn.Module, str, LayerSpec, list[tuple[str, nn.Module, str]]]] = []
    for pid, where in owners.items():
        p = where[0][1]._parameters[where[0][2]]
        names = [fqn_of(m, n) for m, _, n in where]
        choices = [decided.get((id(mod), n)) for _, mod, n in where]
        if all(c is None for c in choices):  # no quantizer can attach to this Parameter
            if p.dim() < 2:
                continue
            for (mname, module, pname), fqn in zip(where, names):
                key, spec = config.match(mname, module, pname)
                if key is not None:
                    used.add(key)
                if fqn not in info.float_tensors:
                    info.float_tensors.append(fqn)
                if spec is not None and fqn not in info.unsupported:
                    info.unsupported.append(fqn)
            continue
        for c in choices:
            if c is not None and c[0] is not None:
                used.add(c[0])
        specs = [None if c is None else c[1] for c in choices]
        if len(where) > 1:
            quantizable = [c is not None for c in choices]
            wanted = [s_ is not None for s_ in specs]
            if any(wanted) and not all(quantizable):
                bad = [n for n, q in zip(names, quantizable) if not q]
                raise ValueError(
                    f"{names[0]} is tied to {', '.join(names[1:])}, but {', '.join(bad)} cannot be quantized "
                    f"(no quantizer attaches to {type(where[quantizable.index(False)][1]).__name__}); quantizing "
                    f"only some owners would untie them: leave all of them in float with a None rule"
                )
            if not all(_same_spec(specs[0], s_) for s_ in specs[1:]):
                rules = ", ".join(f"{n} -> {c[0] or 'default'}" for n, c in zip(names, choices))
                raise ValueError(
                    f"{names[0]} is tied to {', '.join(names[1:])}, but their rules disagree ({rules}); "
                    f"a shared Parameter gets one quantizer: give every owner the same rule"
                )
        if specs[0] is None:
            info.float_tensors.extend(n for n in names if n not in info.float_tensors)
            continue
        plan.append((names[0], where[0][1], where[0][2], specs[0], where))
        for n, c in zip(names, choices):
            info.matched[n] = (c[0] if c is not None else None) or "default"
        if len(where) > 1:
            info.tied[names[0]] = names[1:]
    built = []
    for fqn, module, pname, spec, where in plan:  # build every quantizer before touching the model
        cls = get_method(spec.method)
        weight = module._parameters[pname]
        try:
            quantizer = cls(weight.detach(), spec.bits, spec.granularity, **spec.options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{fqn}: cannot build {spec.method!r} quantizer: {err}") from None
        quantizer.to(device=weight.device)
        built.append((quantizer, where))
    for quantizer, where in built:
        shared: QuantizedWeight | None = None
        for mname, module, pname in where:
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
                module.sparse = False  # a quantized weight is computed, not a leaf: dense gradient
                info.densified.append(mname)
                log.warning("%s: Embedding(sparse=True) is quantized with dense gradients", mname or "model")
            shared = attach(module, pname, quantizer, parents.get(id(module)), shared=shared)
    info.unmatched_rules = [k for k in config.rules if k not in used]
    for key in info.unmatched_rules:
        log.warning("quantization rule %r matched no tensor", key)
    if info.float_tensors:
        log.warning("weights left in float: %s", ", ".join(info.float_tensors))
    for first, others in info.tied.items():
        log.info("tied weights share one quantizer: %s", ", ".join([first, *others]))
    if info.unsupported:
        msg = (f"subbit.quant cannot quantize {', '.join(info.unsupported)} (no quantizer attaches to "
               f"these modules' weights); they stay float. Give them a None rule to say that is intended.")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    setattr(model, _CONFIG_ATTR, config)
    setattr(model, _INFO_ATTR, info)
    return model


def quantized_tensors(model: nn.Module) -> Iterator[QuantizedTensor]:
    """Every quantized kernel of ``model`` in module order; a tied (shared) Parameter once, under
    its first owner's name, with the other names in ``aliases``."""
    seen: dict[int, list[str]] = {}
    first: list[tuple[str, nn.Module, str, QuantizedWeight]] = []
    for mname, module in model.named_modules():
        for pname, qw in attached(module).items():
            fqn = f"{mname}.{pname}" if mname else pname
            if id(qw) in seen:
                seen[id(qw)].append(fqn)
                continue
            seen[id(qw)] = []
            first.append((fqn, module, pname, qw))
    for fqn, module, pname, qw in first:
        yield QuantizedTensor(fqn, module, pname, qw.quantizer, qw.latent, tuple(seen[id(qw)]))


def _modules_with_quant(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if attached(module):
            yield module


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Use quantized (True) or latent (False) weights in the next forwards ("forward" T_q mode)."""
    for module in _modules_with_quant(model):
        for qw in attached(module).values():
            qw.enabled = enabled


@contextlib.contextmanager
def quantizer_enabled(model: nn.Module) -> Iterator[None]:
    """Within the block every quantizer is on (evaluation during a ``quant_mode="forward"`` run);
    each one's previous setting comes back afterwards."""
    before = [(qw, qw.enabled) for m in _modules_with_quant(model) for qw in attached(m).values()]
    set_enabled(model, True)
    try:
        yield
    finally:
        for qw, enabled in before:
            qw.enabled = enabled


def convert(model: nn.Module) -> nn.Module:
    """Hard-quantize in place: from now on every quantized weight is a codebook entry of its group
    and the forward equals the hard forward of training. Returns ``model``."""
    get_config(model)
    for qt in quantized_tensors(model):
        qt.quantizer.mark_converted()
    with torch.no_grad():
        for module in _modules_with_quant(model):
            refresh(module)
            for name in attached(module):
                setattr(module, name, getattr(module, name).detach())
    return model


def strip(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An ordinary module with the quantized values: no latent, no quantizer, no hooks.

    Converts (hard weights) first, then puts each quantized weight back as a plain ``nn.Parameter``
    under its original name, holding exactly the value the converted model computes with (tied
    weights: one Parameter shared by its owners again; sparse Embeddings sparse again). Its
    ``state_dict()`` has the keys of the model before ``prepare``, so it loads with
    ``strict=True`` into a fresh float instance of the same class, and its outputs equal the
    converted model's. Works on a copy unless ``inplace``.
    """
    info = prepare_info(model)
    if not inplace:
        model = copy.deepcopy(model)
    convert(model)
    plain: dict[int, nn.Parameter] = {}
    densified = set(info.densified)
    for mname, module in list(model.named_modules()):
        kernels = detach_holder(module)
        for name, qw in kernels.items():
            p = plain.get(id(qw))
            if p is None:
                value = getattr(module, name).detach().clone()
                p = plain[id(qw)] = nn.Parameter(value, requires_grad=qw.latent.requires_grad)
            setattr(module, name, p)
        if kernels:
            restore_param_order(module)
        if mname in densified and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.sparse = True
    for module in model.modules():
        remove_hooks(module)
    for attr in (_CONFIG_ATTR, _INFO_ATTR):
        if attr in model.__dict__:
            delattr(model, attr)
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
