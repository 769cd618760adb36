"""Soft-to-hard annealing of the quantizers' temperature, and the quantization frequency T_q.

Temperatures are *relative* (see :mod:`subbit.quant.gq`): 1.0 is soft, 1e-3 is one-hot in
practice, for every bit depth. The anneal reaches ``tau_end`` at ``anneal_end * total_steps``
and stays there, so the tail of training sees what is deployed.

``quant_every = T_q > 0`` reads the paper's "quantization frequency" two ways:
``"project"`` overwrites each latent weight with its hard value every T_q steps (S8BQAT's
periodic hard compressor); ``"forward"`` applies the quantizer in the forward only at steps that
are multiples of T_q (float latent weights otherwise).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from subbit.quant.api import get_config, quantized_tensors, set_enabled

ANNEALS = ("exp", "cosine", "linear")
QUANT_MODES = ("project", "forward")


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


class GQScheduler:
    """Call :meth:`step` once after every optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        tau_start: float = 1.0,
        tau_end: float = 1e-3,
        anneal: str = "exp",
        anneal_end: float = 0.85,
        quant_every: int = 0,
        quant_mode: str = "project",
    ) -> None:
        get_config(model)  # raises if the model is not prepared
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps!r}")
        self.tau_start = _positive("tau_start", tau_start)
        self.tau_end = _positive("tau_end", tau_end)
        if self.tau_end > self.tau_start:
            raise ValueError(f"tau_end: must be <= tau_start ({tau_start}), got {tau_end}")
        if anneal not in ANNEALS:
            raise ValueError(f"anneal: expected one of {ANNEALS}, got {anneal!r}")
        if not 0 < _positive("anneal_end", anneal_end) <= 1:
            raise ValueError(f"anneal_end: expected a fraction in (0, 1], got {anneal_end!r}")
        if isinstance(quant_every, bool) or not isinstance(quant_every, int) or quant_every < 0:
            raise ValueError(f"quant_every: expected an integer >= 0, got {quant_every!r}")
        if quant_mode not in QUANT_MODES:
            raise ValueError(f"quant_mode: expected one of {QUANT_MODES}, got {quant_mode!r}")
        self.model = model
        self.total_steps = total_steps
        self.anneal = anneal
        self.anneal_end = float(anneal_end)
        self.quant_every = quant_every
        self.quant_mode = quant_mode
        self.step_count = 0
        # progress through the run is piecewise linear: (rebase_step, rebase_progress) is where
        # the last set_total_steps left it, so a new total never moves tau backwards
        self.rebase_step, self.rebase_progress = 0, 0.0
        self._apply(project=False)

    def progress_at(self, step: int) -> float:
        """Fraction of the run done after ``step`` steps (``step / total_steps`` unless rebased)."""
        s0, p0 = self.rebase_step, self.rebase_progress
        return min(1.0, p0 + (1.0 - p0) * max(0, step - s0) / max(1, self.total_steps - s0))

    def set_total_steps(self, total_steps: int) -> None:
        """Change the run's length mid-way (a time budget re-estimated from the measured speed).

        The anneal continues from where it is and now ends at the new total: tau stays monotone
        and still reaches ``tau_end`` at ``anneal_end`` of the way, whatever the new length.
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps!r}")
        self.rebase_progress = self.progress_at(self.step_count)
        self.rebase_step = self.step_count
        self.total_steps = max(total_steps, self.step_count + 1)

    def tau_at(self, step: int) -> float:
        """Relative temperature after ``step`` optimizer steps."""
        p = min(1.0, self.progress_at(step) / self.anneal_end)
        a, b = self.tau_start, self.tau_end
        if self.anneal == "exp":
            return a * (b / a) ** p
        if self.anneal == "cosine":
            return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * p))
        return a + (b - a) * p

    @property
    def tau(self) -> float:
        return self.tau_at(self.step_count)

    def step(self) -> None:
        """Advance one optimizer step: constrain parameters, maybe project, set the new tau."""
        self.step_count += 1
        self._apply(project=True)

    def _apply(self, project: bool) -> None:
        tau = self.tau
        periodic = self.quant_every > 0 and self.step_count % self.quant_every == 0
        with torch.no_grad():
            for qt in quantized_tensors(self.model):
                q = qt.quantizer
                constrain = getattr(q, "constrain_", None)
                if callable(constrain):
                    constrain()
                q.set_tau(tau)
                if project and periodic and self.quant_mode == "project" and not q.is_converted:
                    qt.latent.copy_(q.hard(qt.latent))
        if self.quant_every > 0 and self.quant_mode == "forward":
            set_enabled(self.model, periodic)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count, "total_steps": self.total_steps, "tau_start": self.tau_start,
            "tau_end": self.tau_end, "anneal": self.anneal, "anneal_end": self.anneal_end,
            "quant_every": self.quant_every, "quant_mode": self.quant_mode,
            "rebase_step": self.rebase_step, "rebase_progress": self.rebase_progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restores the step count and settings and re-applies tau (no projection)."""
        state = {"rebase_step": 0, "rebase_progress": 0.0, **state}  # checkpoints before rebasing
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"scheduler state: missing key {missing[0]!r}")
        restored = GQScheduler(
            self.model, state["total_steps"], state["tau_start"], state["tau_end"], state["anneal"],
            state["anneal_end"], state["quant_every"], state["quant_mode"],
        )
        if isinstance(state["step_count"], bool) or not isinstance(state["step_count"], int) or state["step_count"] < 0:
            raise ValueError(f"scheduler state: step_count must be an integer >= 0, got {state['step_count']!r}")
        rs, rp = state["rebase_step"], state["rebase_progress"]
        if isinstance(rs, bool) or not isinstance(rs, int) or not 0 <= rs <= state["step_count"]:
            raise ValueError(f"scheduler state: rebase_step must be an integer in [0, step_count], got {rs!r}")
        if isinstance(rp, bool) or not isinstance(rp, (int, float)) or not 0.0 <= rp <= 1.0:
            raise ValueError(f"scheduler state: rebase_progress must be in [0, 1], got {rp!r}")
        self.__dict__.update(restored.__dict__)
        self.step_count = state["step_count"]
        self.rebase_step, self.rebase_progress = rs, float(rp)
        self._apply(project=False)
