"""``LRSchedule``: linear warmup, then a cosine that can be re-based when the run length changes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LRSchedule:
    """Linear warmup to ``peak`` then cosine to ``peak * final_ratio`` at ``total`` steps.

    ``total=None`` (time budget still being calibrated) holds the peak after warmup.
    """

    peak: float
    warmup: int
    total: int | None = None
    final_ratio: float = 0.05
    # where the last set_total re-based the cosine (a new total never raises the lr again)
    rebase_step: int = 0
    rebase_progress: float = 0.0

    def progress(self, step: int) -> float:
        if self.total is None:
            return 0.0
        s0 = max(self.warmup, self.rebase_step)
        p0 = self.rebase_progress if self.rebase_step >= self.warmup else 0.0
        return min(1.0, max(0.0, p0 + (1.0 - p0) * (step - s0) / max(1, self.total - s0)))

    def set_total(self, total: int, step: int) -> None:
        """A new run length at ``step``: the cosine goes on from where it is to the new end."""
        if self.total is not None and step > self.warmup:
            self.rebase_progress, self.rebase_step = self.progress(step), step
        self.total = max(int(total), step + 1)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.total is None:
            return self.peak
        p = self.progress(step)
        return self.peak * (self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        known = set(asdict(self))
        for k, v in d.items():
            if k not in known:
                raise ValueError(f"lr schedule state: unknown key {k!r}")
            setattr(self, k, v)
