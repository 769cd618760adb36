"""Automatic bit allocation: the exact solver against brute force, byte costs against the size
module and the written file, constraints, sensitivity measurement and the error messages."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import subbit.quant as q
from subbit import sizes
from subbit.quant.allocate import (
    Constraints, Infeasible, Sensitivity, kernels_of, kmeans_codebook, measure_sensitivity, other_bytes, parse_size,
    quick_quantize, solve_choice,
)  # fmt: skip

torch.set_num_threads(1)


def brute_force(costs, values, capacity):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(c[j] for c, j in zip(costs, pick))
        if cost > capacity:
            continue
        val = sum(v[j] for v, j in zip(values, pick))
        if best is None or val < best[0]:
            best = (val, cost)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_solver_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    costs = [list(rng.integers(0, 40, int(rng.integers(1, 5)))) for _ in range(n)]
    # integer-valued losses half of the time: many exact ties between different choices
    values = [list(rng.integers(-3, 10, len(c)).astype(float) if seed % 2 else rng.normal(size=len(c))) for c in costs]
    capacity = int(rng.integers(0, 40 * n))
    ref = brute_force(costs, values, capacity)
    if ref is None:
        with pytest.raises(Infeasible) as err:
            solve_choice(costs, values, capacity)
        assert err.value.smallest == sum(min(c) for c in costs) > capacity
        return
    picks, val, cost = solve_choice(costs, values, capacity)
    assert cost == sum(c[j] for c, j in zip(costs, picks)) <= capacity
    assert val == pytest.approx(sum(v[j] for v, j in zip(values, picks)), abs=1e-12)
    assert val == pytest.approx(ref[0], abs=1e-9)  # float sums in another order: rounding only


def test_solver_takes_the_cheapest_of_equal_optima() -> None:
    picks, val, cost = solve_choice([[5, 1], [3, 2]], [[0.0, 0.0], [1.0, 1.0]], 100)
    assert (val, cost, picks) == (1.0, 3, [1, 1])


def test_solver_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="finite"):
        solve_choice([[1]], [[math.nan]], 5)
    with pytest.raises(ValueError, match="as many costs"):
        solve_choice([[1, 2]], [[0.0]], 5)
    with pytest.raises(ValueError, match=">= 0"):
        solve_choice([[-1]], [[0.0]], 5)


# -- a toy model -----------------------------------------------------------------------------------
class Toy(nn.Module):
    """Embedding tied to the output layer, an LSTM, a narrow Linear (per-channel codebooks dominate)."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.narrow = nn.Linear(16, 4)
        self.up = nn.Linear(4, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 20, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(tokens))
        return self.out(self.norm(h + self.up(torch.relu(self.narrow(h)))))


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = Toy().eval()
    tokens = torch.randint(0, 20, (8, 12))
    return m, tokens


def loss_of(tokens: torch.Tensor):
    def loss(model: nn.Module) -> torch.Tensor:
        logits = model(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, 20), tokens[:, 1:].reshape(-1))

    return loss


def random_sensitivity(model: nn.Module, seed: int, granularity: str = "tensor") -> Sensitivity:
    """Decreasing loss increases with noise (not monotone everywhere: the solver must not care)."""
    rng = np.random.default_rng(seed)
    delta = {}
    for k in kernels_of(model):
        scale = float(rng.uniform(0.1, 2.0))
        delta[k.name] = {b: scale * 2.0 ** (-b) + float(rng.normal(0, 0.01)) for b in range(1, 9)}
    return Sensitivity("test", delta, 1.0, granularity)


def test_kernels_of_lists_each_quantizable_weight_once(toy) -> None:
    model, _ = toy
    ks = {k.name: k for k in kernels_of(model)}
    assert set(ks) == {"emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "narrow.weight", "up.weight"}
    assert ks["emb.weight"].aliases == ("out.weight",)
    assert ks["lstm.weight_ih_l0"].type_names[0] == "LSTM"


def model_bytes(model: nn.Module, bits: dict[str, int], granularity: str) -> int:
    """Independent count: every kernel via sizes.quantized_bytes with table codebooks, every other
    parameter and buffer as float32 (tied weights once)."""
    total, seen = 0, set()
    for mname, module in model.named_modules():
        for pname, p in list(module._parameters.items()) + list(module._buffers.items()):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            fqn = f"{mname}.{pname}" if mname else pname
            if fqn in bits:
                g = p.shape[0] if granularity == "channel" else 1
                total += sizes.quantized_bytes(tuple(p.shape), bits[fqn], g, "table")
            else:
                total += 4 * p.numel()
    return total


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_budget_is_never_exceeded_and_more_budget_never_predicts_worse(toy, granularity: str) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 1, granularity)
    spec = {"granularity": granularity}
    kernels = kernels_of(model)
    lo = model_bytes(model, {k.name: 1 for k in kernels}, granularity)
    hi = model_bytes(model, {k.name: 8 for k in kernels}, granularity)
    prev = math.inf
    for budget in np.linspace(lo, hi + 100, 25).astype(int):
        a = q.allocate(model, sens, budget_bytes=int(budget), spec=spec, overhead_bytes=50 if budget > lo + 50 else 0)
        counted = model_bytes(model, a.bits, granularity) + a.overhead_bytes
        assert a.total_bytes == counted <= budget
        assert a.predicted_loss_increase <= prev + 1e-12
        prev = a.predicted_loss_increase


def test_large_budget_takes_each_kernels_best_depth(toy) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 2)
    a = q.allocate(model, sens, budget_bytes=10**9)
    assert a.bits == {n: min(d, key=d.get) for n, d in sens.delta.items()}


def test_per_channel_pricing_is_the_size_module(toy) -> None:
    model, _ = toy
    k = {k.name: k for k in kernels_of(model)}["up.weight"]  # [16, 4]: 16 rows of 4 weights
    for b in range(1, 9):
        assert k.bytes_at(b, "channel") == 16 * 1 * b + 4 * 16 * 2**b  # rows * ceil(4/8) * b + 16 tables
        assert k.bytes_at(b, "tensor") == 16 * 1 * b + 4 * 2**b


def test_the_allocation_matches_brute_force_on_the_model(toy) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 3)
    kernels = kernels_of(model)
    cons = Constraints(fix={"up": 2}, min_bits={"re:lstm\\..*": 2}, max_bits={"Embedding": 6})
    allowed = cons.allowed(kernels)
    fixed = other_bytes(model, kernels)
    costs = [[k.bytes_at(b) for b in allowed[k.name]] for k in kernels]
    values = [[sens.delta[k.name][b] for b in allowed[k.name]] for k in kernels]
    for budget in (fixed + sum(min(c) for c in costs), fixed + 900, fixed + 1800, fixed + 4000):
        a = q.allocate(model, sens, budget_bytes=budget, constraints=cons, monotone=False)
        ref = brute_force(costs, values, budget - fixed)
        assert a.predicted_loss_increase == pytest.approx(ref[0], abs=1e-9)
        assert a.bits["up.weight"] == 2 and a.bits["emb.weight"] <= 6
        assert min(a.bits["lstm.weight_ih_l0"], a.bits["lstm.weight_hh_l0"]) >= 2


def test_monotone_envelope(toy) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 9)
    sens.delta["up.weight"] = {1: 0.5, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.1, 6: 0.1, 7: 0.1, 8: 0.1}
    cons = {"min_bits": {"up": 2}}
    for avg in (2.0, 3.0, 5.0):
        a = q.allocate(model, sens, avg_bits=avg, constraints=cons)
        for c in a.choices:  # the predicted increase is the least measured at or below the depth
            assert c.predicted == min(sens.delta[c.name][b] for b in c.allowed if b <= c.bits)
    raw = q.allocate(model, sens, avg_bits=8.0, monotone=False)
    env = q.allocate(model, sens, avg_bits=8.0, constraints=cons)
    assert raw.bits["up.weight"] in (5, 6, 7, 8) and env.bits["up.weight"] == 5  # equal values: the cheapest


def test_avg_bits_budget(toy) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 4)
    kernels = kernels_of(model)
    n = sum(k.numel for k in kernels)
    for avg in (1.0, 2.0, 2.5, 3.0, 4.2, 8.0):
        a = q.allocate(model, sens, avg_bits=avg)
        assert a.avg_bits <= avg + 1e-12
        assert sum(c.numel * c.bits for c in a.choices) <= avg * n + 1e-6
    # every weight equally sensitive per bit: the solver spends the whole budget
    flat = Sensitivity("flat", {k.name: {b: k.numel * (8 - b) for b in range(1, 9)} for k in kernels})
    a = q.allocate(model, flat, avg_bits=3.0)
    assert a.predicted_loss_increase == pytest.approx(5 * n)


def test_rules_load_and_prepare_with_the_chosen_bits(toy, tmp_path) -> None:
    model, tokens = toy
    a = q.allocate(model, random_sensitivity(model, 5, "channel"), avg_bits=3.0, spec={"granularity": "channel"})
    path = tmp_path / "rules.yaml"
    q.QuantConfig.from_dict(a.rules()).save(path)
    cfg = q.QuantConfig.load(path)
    prepared = q.prepare(Toy(), cfg)  # the tied pair gets one rule per owner: no disagreement
    got = {qt.name: (qt.quantizer.bits, qt.quantizer.granularity) for qt in q.quantized_tensors(prepared)}
    assert got == {n: (b, "channel") for n, b in a.bits.items()}
    assert not q.prepare_info(prepared).unmatched_rules


def test_kernel_bytes_equal_the_exported_sizes(toy, tmp_path) -> None:
    from subbit.export import export_model

    # untied: the exporter stores a tied alias's quantizer buffers as float tensors (reported)
    torch.manual_seed(0)
    model = Toy(tie=False)
    for gran in ("tensor", "channel"):
        a = q.allocate(model, random_sensitivity(model, 6, gran), avg_bits=2.5, spec={"granularity": gran})
        m = Toy(tie=False)
        m.load_state_dict(model.state_dict())
        q.prepare(m, q.QuantConfig.from_dict(a.rules()))
        q.convert(m)
        summary = export_model(m, tmp_path / f"{gran}.subbit", arch={})
        stored = {t.name: t.stored for t in summary.tensors if t.kind == "quantized"}
        assert stored == {c.name: c.bytes for c in a.choices}
        assert sum(t.stored for t in summary.tensors if t.kind == "float") == a.other_bytes
        assert summary.file_bytes - summary.header_bytes <= a.kernel_bytes + a.other_bytes


# -- constraints and errors -------------------------------------------------------------------------
def test_constraint_names_follow_the_rule_key_forms(toy) -> None:
    kernels = kernels_of(toy[0])
    allowed = Constraints(fix={"lstm.weight_hh_l0": 5}, min_bits={"lstm": 3, "out.weight": 4},
                          max_bits={"re:.*narrow.*": 2, "Linear": 7}).allowed(kernels)  # fmt: skip
    assert allowed["lstm.weight_hh_l0"] == (5,)
    assert allowed["lstm.weight_ih_l0"] == tuple(range(3, 9))
    assert allowed["emb.weight"] == tuple(range(4, 8))  # alias name + the alias owner's type (Linear)
    assert allowed["narrow.weight"] == (1, 2)
    assert allowed["up.weight"] == tuple(range(1, 8))


def test_constraints_from_cli_strings() -> None:
    c = Constraints.from_strings(fix=["joiner.out.weight=8"], min_bits=["re:.*(embed|x=1).*=4"])
    assert c.fix == {"joiner.out.weight": 8} and c.min_bits == {"re:.*(embed|x=1).*": 4}
    for bad in (["noequals"], ["a=9"], ["a=x"], ["=3"]):
        with pytest.raises(ValueError, match="--fix"):
            Constraints.from_strings(fix=bad)
    with pytest.raises(ValueError, match="regular expression"):
        Constraints(min_bits={"re:(": 3})


def test_errors_name_the_problem(toy) -> None:
    model, _ = toy
    sens = random_sensitivity(model, 7)
    kernels = kernels_of(model)
    smallest = sum(k.bytes_at(1) for k in kernels) + other_bytes(model, kernels) + 10
    with pytest.raises(ValueError, match=f"below the smallest reachable model, {smallest} B"):
        q.allocate(model, sens, budget_bytes=smallest - 1, overhead_bytes=10)
    q.allocate(model, sens, budget_bytes=smallest, overhead_bytes=10)  # exactly the smallest fits
    with_fix = smallest - kernels[0].bytes_at(1) + kernels[0].bytes_at(8)
    with pytest.raises(ValueError, match=f"smallest reachable model, {with_fix} B .*under the constraints"):
        q.allocate(model, sens, budget_bytes=with_fix - 1, overhead_bytes=10, constraints={"fix": {kernels[0].name: 8}})
    with pytest.raises(ValueError, match="matches no kernel"):
        q.allocate(model, sens, avg_bits=3, constraints={"fix": {"encoder.nope": 4}})
    with pytest.raises(ValueError, match="cannot all hold: fix up=2, min-bits re:.*=3"):
        q.allocate(model, sens, avg_bits=3, constraints={"fix": {"up": 2}, "min_bits": {"re:.*": 3}})
    with pytest.raises(ValueError, match="smallest reachable average"):
        q.allocate(model, sens, avg_bits=3, constraints={"min_bits": {"re:.*": 4}})
    with pytest.raises(ValueError, match="exactly one budget"):
        q.allocate(model, sens)
    with pytest.raises(ValueError, match="exactly one budget"):
        q.allocate(model, sens, budget_bytes=10**6, avg_bits=3)
    missing = Sensitivity("x", {k: v for k, v in sens.delta.items() if k != "up.weight"})
    with pytest.raises(ValueError, match="no entry for kernel up.weight"):
        q.allocate(model, missing, avg_bits=3)
    extra = Sensitivity("x", {**sens.delta, "ghost.weight": {1: 0.0}})
    with pytest.raises(ValueError, match="does not have: \\['ghost.weight'\\]"):
        q.allocate(model, extra, avg_bits=3)
    with pytest.raises(ValueError, match="measured per tensor, the allocation is per channel"):
        q.allocate(model, sens, avg_bits=3, spec={"granularity": "channel"})
    prepared = q.prepare(Toy(), q.QuantConfig())
    with pytest.raises(ValueError, match="prepared"):
        q.allocate(prepared, sens, avg_bits=3)


def test_parse_size() -> None:
    assert parse_size("700KB") == 700_000 and parse_size("700kb") == 700_000
    assert parse_size("1.5MiB") == 1_572_864 and parse_size("123456") == 123456 and parse_size("2 KiB") == 2048
    for bad in ("", "KB", "-3KB", "1e3", "0.1"):
        with pytest.raises(ValueError, match="budget"):
            parse_size(bad)


# -- sensitivity ------------------------------------------------------------------------------------
def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    x = (centers[torch.randint(0, 4, (2, 4000), generator=g)] + 0.01 * torch.randn(2, 4000, generator=g))
    c = kmeans_codebook(x, 4)
    assert torch.allclose(c, centers.expand(2, 4), atol=0.01)


@pytest.mark.parametrize("method", ["mulaw", "kmeans"])
def test_quick_quantize_uses_at_most_k_values_and_improves_with_bits(method: str) -> None:
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(1))
    errs = []
    for b in range(1, 9):
        for gran in ("tensor", "channel"):
            wq = quick_quantize(w, b, gran, method)
            rows = wq.reshape(12, -1) if gran == "channel" else wq.reshape(1, -1)
            assert max(int(torch.unique(r).numel()) for r in rows) <= 2**b
        errs.append(float(((quick_quantize(w, b, "tensor", method) - w) ** 2).mean()))
    # strictly better from 2 to 5 bits (GQ's 1-bit init is the least-squares +-mean|w|, its 2-bit
    # grid spans +-max|w|: the mu-law 2-bit error may exceed the 1-bit one, as GQ's docs say)
    first = 0 if method == "kmeans" else 1
    assert all(e1 > e2 for e1, e2 in zip(errs[first:5], errs[first + 1 : 5]))
    assert errs[-1] < 1e-3 * errs[0]


@pytest.mark.parametrize("method", ["mulaw", "kmeans", "fisher"])
def test_measure_sensitivity_restores_the_model_and_counts_calls(toy, method: str) -> None:
    model, tokens = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    loss = loss_of(tokens)

    def counted(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return loss(m)

    ticks = []
    sens = measure_sensitivity(model, counted, kernels=["up.weight", "out.weight"], bits=[1, 4, 8], method=method,
                               on_step=lambda n, b: ticks.append((n, b)))  # fmt: skip
    assert set(sens.delta) == {"up.weight", "emb.weight"}  # the alias resolves to the tied kernel
    assert all(set(d) == {1, 4, 8} for d in sens.delta.values())
    assert len(ticks) == 6
    assert len(calls) == (2 if method == "fisher" else 1 + 6)  # fisher: base loss + one gradient pass
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(math.isfinite(x) for d in sens.delta.values() for x in d.values())
    if method != "fisher":
        # the recorded increase is exactly the loss of the model with that one kernel quantized
        m = Toy().eval()
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            m.up.weight.copy_(quick_quantize(m.up.weight, 1, "tensor", method))
            assert sens.delta["up.weight"][1] == pytest.approx(float(loss(m)) - sens.base_loss, abs=1e-6)
    else:
        assert all(d[1] >= d[8] >= 0 for d in sens.delta.values())
    with pytest.raises(ValueError, match="unknown kernel"):
        measure_sensitivity(model, loss, kernels=["norm.weight"], method=method)


def test_fisher_accepts_per_batch_losses(toy) -> None:
    model, tokens = toy
    loss = loss_of(tokens)
    one = measure_sensitivity(model, loss, bits=[2], method="fisher")
    two = measure_sensitivity(model, lambda m: iter([loss(m), loss(m)]), bits=[2], method="fisher")
    for n in one.delta:  # the mean of two identical squared gradients is the squared gradient
        assert two.delta[n][2] == pytest.approx(one.delta[n][2], rel=1e-6)
    assert all(p.requires_grad for p in model.parameters())


def test_sensitivity_json_round_trip(toy) -> None:
    s = random_sensitivity(toy[0], 8)
    back = Sensitivity.from_dict(__import__("json").loads(__import__("json").dumps(s.to_dict())))
    assert back.delta == s.delta and back.method == s.method and back.granularity == s.granularity
    with pytest.raises(ValueError, match=re.escape("sensitivity 'a'")):
        Sensitivity.from_dict({"delta": {"a": {"9": 0.0}}})


def test_the_parts_public_names_stay_importable_from_allocate() -> None:
    import sys

    from subbit.quant import constraints, inventory, knapsack, sensitivity

    alloc = sys.modules["subbit.quant.allocate"]  # the package attribute is the function
    parts = {"Constraints": constraints, "Infeasible": knapsack, "solve_choice": knapsack, "Kernel": inventory,
             "kernels_of": inventory, "other_bytes": inventory, "BITS": inventory, "Sensitivity": sensitivity,
             "measure_sensitivity": sensitivity, "quick_quantize": sensitivity, "kmeans_codebook": sensitivity,
             "METHODS": sensitivity}
    assert set(parts) <= set(alloc.__all__)
    for name, module in parts.items():
        assert getattr(alloc, name) is getattr(module, name), name
