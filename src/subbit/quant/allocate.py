r"""Automatic bit allocation: one bit depth per kernel, the least predicted loss within a budget.

Three parts, none of which knows about speech (the caller supplies the loss):

* :func:`measure_sensitivity`: for every kernel and candidate bit depth, the loss increase when
  that kernel *alone* is quantized with a quick codebook fit and the rest of the model stays
  float. Methods: ``"mulaw"`` (GQ's initial mu-law grid, :class:`~subbit.quant.gq.GeneralQuantizer`
  hard assignment, no training), ``"kmeans"`` (1-D Lloyd k-means per group, quantile start) and
  ``"fisher"`` (no loss per choice: ``0.5 * sum_i F_i (q(w)_i - w_i)**2`` with a diagonal
  empirical Fisher ``F`` from squared gradients over the loss batches and ``q`` the mu-law grid).
* :func:`solve_choice`: the multiple-choice knapsack, solved exactly by a dynamic programme over
  the Pareto frontier of (integer cost, summed loss) of the kernels seen so far. A partial choice
  that costs at least as much as another and predicts no less loss can never be part of a better
  completion, so dropping it loses nothing; neither does dropping one that cannot be completed
  within the budget even with every remaining kernel at its cheapest. No rounding of costs is
  involved, so the optimum is exact for the additive loss model (``tests/quant/test_allocate.py``
  checks it against brute force).
* :func:`allocate`: kernels of a model, byte costs from :mod:`subbit.sizes` (row-padded packed
  indices + float32 codebook table, per tensor or per channel), user constraints, a byte budget
  for the whole model (``budget_bytes``) or a weights-weighted average bit depth (``avg_bits``),
  and the result as a rules dict that :class:`~subbit.quant.rules.QuantConfig` loads.

The predicted loss of a choice is the sum of the per-kernel increases: interactions between
kernels are ignored (the usual assumption of sensitivity-based mixed precision). What the DP
makes exact is the optimum of that model, not the true loss.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from subbit import sizes
from subbit.quant.modules import quantizable_params

BITS = tuple(range(1, 9))
METHODS = ("mulaw", "kmeans", "fisher")
#: codebook kinds the cost model can price (a GQ codebook is a table; affine is for uniform grids)
CODEBOOKS = sizes.CODEBOOK_KINDS


# -- kernels -------------------------------------------------------------------------------------
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


# -- constraints ---------------------------------------------------------------------------------
def _matches(key: str, kernel: Kernel) -> bool:
    """Does rule key ``key`` select ``kernel``? The key forms of :class:`~subbit.quant.rules.QuantConfig`:
    exact parameter FQN, exact module FQN, ``re:`` fullmatch on either, or a module type name."""
    if key.startswith("re:"):
        rx = re.compile(key[3:])
        return any(rx.fullmatch(n) for n in kernel.names()) or bool(rx.fullmatch(kernel.module_name))
    mods = {n.rpartition(".")[0] for n in kernel.names()}
    return key in kernel.names() or (key in mods and key != "") or key in kernel.type_names


def _parse_bits(value: Any, where: str) -> int:
    try:
        b = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bits must be an integer in 1..8, got {value!r}") from None
    if isinstance(value, float) and value != b or not 1 <= b <= 8:
        raise ValueError(f"{where}: bits must be an integer in 1..8, got {value!r}")
    return b


@dataclass
class Constraints:
    """User constraints, keyed like rules (exact FQN, module FQN, ``re:regex``, module type).

    Every constraint that matches a kernel holds (they intersect): ``fix`` pins the bit depth,
    ``min_bits`` / ``max_bits`` bound it. A key that matches no kernel is an error.
    """

    fix: dict[str, int] = field(default_factory=dict)
    min_bits: dict[str, int] = field(default_factory=dict)
    max_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("fix", "min_bits", "max_bits"):
            table = getattr(self, kind)
            if not isinstance(table, Mapping):
                raise ValueError(f"{kind}: expected a mapping NAME -> bits, got {type(table).__name__}")
            clean = {}
            for key, bits in table.items():
                if not isinstance(key, str) or not key:
                    raise ValueError(f"{kind}: a constraint name must be a non-empty string, got {key!r}")
                if key.startswith("re:"):
                    try:
                        re.compile(key[3:])
                    except re.error as err:
                        raise ValueError(f"{kind} {key!r}: invalid regular expression: {err}") from None
                clean[key] = _parse_bits(bits, f"{kind} {key!r}")
            setattr(self, kind, clean)

    @classmethod
    def from_strings(cls, fix: Iterable[str] = (), min_bits: Iterable[str] = (),
                     max_bits: Iterable[str] = ()) -> Constraints:
        """From ``NAME=BITS`` strings (the CLI's ``--fix``, ``--min-bits``, ``--max-bits``); the
        last ``=`` splits, so a regex may contain ``=``."""
        def parse(items: Iterable[str], flag: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for item in items:
                name, sep, bits = str(item).rpartition("=")
                if not sep or not name:
                    raise ValueError(f"{flag}: expected NAME=BITS, got {item!r}")
                out[name] = _parse_bits(bits, f"{flag} {name}")
            return out

        return cls(parse(fix, "--fix"), parse(min_bits, "--min-bits"), parse(max_bits, "--max-bits"))

    def is_empty(self) -> bool:
        return not (self.fix or self.min_bits or self.max_bits)

    def allowed(self, kernels: Sequence[Kernel], bits: Sequence[int] = BITS) -> dict[str, tuple[int, ...]]:
        """Bit depths each kernel may take. ValueError for a name matching no kernel, or a kernel
        whose constraints cannot all hold (naming them)."""
        table = [("fix", k, b) for k, b in self.fix.items()] + [("min_bits", k, b) for k, b in self.min_bits.items()] \
            + [("max_bits", k, b) for k, b in self.max_bits.items()]  # fmt: skip
        for kind, key, _ in table:
            if not any(_matches(key, kn) for kn in kernels):
                some = ", ".join(k.name for k in kernels[:6]) + (", ..." if len(kernels) > 6 else "")
                raise ValueError(f"{kind.replace('_', '-')} {key!r} matches no kernel of the model (kernels: {some})")
        out: dict[str, tuple[int, ...]] = {}
        for kn in kernels:
            ok = set(int(b) for b in bits)
            why = []
            for kind, key, b in table:
                if not _matches(key, kn):
                    continue
                why.append(f"{kind.replace('_', '-')} {key}={b}")
                if kind == "fix":
                    ok &= {b}
                elif kind == "min_bits":
                    ok = {x for x in ok if x >= b}
                else:
                    ok = {x for x in ok if x <= b}
            if not ok:
                raise ValueError(f"constraints on {kn.name} cannot all hold: {', '.join(why)} "
                                 f"(candidate bit depths {sorted(set(bits))})")  # fmt: skip
            out[kn.name] = tuple(sorted(ok))
        return out


# -- the exact solver ----------------------------------------------------------------------------
class Infeasible(ValueError):
    """No choice fits: ``smallest`` is the least cost any choice reaches."""

    def __init__(self, message: str, smallest: int) -> None:
        super().__init__(message)
        self.smallest = smallest


def solve_choice(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]],
                 capacity: int) -> tuple[list[int], float, int]:
    """Pick one option per group, total cost ``<= capacity``, least total value (exact).

    ``costs[k][j]`` (integers >= 0) and ``values[k][j]`` (finite floats) describe option ``j`` of
    group ``k``. Returns ``(option index per group, total value, total cost)``; of equal-value
    optima the cheapest. Raises :class:`Infeasible` when even the cheapest choice exceeds
    ``capacity``. Work and memory grow with the Pareto frontier (at most ``capacity + 1`` states).
    """
    if len(costs) != len(values):
        raise ValueError(f"costs and values must have one entry per group, got {len(costs)} and {len(values)}")
    cs = [np.asarray(c, dtype=np.int64).reshape(-1) for c in costs]
    vs = [np.asarray(v, dtype=np.float64).reshape(-1) for v in values]
    for k, (c, v) in enumerate(zip(cs, vs)):
        if c.size == 0 or c.size != v.size:
            raise ValueError(f"group {k}: needs as many costs as values, at least one, got {c.size} and {v.size}")
        if np.any(c < 0):
            raise ValueError(f"group {k}: costs must be >= 0")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"group {k}: values must be finite")
    suffix = np.zeros(len(cs) + 1, dtype=np.int64)
    for k in range(len(cs) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + int(cs[k].min())
    if int(suffix[0]) > capacity:
        raise Infeasible(f"the cheapest choice costs {int(suffix[0])}, above the capacity {capacity}", int(suffix[0]))
    f_cost = np.zeros(1, dtype=np.int64)
    f_val = np.zeros(1, dtype=np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for k, (c, v) in enumerate(zip(cs, vs)):
        cc = (f_cost[:, None] + c[None, :]).reshape(-1)
        vv = (f_val[:, None] + v[None, :]).reshape(-1)
        par = np.repeat(np.arange(f_cost.size), c.size)
        opt = np.tile(np.arange(c.size), f_cost.size)
        ok = cc + suffix[k + 1] <= capacity  # can still be completed within the capacity
        cc, vv, par, opt = cc[ok], vv[ok], par[ok], opt[ok]
        order = np.lexsort((vv, cc))  # by cost, then value
        cc, vv, par, opt = cc[order], vv[order], par[order], opt[order]
        keep = np.ones(cc.size, dtype=bool)
        keep[1:] = vv[1:] < np.minimum.accumulate(vv)[:-1]  # strictly better than every cheaper state
        f_cost, f_val = cc[keep], vv[keep]
        back.append((par[keep], opt[keep]))
    i = int(f_val.size - 1)  # values strictly decrease along the frontier: the last is the least
    total_val, total_cost = float(f_val[i]), int(f_cost[i])
    picks = [0] * len(cs)
    for k in range(len(cs) - 1, -1, -1):
        par, opt = back[k]
        picks[k] = int(opt[i])
        i = int(par[i])
    return picks, total_val, total_cost


# -- sensitivity ---------------------------------------------------------------------------------
@dataclass
class Sensitivity:
    """Loss increase per kernel and bit depth (``delta[name][bits]``) and how it was measured."""

    method: str
    delta: dict[str, dict[int, float]]
    base_loss: float | None = None
    granularity: str = "tensor"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "base_loss": self.base_loss, "granularity": self.granularity,
                "meta": dict(self.meta),
                "delta": {n: {str(b): float(x) for b, x in sorted(d.items())} for n, d in self.delta.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        if not isinstance(data, Mapping) or not isinstance(data.get("delta"), Mapping):
            raise ValueError("sensitivity: expected a mapping with a 'delta' table")
        delta: dict[str, dict[int, float]] = {}
        for name, row in data["delta"].items():
            if not isinstance(row, Mapping):
                raise ValueError(f"sensitivity {name!r}: expected a mapping bits -> loss increase")
            delta[str(name)] = {_parse_bits(b, f"sensitivity {name!r}"): float(x) for b, x in row.items()}
        base = data.get("base_loss")
        return cls(str(data.get("method", "?")), delta, None if base is None else float(base),
                   str(data.get("granularity", "tensor")), dict(data.get("meta") or {}))


def kmeans_codebook(w: Tensor, k: int, iters: int = 30) -> Tensor:
    """1-D k-means (Lloyd) per row of ``w`` ``[G, N]``: ``[G, k]`` sorted centroids. Starts at
    the quantiles ``(j + 0.5) / k``, so it is deterministic."""
    x = w.detach().to(torch.float64)
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    xs = torch.sort(x, dim=1).values
    pos = (q * (x.shape[1] - 1)).round().long()
    c = xs[:, pos].clone()
    for _ in range(iters):
        idx = _nearest_sorted(x, c)
        sums = torch.zeros_like(c).scatter_add_(1, idx, x)
        counts = torch.zeros_like(c).scatter_add_(1, idx, torch.ones_like(x))
        new = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), c), dim=1).values
        if torch.equal(new, c):
            break
        c = new
    return c.to(torch.float32)


def _nearest_sorted(x: Tensor, c: Tensor) -> Tensor:
    """Index of the nearest of the sorted centroids ``c`` ``[G, K]`` for each value of ``x`` ``[G, N]``."""
    if c.shape[1] == 1:
        return torch.zeros_like(x, dtype=torch.long)
    mid = ((c[:, 1:] + c[:, :-1]) / 2).contiguous()
    return torch.searchsorted(mid, x.contiguous().to(mid.dtype))


def quick_quantize(w: Tensor, bits: int, granularity: str = "tensor", method: str = "mulaw",
                   options: Mapping[str, Any] | None = None) -> Tensor:
    """``w`` with every value replaced by its nearest codebook entry, the codebook fitted without
    training: GQ's initial mu-law grid (``"mulaw"``, GQ ``options`` such as ``mu`` apply) or 1-D
    k-means (``"kmeans"``), one codebook per tensor or per output channel."""
    g = sizes.rows_of(w.shape) if granularity == "channel" else 1
    if method == "kmeans":
        x = w.detach().float().reshape(g, -1)
        c = kmeans_codebook(x, 1 << bits)
        idx = _nearest_sorted(x.double(), c.double())
        return c.gather(1, idx).reshape(w.shape).to(w.dtype)
    if method in ("mulaw", "fisher"):
        from subbit.quant.gq import GeneralQuantizer

        q = GeneralQuantizer(w.detach(), int(bits), granularity, **dict(options or {}))
        return q.hard(w.detach())
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def _param_of(model: nn.Module, kernel: Kernel) -> nn.Parameter:
    module = model.get_submodule(kernel.module_name) if kernel.module_name else model
    return module._parameters[kernel.param_name]


def _as_float(x: Any) -> float:
    """A loss as a float; an iterable of per-batch losses counts as their mean."""
    if not isinstance(x, (Tensor, int, float)) and isinstance(x, Iterable):
        vals = [_as_float(v) for v in x]
        if not vals:
            raise ValueError("loss_fn returned no loss")
        return sum(vals) / len(vals)
    v = float(x.detach()) if isinstance(x, Tensor) else float(x)
    if not math.isfinite(v):
        raise ValueError(f"loss_fn returned a non-finite loss ({v})")
    return v


def _select(model: nn.Module, kernels: Iterable[str | Kernel] | None) -> list[Kernel]:
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


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Any],
    kernels: Iterable[str | Kernel] | None = None,
    bits: Iterable[int] = BITS,
    method: str = "mulaw",
    granularity: str = "tensor",
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> Sensitivity:
    """Loss increase of quantizing one kernel at a time, for every kernel and bit depth.

    ``loss_fn(model)`` returns the loss to protect (a float or scalar tensor) on a fixed data
    subset; it is called once for the float model and, for ``"mulaw"`` / ``"kmeans"``, once per
    (kernel, bits) with that kernel replaced by :func:`quick_quantize` and restored afterwards.
    ``"fisher"`` calls ``loss_fn`` once with gradients on: it may return one loss tensor or an
    iterable of per-batch loss tensors (each backpropagated; ``F`` is the mean squared gradient).
    ``on_step(kernel name, bits)`` is called after each measurement (a progress bar).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    bit_list = sorted({_parse_bits(b, "bits") for b in bits})
    if not bit_list:
        raise ValueError("bits: no candidate bit depth")
    chosen = _select(model, kernels)
    if not chosen:
        raise ValueError("the model has no quantizable kernel")
    base = _as_float(loss_fn(model))
    delta: dict[str, dict[int, float]] = {}
    fisher = _fisher_diag(model, loss_fn, chosen) if method == "fisher" else None
    for kn in chosen:
        p = _param_of(model, kn)
        saved = p.detach().clone()
        row: dict[int, float] = {}
        try:
            for b in bit_list:
                wq = quick_quantize(saved, b, granularity, method, options)
                if fisher is not None:
                    row[b] = 0.5 * float((fisher[kn.name] * (wq.double() - saved.double()) ** 2).sum())
                else:
                    p.copy_(wq)
                    row[b] = _as_float(loss_fn(model)) - base
                if on_step is not None:
                    on_step(kn.name, b)
        finally:
            p.copy_(saved)
        delta[kn.name] = row
    meta = {"bits": bit_list, "options": dict(options or {})}
    return Sensitivity(method, delta, base, granularity, meta)


def _fisher_diag(model: nn.Module, loss_fn: Callable[[nn.Module], Any], kernels: Sequence[Kernel]) -> dict[str, Tensor]:
    params = {k.name: _param_of(model, k) for k in kernels}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    batches = 0
    try:
        with torch.enable_grad():
            for p in params.values():
                p.requires_grad_(True)
            out = loss_fn(model)
            for loss in [out] if isinstance(out, Tensor) else out:  # one graph alive at a time
                if not isinstance(loss, Tensor) or not loss.requires_grad:
                    raise ValueError("method 'fisher': loss_fn must return loss tensors with gradients")
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=False)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        acc[n] += g.detach().double() ** 2
                batches += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if batches == 0:
        raise ValueError("method 'fisher': loss_fn returned no loss")
    return {n: a / batches for n, a in acc.items()}


# -- allocation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelChoice:
    name: str
    bits: int
    bytes: int
    numel: int
    predicted: float  # loss increase the sensitivity table predicts for this kernel at ``bits``
    allowed: tuple[int, ...]
    aliases: tuple[str, ...] = ()


@dataclass
class Allocation:
    """The chosen bit depth per kernel, what it is predicted to cost, and what it weighs."""

    choices: list[KernelChoice]
    predicted_loss_increase: float
    kernel_bytes: int
    other_bytes: int
    overhead_bytes: int
    budget_bytes: int | None
    avg_bits_budget: float | None
    method: str
    spec: dict[str, Any]
    codebook: str = "table"

    @property
    def total_bytes(self) -> int:
        """Kernels + float tensors + file overhead: what counts against ``budget_bytes``."""
        return self.kernel_bytes + self.other_bytes + self.overhead_bytes

    @property
    def avg_bits(self) -> float:
        """Weights-weighted mean bit depth (codebooks not counted)."""
        n = sum(c.numel for c in self.choices)
        return sum(c.numel * c.bits for c in self.choices) / n if n else 0.0

    @property
    def bits(self) -> dict[str, int]:
        return {c.name: c.bits for c in self.choices}

    def rules(self) -> dict[str, Any]:
        """A :class:`~subbit.quant.rules.QuantConfig` dict: ``spec`` as the default (its bits the
        most common choice) and one explicit rule per kernel name (tied owners included)."""
        counts: dict[int, int] = {}
        for c in self.choices:
            counts[c.bits] = counts.get(c.bits, 0) + c.numel
        default = {**self.spec, "bits": max(counts, key=lambda b: (counts[b], b)) if counts else self.spec["bits"]}
        rules = {n: {"bits": c.bits} for c in self.choices for n in (c.name, *c.aliases)}
        return {"version": 1, "default": default, "rules": rules}

    def table(self) -> str:
        """Per-kernel table plus the totals, for the terminal."""
        head = ["kernel", "numel", "bits", "allowed", "bytes", "pred. loss +"]
        body = [[c.name, str(c.numel), str(c.bits), _span(c.allowed), str(c.bytes), f"{c.predicted:.4g}"]
                for c in self.choices]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        lines.append(f"kernels {self.kernel_bytes} B + float tensors {self.other_bytes} B + file overhead "
                     f"{self.overhead_bytes} B = {self.total_bytes} B")  # fmt: skip
        if self.budget_bytes is not None:
            lines.append(f"budget {self.budget_bytes} B: {self.total_bytes} B used "
                         f"({100 * self.total_bytes / self.budget_bytes:.1f}%)")  # fmt: skip
        lines.append(f"average bits {self.avg_bits:.3f} (weights-weighted, codebooks not counted)"
                     + ("" if self.avg_bits_budget is None else f"; budget {self.avg_bits_budget:g}"))
        lines.append(f"predicted loss increase {self.predicted_loss_increase:.4g} (sum over kernels, "
                     f"sensitivity: {self.method}; codebooks priced as {self.codebook})")  # fmt: skip
        return "\n".join(lines)


def _span(bits: tuple[int, ...]) -> str:
    if len(bits) > 1 and bits == tuple(range(bits[0], bits[-1] + 1)):
        return f"{bits[0]}-{bits[-1]}"
    return ",".join(str(b) for b in bits)


def _spec_dict(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    from subbit.quant.rules import LayerSpec

    return LayerSpec.from_dict(dict(spec or {})).to_dict()


def allocate(
    model: nn.Module,
    sensitivity: Sensitivity | Mapping[str, Any],
    budget_bytes: int | None = None,
    avg_bits: float | None = None,
    constraints: Constraints | Mapping[str, Mapping[str, int]] | None = None,
    *,
    spec: Mapping[str, Any] | None = None,
    overhead_bytes: int = 0,
    codebook: str = "table",
    bits: Iterable[int] = BITS,
    monotone: bool = True,
) -> Allocation:
    """The bit depth per kernel of ``model`` with the least predicted loss increase within a budget.

    Exactly one budget: ``budget_bytes``, the whole model (kernels priced by :mod:`subbit.sizes`
    at ``spec``'s granularity with ``codebook`` codebooks, + every other state-dict tensor in
    float32 + ``overhead_bytes`` for the file header and the like), or ``avg_bits``, the
    weights-weighted mean bit depth of the kernels (codebooks not counted). ``spec`` is the
    :class:`~subbit.quant.rules.LayerSpec` dict every kernel gets, but for its bits (default: GQ
    per tensor). ``constraints``: a :class:`Constraints` or a dict with ``fix`` / ``min_bits`` /
    ``max_bits``. ``monotone``: a kernel is never predicted to lose more at more bits (each
    increase is replaced by the least one measured at its depth or below among the allowed
    ones: quick fits are noisy, and GQ's 2-bit start grid is coarser than its 1-bit one, but
    fine-tuning does not make a kernel worse for having more levels). ValueError: a budget below the smallest reachable size (named), constraints
    that cannot hold, kernels missing from ``sensitivity`` or unknown to the model.
    """
    if (budget_bytes is None) == (avg_bits is None):
        raise ValueError("give exactly one budget: budget_bytes or avg_bits")
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {list(CODEBOOKS)}, got {codebook!r}")
    if isinstance(overhead_bytes, bool) or not isinstance(overhead_bytes, int) or overhead_bytes < 0:
        raise ValueError(f"overhead_bytes must be an integer >= 0, got {overhead_bytes!r}")
    sens = sensitivity if isinstance(sensitivity, Sensitivity) else Sensitivity.from_dict(sensitivity)
    layer = _spec_dict(spec)
    gran = layer["granularity"]
    if sens.granularity != gran:
        raise ValueError(f"the sensitivity was measured per {sens.granularity}, the allocation is per {gran}")
    if constraints is None:
        cons = Constraints()
    elif isinstance(constraints, Constraints):
        cons = constraints
    else:
        cons = Constraints(**{k: dict(v) for k, v in constraints.items()})
    kernels = kernels_of(model)
    if not kernels:
        raise ValueError("the model has no quantizable kernel")
    names = {n for k in kernels for n in k.names()}
    unknown = sorted(set(sens.delta) - names)
    if unknown:
        raise ValueError(f"sensitivity names kernel(s) the model does not have: {unknown[:5]}")
    allowed = cons.allowed(kernels, sorted({_parse_bits(b, "bits") for b in bits}))
    rows: list[tuple[Kernel, tuple[int, ...], list[float]]] = []
    for kn in kernels:
        d = sens.delta.get(kn.name)
        if d is None:
            raise ValueError(f"sensitivity has no entry for kernel {kn.name}")
        missing = [b for b in allowed[kn.name] if b not in d]
        if missing:
            raise ValueError(f"sensitivity of {kn.name} lacks bit depth(s) {missing}")
        vals = [float(d[b]) for b in allowed[kn.name]]
        if monotone:
            vals = list(np.minimum.accumulate(np.asarray(vals, dtype=np.float64)))
        rows.append((kn, allowed[kn.name], [float(v) for v in vals]))
    fixed = other_bytes(model, kernels) + overhead_bytes if budget_bytes is not None else 0
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be a positive integer, got {budget_bytes!r}")
        costs = [[kn.bytes_at(b, gran, codebook) for b in al] for kn, al, _ in rows]
        capacity = int(budget_bytes) - fixed
    else:
        a = float(avg_bits)  # type: ignore[arg-type]
        if not math.isfinite(a) or a <= 0:
            raise ValueError(f"avg_bits must be a positive number, got {avg_bits!r}")
        costs = [[kn.numel * b for b in al] for kn, al, _ in rows]
        total_numel = sum(kn.numel for kn, _, _ in rows)
        capacity = math.floor(a * total_numel + 1e-9 * total_numel)
    try:
        picks, pred, _ = solve_choice(costs, [v for _, _, v in rows], capacity)
    except Infeasible as err:
        smallest = err.smallest
        lowest = "the lowest bit depth each kernel may take" + ("" if cons.is_empty() else " under the constraints")
        if budget_bytes is not None:
            raise ValueError(f"budget {int(budget_bytes)} B is below the smallest reachable model, "
                             f"{smallest + fixed} B ({lowest}: kernels {smallest} B + float tensors and "
                             f"overhead {fixed} B)") from None  # fmt: skip
        total_numel = sum(kn.numel for kn, _, _ in rows)
        raise ValueError(f"avg_bits {avg_bits:g} is below the smallest reachable average, "
                         f"{smallest / total_numel:.4g} bits ({lowest})") from None  # fmt: skip
    choices = []
    for (kn, al, vals), j in zip(rows, picks):
        b = al[j]
        choices.append(KernelChoice(kn.name, b, kn.bytes_at(b, gran, codebook), kn.numel, vals[j], al, kn.aliases))
    return Allocation(
        choices=choices, predicted_loss_increase=float(sum(c.predicted for c in choices)),
        kernel_bytes=sum(c.bytes for c in choices), other_bytes=other_bytes(model, kernels),
        overhead_bytes=overhead_bytes, budget_bytes=None if budget_bytes is None else int(budget_bytes),
        avg_bits_budget=None if avg_bits is None else float(avg_bits), method=sens.method, spec=layer,
        codebook=codebook,
    )  # fmt: skip


def parse_size(text: str) -> int:
    """``"700KB"`` -> 700000, ``"1.5MiB"`` -> 1572864, ``"123456"`` -> 123456 bytes (KB/MB are
    powers of 1000, KiB/MiB of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"budget: expected a size such as 700KB, 1.5MiB or 123456, got {text!r}")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    value = float(m.group(1)) * scale
    if value < 1:
        raise ValueError(f"budget: must be at least 1 byte, got {text!r}")
    return int(math.floor(value))


__all__ = [
    "Allocation", "BITS", "Constraints", "Infeasible", "Kernel", "KernelChoice", "METHODS", "Sensitivity",
    "allocate", "kernels_of", "kmeans_codebook", "measure_sensitivity", "other_bytes", "parse_size",
    "quick_quantize", "solve_choice",
]  # fmt: skip
