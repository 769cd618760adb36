r"""The multiple-choice knapsack behind an allocation, solved exactly.

One option per group, total integer cost within a capacity, least summed value: a dynamic
programme over the Pareto frontier of (cost, value) of the groups seen so far. A partial choice
that costs at least as much as another and predicts no less value can never be part of a better
completion, so dropping it loses nothing; neither does dropping one that cannot be completed
within the capacity even with every remaining group at its cheapest. Costs are not rounded, so
the optimum is exact (``tests/quant/test_allocate.py`` checks it against brute force).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
