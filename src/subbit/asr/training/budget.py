"""``StepBudget``: a time budget (``--minutes``) turned into a number of steps, corrected as training goes.

The first ``calib_steps`` steps are timed and the total is set from their speed,
``total = steps_done + remaining_time / sec_per_step * safety``, where ``sec_per_step`` is the
time of an average batch at the audio throughput of the last ``RATE_WINDOW`` steps (batches differ
in length, and with ``sortagrad_epochs`` the first ones are the shortest). The estimate is then
corrected, because a shared machine's load changes: an fp32 run every step (and it stops when the
time is up), a QAT run every ``reestimate_every`` steps (and it always runs to its current total,
because the temperature anneal must finish; its safety factor, 0.9, absorbs speed noise between
corrections). The caller re-bases its schedules at each correction.
"""

from __future__ import annotations

import time
from collections import deque

#: steps whose measured speed sets the estimate (recent load, not the start's)
RATE_WINDOW = 50


class StepBudget:
    """The running estimate of how many steps fit in ``minutes`` (``None``: no time budget)."""

    def __init__(self, minutes: float | None, *, calib_steps: int, reestimate_every: int, quant: bool,
                 world: int = 1) -> None:  # fmt: skip
        self.seconds = minutes * 60 if minutes else None
        self.calib_steps, self.reestimate_every = calib_steps, reestimate_every
        self.quant, self.world = quant, world
        self.safety = 0.9 if quant else 1.0
        self.calib_t0, self.calib_audio = 0.0, 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=RATE_WINDOW)  # (time, audio s) per step
        self.sec_per_step = float("nan")  # of the last estimate (for the log line)

    @property
    def active(self) -> bool:
        return self.seconds is not None

    def update(self, *, step: int, session_steps: int, total: int | None, elapsed: float, audio_sec: float,
               mean_batch: float | None) -> int | None:  # fmt: skip
        """Record one finished step; the corrected total when a correction is due, else ``None``.

        The first two steps of a session are not timed (start-up costs); the estimate is first made
        after ``max(calib_steps, 3)`` steps.
        """
        if self.seconds is None or session_steps < 2:
            return None
        now = time.perf_counter()
        if session_steps == 2:
            self.calib_t0, self.calib_audio = now, 0.0
            self.recent.clear()
        else:
            self.calib_audio += audio_sec
        self.recent.append((now, audio_sec))
        calibrated = session_steps >= max(self.calib_steps, 3)
        due = total is None or not self.quant or (session_steps - 2) % self.reestimate_every == 0
        if not (calibrated and due):
            return None
        self.sec_per_step = self.seconds_per_step(session_steps, mean_batch)
        return step + max(1, int((self.seconds - elapsed) / self.sec_per_step * self.safety))

    def seconds_per_step(self, session_steps: int, mean_batch: float | None) -> float:
        """Expected seconds of one future step, from the last ``RATE_WINDOW`` steps' speed.

        Measured audio throughput is turned into the time of an average batch; without batch
        lengths, the mean step time since calibration began is used.
        """
        now = time.perf_counter()
        recent = self.recent
        if len(recent) >= 3:
            span = recent[-1][0] - recent[0][0]
            audio = sum(a for _, a in list(recent)[1:])
            if mean_batch and span > 0 and audio > 0:
                return mean_batch * self.world / (audio / span)
        if mean_batch and self.calib_audio > 0:
            return mean_batch * self.world / (self.calib_audio / (now - self.calib_t0))
        return (now - self.calib_t0) / max(1, session_steps - 2)

    def out_of_time(self, elapsed: float) -> bool:
        """fp32 runs stop when the time is up (QAT runs finish their anneal instead)."""
        return self.seconds is not None and not self.quant and elapsed >= self.seconds
